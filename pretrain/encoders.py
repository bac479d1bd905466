"""The encoder a run's ``model`` config describes, shared by the trainer, objectives and export."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eofm.models import ViTEncoder, create_model

__all__ = ["build_encoder"]


def build_encoder(name: str, tokenizer: str, img_size: int, overrides: Mapping[str, Any],
                  bands: Sequence[str]) -> ViTEncoder:
    """The encoder a run's ``model`` config describes, for ``bands`` (weights fresh)."""
    over = dict(overrides)
    over.setdefault("img_size", img_size)
    if tokenizer != "spectral":
        over.setdefault("bands", list(bands))
    return create_model(name, tokenizer=tokenizer, **over)
