"""A DataLoader over :class:`~.reader.ShardDataset` that knows its exact position.

``state_dict()`` records the epoch and, per worker, how many stream positions the consumer has
taken; ``load_state_dict()`` makes the next ``iter()`` continue at the next unseen sample of
the same epoch. Positions are counted where batches are consumed (not where workers prefetch),
so a checkpoint written after a step resumes right after that step's batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from .reader import ShardDataset, collate


class ShardLoader:
    """Batches from a :class:`ShardDataset` with ``state_dict``/``load_state_dict``."""

    def __init__(self, dataset: ShardDataset, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False, drop_last: bool = False,
                 prefetch_factor: int | None = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.pin_memory, self.drop_last, self.prefetch_factor = pin_memory, drop_last, prefetch_factor
        self.epoch = 0
        self.consumed: dict[int, int] = {}
        self._dl: DataLoader | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next ``iter()``."""
        self.epoch, self.consumed = epoch, {}

    def _dataloader(self) -> DataLoader:
        if self._dl is None:
            kwargs: dict[str, Any] = {}
            if self.num_workers > 0:
                kwargs["persistent_workers"] = True  # no worker start-up stall at each epoch
                if self.prefetch_factor is not None:
                    kwargs["prefetch_factor"] = self.prefetch_factor
            self._dl = DataLoader(self.dataset, batch_size=self.batch_size,
                                  num_workers=self.num_workers, collate_fn=collate,
                                  pin_memory=self.pin_memory, drop_last=self.drop_last, **kwargs)
        return self._dl

    def __iter__(self) -> Iterator[dict]:
        self.dataset.set_position(self.epoch, self.consumed)
        for batch in self._dataloader():
            w = int(batch["__worker__"][0])
            self.consumed[w] = int(batch["__pos__"][-1]) + 1
            yield batch
        self.epoch += 1
        self.consumed = {}

    def _fingerprint(self) -> str:
        names = ",".join(f"{s.name}:{s.sha256}" for s in self.dataset.manifest.shards)
        return hashlib.sha256(names.encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """Plain-data position: epoch, per-worker consumed counts and the split it depends on."""
        d = self.dataset
        return {"epoch": self.epoch, "consumed": {str(k): v for k, v in self.consumed.items()},
                "seed": d.seed, "rank": d.rank, "world_size": d.world_size,
                "num_workers": self.num_workers, "shuffle_buffer": d.shuffle_buffer,
                "dataset": self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; refuses a split that would change the sample order."""
        d = self.dataset
        now = {"seed": d.seed, "rank": d.rank, "world_size": d.world_size,
               "num_workers": self.num_workers, "shuffle_buffer": d.shuffle_buffer,
               "dataset": self._fingerprint()}
        diff = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if diff:
            raise ValueError(
                "cannot resume the data position exactly: "
                + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items())
            )
        self.epoch = int(state["epoch"])
        self.consumed = {int(k): int(v) for k, v in state["consumed"].items()}

    def __len__(self) -> int:
        """Upper bound on batches per epoch for this rank (partial batches per worker count)."""
        n = len(self.dataset)
        w = max(1, self.num_workers)
        per = [(i + 1) * n // w - i * n // w for i in range(w)]
        if self.drop_last:
            return sum(p // self.batch_size for p in per)
        return sum(-(-p // self.batch_size) for p in per)
