"""Gradient accumulation communicates only on the last micro-step: DDP's all-reduces counted
through a communication hook (one in-process gloo rank; the strategy is told it is one of two,
so it wraps the module in DDP as a real multi-rank job does)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from eofm.pretrain.config import load_config
from eofm.pretrain.distributed import DistEnv
from eofm.pretrain.strategy import Strategy


@pytest.fixture()
def gloo_world_of_one():
    """A one-rank gloo process group for this test only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_all_reduces_only_on_the_last_micro_step(gloo_world_of_one) -> None:
    cfg = load_config(None, ["data.path=/d", "runtime.strategy=ddp", "optim.accum_steps=2",
                                   "data.batch_size=8"])
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1))
    strategy = Strategy(module, cfg, DistEnv(rank=0, world_size=2), torch.device("cpu"), 1e-3)
    assert strategy.kind == "ddp"
    calls: list[int] = []

    def counting_hook(state, bucket):  # unannotated: DDP inspects real annotations
        calls.append(bucket.index())
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    strategy.model.register_comm_hook(None, counting_hook)
    x = torch.randn(4, 8)
    for micro in range(2):
        last = micro == 1
        strategy.forward_backward(lambda m: m(x).pow(2).mean(), last=last)
        if not last:
            assert calls == [], f"micro-step {micro} (not the last) all-reduced buckets {calls}"
    assert calls, "the last micro-step must all-reduce the accumulated gradient"
    # and what accumulated is the sum of the two micro-steps' gradients / accum_steps
    ref = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1))
    ref.load_state_dict(module.state_dict())
    (ref(x).pow(2).mean()).backward()
    for p, q in zip(module.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
