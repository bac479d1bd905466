"""eofm.finetune: ``load_finetuned`` reloads what ``eofm-finetune`` exports (OUT/model)."""

from typing import Any

__all__ = ["load_finetuned"]


def __getattr__(name: str) -> Any:
    """``load_finetuned`` on first use (importing it pulls in torch and the models)."""
    if name == "load_finetuned":
        from .finetuned import load_finetuned

        return load_finetuned
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
