"""Per-step schedules, precomputed once and indexed by the optimiser step (dinov2 style).

A schedule holds one value per step ``0 .. total_steps - 1``; steps past the end read the final
value, so a run extended past its schedule keeps the last rate rather than failing.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

__all__ = ["Schedule", "scaled_lr", "warmup_cosine"]

log = logging.getLogger(__name__)


def scaled_lr(base_lr: float, eff_batch: int, reference: int = 256) -> float:
    """The linear scaling rule: ``base_lr * eff_batch / reference`` (MAE, Goyal et al.)."""
    if eff_batch < 1 or reference < 1:
        raise ValueError(f"scaled_lr: batch sizes must be >= 1, got {eff_batch} and {reference}")
    return base_lr * eff_batch / reference


def warmup_cosine(base: float, final: float, total_steps: int, warmup_steps: int,
                  start_warmup: float = 0.0) -> np.ndarray:
    """Linear warmup then half-cosine decay, one value per step: ``(total_steps,)`` float64.

    ``s[0] == start_warmup``, ``s[warmup_steps] == base``, and the curve would reach ``final``
    at step ``total_steps`` (one past the last), so the last step still learns.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps: expected 0..{total_steps}, got {warmup_steps}")
    warm = start_warmup + (base - start_warmup) * np.arange(warmup_steps) / max(warmup_steps, 1)
    n = total_steps - warmup_steps
    decay = final + 0.5 * (base - final) * (1 + np.cos(math.pi * np.arange(n) / max(n, 1)))
    return np.concatenate([warm, decay]).astype(np.float64)


class Schedule:
    """Values indexed by step: ``schedule[step]``; past the end it returns ``final``."""

    def __init__(self, values: np.ndarray, final: float | None = None,
                 spec: dict[str, Any] | None = None) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        if self.values.ndim != 1 or len(self.values) == 0:
            raise ValueError(f"values: expected a non-empty 1-D array, got {self.values.shape}")
        self.final = float(self.values[-1] if final is None else final)
        self.spec = dict(spec or {})

    @classmethod
    def warmup_cosine(cls, base: float, final: float, total_steps: int, warmup_steps: int,
                      start_warmup: float = 0.0) -> Schedule:
        """A :func:`warmup_cosine` schedule that remembers its parameters."""
        spec = {"kind": "warmup_cosine", "base": base, "final": final,
                "total_steps": total_steps, "warmup_steps": warmup_steps,
                "start_warmup": start_warmup}
        return cls(warmup_cosine(base, final, total_steps, warmup_steps, start_warmup),
                   final, spec)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, step: int) -> float:
        if step < 0:
            raise IndexError(f"step: expected >= 0, got {step}")
        return float(self.values[step]) if step < len(self.values) else self.final

    def state_dict(self) -> dict[str, Any]:
        """The parameters (the position is the training step, saved elsewhere)."""
        return dict(self.spec)

    def load_state_dict(self, state: dict[str, Any], step: int | None = None) -> list[str]:
        """Compare with the parameters a checkpoint saved (the keys both have) and warn of each
        change, old -> new, with the value at the resumed ``step`` under both when the old
        schedule can be rebuilt. A change is allowed (e.g. a longer run): the values from
        ``step`` on are this schedule's. A changed ``total_steps`` moves more than this curve:
        whatever is set as a fraction of the run (objectives' own schedules, fed step / total:
        SelectiveMAE's selection stages and pruning anneal) moves with it, and the warning
        says so, with the resumed step's progress under both totals. Returns the changes
        ("key old -> new")."""
        changed = [f"{k} {state[k]} -> {self.spec[k]}" for k in sorted(state.keys() & self.spec.keys())
                   if state[k] != self.spec[k]]
        if not changed:
            return []
        at = ""
        if step is not None and self.spec.get("kind") == "warmup_cosine" == state.get("kind"):
            keys = ("base", "final", "total_steps", "warmup_steps", "start_warmup")
            old = Schedule.warmup_cosine(**{k: state[k] for k in keys})
            at = f"; at step {step} the value goes {old[step]:.6g} -> {self[step]:.6g}"
        log.warning("the schedule differs from the checkpoint's (%s): from the resumed step on "
                    "it follows the new one%s%s", ", ".join(changed), at,
                    _fractions_moved(state.get("total_steps"), self.spec.get("total_steps"), step))
        return changed


def _fractions_moved(old_total: Any, new_total: Any, step: int | None) -> str:
    """The warning's clause for a changed run length (empty when it did not change): stage
    boundaries given as fractions of the run move, as progress = step / total does."""
    if old_total is None or new_total is None or old_total == new_total:
        return ""
    where = ""
    if step is not None and isinstance(old_total, int) and isinstance(new_total, int) \
            and old_total > 0 and new_total > 0:
        where = (f" (at step {step} the progress goes {step / old_total:.4g} -> "
                 f"{step / new_total:.4g})")
    return ("; the run's length changed, so stage boundaries given as fractions of the run "
            "move too: objectives' schedules (e.g. SelectiveMAE's selection stages and pruning "
            f"anneal) follow progress = step / total_steps{where}, not only the lr curve")
