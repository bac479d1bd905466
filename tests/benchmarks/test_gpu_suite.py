"""benchmarks/gpu_suite.sh with a stand-in python (no GPU, nothing measured): where its logs
and JSON lines go, and how each benchmark's exit status shows in its summary and its own."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The stand-in: "-c" (the version line) prints; a benchmark appends to its --out file as the
# benchmarks do, then exits with the status STUB_<script stem> gives (default 0).
STUB = """#!/usr/bin/env bash
[ "$1" = "-c" ] && { echo "stub python -c"; exit 0; }
out=""; prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out=$a; prev=$a; done
[ -n "$out" ] && { : >> "$out" || exit 1; }
echo "stub: $1 --out=${out:-none}"
var="STUB_$(basename "$1" .py)"
exit "${!var:-0}"
"""


def _suite(tmp_path: Path, codes: dict[str, int], *args: str) -> subprocess.CompletedProcess:
    """Run a copy of gpu_suite.sh (in tmp_path/repo) from tmp_path/caller."""
    repo, caller = tmp_path / "repo", tmp_path / "caller"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_suite.sh", repo / "benchmarks")
    caller.mkdir()
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PYTHON": str(stub), "BENCH_TIMEOUT": "60",
           **{f"STUB_{k}": str(v) for k, v in codes.items()}}
    return subprocess.run(["bash", str(repo / "benchmarks" / "gpu_suite.sh"), *args], cwd=caller,
                          env=env, capture_output=True, text=True, timeout=120)


def _summary(stdout: str) -> dict[str, str]:
    """{benchmark name: outcome} from the suite's closing summary."""
    lines = stdout.split("=== summary", 1)[1].splitlines()[1:]
    return {ln.split()[0]: ln.split(None, 1)[1] for ln in lines if ln.strip()}


def test_relative_out_dir_is_the_callers(tmp_path: Path) -> None:
    done = _suite(tmp_path, {}, "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "caller" / "out"
    for name in ("selectivemae", "satmaepp", "softcon", "audit", "models", "checkpoint"):
        assert (out / f"{name}.log").read_text().startswith("stub: benchmarks/"), name
        assert (out / f"{name}.jsonl").is_file(), name
    assert set(_summary(done.stdout).values()) == {"ok"}
    assert not (tmp_path / "repo" / "out").exists()


def test_default_out_dir_is_in_the_repository(tmp_path: Path) -> None:
    done = _suite(tmp_path, {})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "repo" / "reports" / "gpu" / "softcon.log").is_file()


@pytest.mark.parametrize(("codes", "want"), [
    ({"bench_softcon": 77}, 77),
    ({"bench_softcon": 77, "bench_satmaepp": 1}, 1),
    ({"bench_models": 124}, 1),
])
def test_summary_tells_skipped_from_failed(tmp_path: Path, codes: dict[str, int],
                                           want: int) -> None:
    done = _suite(tmp_path, codes, "out")
    assert done.returncode == want, done.stdout[-3000:]
    summary = _summary(done.stdout)
    assert summary["softcon"].startswith("SKIPPED" if "bench_softcon" in codes else "ok")
    assert summary["satmaepp"] == ("FAILED (exit 1)" if "bench_satmaepp" in codes else "ok")
    assert summary["models"].startswith("TIMED OUT" if "bench_models" in codes else "ok")
    assert summary["selectivemae"] == "ok" and len(summary) == 10
