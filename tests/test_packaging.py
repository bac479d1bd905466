"""A plain (non-editable) install carries every module and data file, and imports from outside
the repository: the wheel ``pip install .`` builds, installed into a folder of its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"data_shards": "eofm/data_shards", "models": "eofm/models",
            "pretrain": "eofm/pretrain", "finetune": "eofm/finetune"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the tracked files only: a checkout's ``*.egg-info`` (left by
    ``pip install -e .``) would otherwise feed setuptools files the package list misses."""
    src, out = tmp_path_factory.mktemp("checkout"), tmp_path_factory.mktemp("wheel")
    for rel in _tracked("."):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0 and "No module named pip" in done.stderr:
        pytest.skip("pip is not installed in this environment")
    assert done.returncode == 0, done.stderr[-3000:]
    [whl] = out.glob("eofm-*.whl")
    return whl


def _tracked(folder: str) -> list[str]:
    """Files git tracks under ``folder`` (what a clean checkout has)."""
    done = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return [line for line in done.stdout.splitlines() if line]


def test_the_wheel_holds_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    assert "eofm" in tops and all(t == "eofm" or t.endswith(".dist-info") for t in tops), tops
    missing = []
    for src, dst in PACKAGES.items():
        for path in _tracked(src):
            wanted = path.endswith(".py") or "/sensors/" in path or "/sample/" in path
            if wanted and dst + path[len(src):] not in names:
                missing.append(path)
    assert not missing, f"not in the wheel: {missing}"


def test_the_installed_wheel_imports_from_outside_the_repository(wheel: Path,
                                                                 tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = """
import importlib, pkgutil, sys
import eofm
mods = [m.name for m in pkgutil.walk_packages(eofm.__path__, "eofm.")
        if not m.name.endswith(".__main__")]
for name in mods:
    importlib.import_module(name)
import eofm.pretrain.objectives as objectives
from eofm.data_shards.sensors import get_sensor
from eofm.pretrain.objectives import list_objectives
assert objectives.__file__.startswith(sys.argv[1]), objectives.__file__
assert get_sensor("s2_l1c").band("B04").center_wavelength_nm > 600
print(len(mods), sorted(list_objectives()))
"""
    done = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    count, objectives = done.stdout.split(" ", 1)
    assert int(count) > 40
    assert objectives.strip() == "['mae', 'satmaepp', 'selectivemae', 'softcon']"
