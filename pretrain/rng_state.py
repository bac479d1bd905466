"""This process's RNG states (python, numpy, torch, CUDA) as plain tensors and numbers, so a
checkpoint holding them loads with ``torch.load(weights_only=True)``, and setting them back."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng"]

log = logging.getLogger(__name__)


def capture_rng() -> dict[str, Any]:
    """This process's python/numpy/torch (and CUDA) RNG states as plain tensors and numbers."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the RNG states saved by :func:`capture_rng` (CUDA only when both sides have it)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        if len(cuda) != torch.cuda.device_count():
            log.warning("restoring %d CUDA RNG states on %d devices", len(cuda),
                        torch.cuda.device_count())
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, i)
