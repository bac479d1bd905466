"""torch's deterministic-algorithms switch for the span of a run, and back afterwards.

``torch.use_deterministic_algorithms`` is process-global: a run that turned it on and left it
on would make every later computation of the program (a notebook's next cell) slower and warn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["deterministic_algorithms"]


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
