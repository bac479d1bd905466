"""Determinism: torch's deterministic-algorithms switch for the span of a run (and back
afterwards), and the seeds of each rank's random streams and of each micro-step's masks.

``torch.use_deterministic_algorithms`` is process-global: a run that turned it on and left it
on would make every later computation of the program (a notebook's next cell) slower and warn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["deterministic_algorithms", "mask_seed", "rank_seed", "seed_rank_streams"]


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Inside: ``torch.use_deterministic_algorithms(True, warn_only=True)`` when ``enabled``
    (nothing changes otherwise); on exit, however it ends, the setting found on entry."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s global torch RNG once the model is built: distinct per
    rank, reproducible from ``data.seed``."""
    return (seed * 0x9E3779B1 + (rank + 1) * 0x632BE5AB) % 2**63


def seed_rank_streams(seed: int, rank: int) -> None:
    """Seed torch's global RNG (every device) with :func:`rank_seed`: what draws from it after
    the model is built (dropout, drop path) then differs across ranks, instead of every rank
    repeating the one ``data.seed`` stream the weights were drawn from. Per-step masks and
    jitter have generators of their own (:func:`mask_seed`); nothing in training draws from
    python's or numpy's global RNGs, left alone; a resume restores each rank's saved states
    over these."""
    torch.manual_seed(rank_seed(seed, rank))


def mask_seed(seed: int, step: int, rank: int, micro: int) -> int:
    """A distinct, reproducible generator seed per (seed, step, rank, micro-step)."""
    return (seed * 0x9E3779B1 + step * 0x85EBCA77 + rank * 0xC2B2AE3D + micro) % 2**63
