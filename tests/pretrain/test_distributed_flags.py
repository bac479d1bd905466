"""``any_across_ranks`` stays on the host: beside an nccl default group it all-reduces a CPU
tensor on a gloo group made once at init (no GPU tensor, no wait for the GPU every step).

The nccl branch cannot run without GPUs: it is checked with a faked backend, and the real
group's life cycle (made at init on every rank, used, destroyed at teardown) with two gloo
ranks told to make it anyway.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from eofm.pretrain import distributed as D


@pytest.mark.parametrize(("backend", "needs"), [
    ("nccl", True), ("NCCL", True), ("gloo", False), ("cpu:gloo,cuda:nccl", False),
])
def test_which_backends_need_a_host_group(backend: str, needs: bool) -> None:
    assert D._needs_host_group(backend) is needs


def test_the_host_group_is_made_for_nccl_only(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict] = []
    monkeypatch.setattr(D, "_HOST_GROUP", None)  # restored to None after the test
    monkeypatch.setattr(tdist, "new_group", lambda **kw: made.append(kw) or "host-group")
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: "gloo")
    D._init_host_group()
    assert made == [] and D._HOST_GROUP is None
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: "nccl")
    D._init_host_group(timedelta(seconds=7))
    assert made == [{"backend": "gloo", "timeout": timedelta(seconds=7)}]
    assert D._HOST_GROUP == "host-group"


def test_nccl_flags_are_reduced_on_the_host_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faked two-rank nccl job: the flag is a CPU tensor on the gloo group, never on a GPU."""
    seen: list[tuple[torch.device, object]] = []

    def all_reduce(t: torch.Tensor, op: object = None, group: object = None) -> None:
        seen.append((t.device, group))
        t.fill_(1)  # the other rank said yes

    def no_gpu() -> int:
        raise AssertionError("any_across_ranks touched the GPU")

    monkeypatch.setattr(D, "_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(tdist, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.cuda, "current_device", no_gpu)
    monkeypatch.setattr(D, "_HOST_GROUP", "host-group")
    assert D.any_across_ranks(False, torch.device("cuda", 0)) is True
    assert D.any_across_ranks(False) is True
    assert seen == [(torch.device("cpu"), "host-group")] * 2
    # a one-rank group (ensure_process_group for DeepSpeed) needs no collective at all
    monkeypatch.setattr(tdist, "get_world_size", lambda group=None: 1)
    assert D.any_across_ranks(True) is True and D.any_across_ranks(False) is False
    assert len(seen) == 2


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    D._needs_host_group = lambda backend: True  # as for nccl, on gloo ranks
    D.init_distributed(backend="gloo")
    group = D._HOST_GROUP
    from eofm.pretrain.data import agree_workers

    result = {"made": group is not None and group != tdist.group.WORLD,
              "size": tdist.get_world_size(group),
              "any": [D.any_across_ranks(rank == 1), D.any_across_ranks(False)],
              "sum": D.sum_across_ranks([1.0, rank]),
              "workers": agree_workers(1 + 4 * rank)}  # nodes with 2 and 6 CPUs
    D.teardown()
    result["after"] = [D._HOST_GROUP is None, tdist.is_initialized()]
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def test_two_ranks_make_use_and_destroy_the_host_group(tmp_path: Path, spawn_two_ranks) -> None:
    spawn_two_ranks(_worker, str(tmp_path))
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r == {"made": True, "size": 2, "any": [True, False], "sum": [2.0, 1.0],
                     "workers": 1, "after": [True, False]}
