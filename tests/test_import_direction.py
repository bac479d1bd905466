"""The import direction of ARCHITECTURE.md: data_shards and models import nothing else from
eofm, pretrain imports data_shards and models, finetune also pretrain. Checked on the source
(every import statement, lazy ones inside functions included), so a shortcut taken in a
function body is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"data_shards": set(), "models": set(), "pretrain": {"data_shards", "models"},
           "finetune": {"data_shards", "models", "pretrain"}}


def _eofm_imports(path: Path, package: str, root: Path = ROOT) -> set[str]:
    """The eofm packages ``path`` (in ``root/package``) imports, absolute (``eofm.X``) and
    relative (``..X``), itself left out."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            else:  # relative: resolve against the file's package path
                here = [package, *path.relative_to(root / package).parent.parts]
                base = here[: len(here) - node.level + 1]
                if not base:  # above the package: eofm.<module>
                    names = [f"eofm.{node.module}"]
                else:
                    names = [".".join(["eofm", *base, *([node.module] if node.module else [])])]
        for n in names:
            parts = n.split(".")
            if parts[0] == "eofm" and len(parts) > 1:
                out.add(parts[1])
    return out - {package}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_architecture_allows(package: str) -> None:
    wrong = {str(p.relative_to(ROOT)): sorted(bad) for p in sorted((ROOT / package).rglob("*.py"))
             if (bad := _eofm_imports(p, package) - ALLOWED[package])}
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing'} " \
                      f"from eofm; found {wrong}"


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "models" / "sub").mkdir(parents=True)
    lazy = tmp_path / "models" / "card.py"
    lazy.write_text("import math\n\ndef f():\n    from eofm.data_shards.remote import redact\n")
    relative = tmp_path / "models" / "sub" / "x.py"
    relative.write_text("from ...pretrain import optim\nfrom .. import hub\nfrom . import y\n")
    assert _eofm_imports(lazy, "models", tmp_path) == {"data_shards"}
    assert _eofm_imports(relative, "models", tmp_path) == {"pretrain"}


def _modules() -> list[str]:
    """Every ``eofm.<package>.<module>`` of the four packages (``__main__`` left out)."""
    return sorted(f"eofm.{'.'.join(p.relative_to(ROOT).with_suffix('').parts)}"
                  for package in ALLOWED for p in (ROOT / package).rglob("*.py")
                  if p.stem not in ("__init__", "__main__"))


@pytest.mark.parametrize("name", _modules())
def test_every_name_a_module_exports_is_there(name: str) -> None:
    """``__all__`` promises names a script may import; a split that moved one without a
    re-export (``weights_digest`` left ``eofm.finetune.export``) breaks them."""
    import importlib

    module = importlib.import_module(name)
    missing = [n for n in getattr(module, "__all__", ()) if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names {missing}, which it does not define"


def test_the_evaluation_check_names_stay_importable_from_export() -> None:
    """finetune/export.py's split into evaluation_check.py kept its public names there."""
    from eofm.finetune import evaluation_check, export

    for n in ("check_evaluation", "read_evaluation", "weights_digest", "WEIGHTS_DIGEST",
              "contract_differences"):
        assert n in export.__all__ and getattr(export, n) is getattr(evaluation_check, n), n
