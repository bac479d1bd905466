"""Schedules (endpoints, monotonicity) and the optimiser helpers (decay groups, clipping, guard)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from eofm.pretrain.config import OptimConfig
from eofm.pretrain.optim import (
    NonFiniteGuard,
    adamw,
    build_optimizer,
    clip_and_check,
    param_groups,
    set_lr,
)
from eofm.pretrain.schedules import Schedule, scaled_lr, warmup_cosine


@pytest.mark.parametrize(("total", "warmup"), [(100, 10), (7, 0), (5, 5), (1, 0), (1, 1)])
def test_warmup_cosine_endpoints_and_monotonicity(total: int, warmup: int) -> None:
    base, final, start = 1e-3, 1e-5, 1e-6
    s = warmup_cosine(base, final, total, warmup, start_warmup=start)
    assert s.shape == (total,) and s.dtype == np.float64
    assert s[0] == pytest.approx(start if warmup else base)
    assert np.all(np.diff(s[: warmup + 1]) >= 0) and np.all(np.diff(s[warmup:]) <= 0)
    if warmup < total:
        assert s[warmup] == pytest.approx(base)
    assert np.all(s >= start) and np.all(s <= base) and np.all(s[warmup:] > final)


def test_schedule_object_and_scaling() -> None:
    sched = Schedule.warmup_cosine(2.0, 0.5, total_steps=10, warmup_steps=2)
    assert len(sched) == 10 and sched[0] == 0.0 and sched[2] == 2.0
    assert sched[10] == sched[10_000] == 0.5  # past the end: the final value
    mid = sched[6]  # halfway through the cosine: the mean of base and final
    assert mid == pytest.approx(1.25)
    assert sched.state_dict()["total_steps"] == 10
    with pytest.raises(IndexError):
        sched[-1]
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(1.0, 0.0, 10, 11)
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(1e-3, 128, reference=512) == pytest.approx(2.5e-4)


class _Tokenizer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 2)
        self.band_embed = nn.Parameter(torch.zeros(3, 8))

    def no_weight_decay(self) -> set[str]:
        return {"band_embed"}


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = _Tokenizer()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


class _Wrapper(nn.Module):  # an objective holding the encoder; it does not forward the names
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.head = nn.Linear(8, 4)


def test_param_groups_exempt_norms_biases_tokens() -> None:
    model = _Wrapper()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.05, no_decay_names=["mask_token"])
    decay, plain = ({names[id(p)] for p in g["params"]} for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert decay == {"encoder.tokenizer.proj.weight", "encoder.fc.weight", "head.weight"}
    assert plain == {"encoder.tokenizer.proj.bias", "encoder.tokenizer.band_embed",
                     "encoder.pos_embed", "encoder.cls_token", "encoder.fc.bias",
                     "encoder.norm.weight", "encoder.norm.bias", "mask_token", "head.bias"}
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1, betas=[0.8, 0.9]), lr=3e-4)
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["lr"], g["betas"], g["weight_decay"]) for g in opt.param_groups] == [
        (3e-4, (0.8, 0.9), 0.1), (3e-4, (0.8, 0.9), 0.0)]
    set_lr(opt, 1e-2)
    assert all(g["lr"] == 1e-2 for g in opt.param_groups)


def test_adamw_is_fused_on_cpu_and_steps_like_the_per_tensor_loop() -> None:
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    groups = [param_groups(n, 0.05) for n in nets]
    fused = adamw(groups[0], 1e-2, (0.9, 0.95), 1e-8)
    loop = torch.optim.AdamW(groups[1], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    assert fused.defaults["fused"] is True
    x = torch.randn(32, 8)
    for _ in range(5):
        for net, opt in zip(nets, (fused, loop), strict=True):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clip_and_check() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm, finite = clip_and_check([a, b], max_norm=1.0)
    assert norm == pytest.approx(5.0) and finite
    assert math.hypot(*a.grad.tolist(), *b.grad.tolist()) == pytest.approx(1.0, rel=1e-4)
    a.grad = torch.tensor([3.0, 0.0])
    assert clip_and_check([a], max_norm=None) == (3.0, True) and a.grad[0] == 3.0
    a.grad = torch.tensor([float("nan"), 1.0])
    assert clip_and_check(iter([a, b]), max_norm=1.0)[1] is False
    b.grad = torch.tensor([float("inf")])
    assert clip_and_check([b], max_norm=None)[1] is False
    assert clip_and_check([nn.Parameter(torch.zeros(1))], 1.0) == (0.0, True)


def test_nonfinite_guard_counts_and_raises() -> None:
    guard = NonFiniteGuard(max_in_a_row=3)
    assert [guard.update(f) for f in (False, False, True, False)] == [False, False, True, False]
    assert (guard.in_a_row, guard.skipped) == (1, 3)
    restored = NonFiniteGuard(3)
    restored.load_state_dict(guard.state_dict())
    assert restored.update(False, step=41) is False
    with pytest.raises(RuntimeError, match=r"3 non-finite .* in a row \(last at step 42\)"):
        restored.update(False, step=42)
    with pytest.raises(ValueError):
        NonFiniteGuard(0)


def test_schedule_compares_with_the_checkpoints(caplog: pytest.LogCaptureFixture) -> None:
    """On resume a changed schedule is followed, and said: each change old -> new, and the
    value it resumes at under both (only the keys both sides have: older checkpoints saved
    the total alone)."""
    sched = Schedule.warmup_cosine(2.0, 0.0, total_steps=20, warmup_steps=2)
    assert sched.load_state_dict(sched.state_dict(), step=5) == [] and not caplog.records
    old = Schedule.warmup_cosine(2.0, 0.0, total_steps=10, warmup_steps=4)
    with caplog.at_level("WARNING", logger="eofm.pretrain.schedules"):
        changed = sched.load_state_dict(old.state_dict(), step=6)
    assert changed == ["total_steps 10 -> 20", "warmup_steps 4 -> 2"]
    assert (f"(total_steps 10 -> 20, warmup_steps 4 -> 2): from the resumed step on it follows "
            f"the new one; at step 6 the value goes {old[6]:.6g} -> {sched[6]:.6g}"
            ) in caplog.text
    assert sched.load_state_dict({"total_steps": 10}, step=6) == ["total_steps 10 -> 20"]


def test_a_changed_run_length_warns_that_fractions_of_the_run_move(
        caplog: pytest.LogCaptureFixture) -> None:
    """A resume with a raised schedule.steps recomputes progress = step / total: the warning
    says that stage boundaries given as fractions of the run (SelectiveMAE's selection stages,
    its pruning anneal) move, not only the lr curve; a change that keeps the length does not."""
    sched = Schedule.warmup_cosine(2.0, 0.0, total_steps=20, warmup_steps=2)
    with caplog.at_level("WARNING", logger="eofm.pretrain.schedules"):
        sched.load_state_dict(Schedule.warmup_cosine(2.0, 0.0, 10, 2).state_dict(), step=6)
    assert "stage boundaries given as fractions of the run move too" in caplog.text
    assert "SelectiveMAE's selection stages and pruning anneal" in caplog.text
    assert "at step 6 the progress goes 0.6 -> 0.3" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="eofm.pretrain.schedules"):
        sched.load_state_dict({"total_steps": 10}, step=None)  # older checkpoints: the total
    assert "fractions of the run move too" in caplog.text and "progress goes" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="eofm.pretrain.schedules"):
        sched.load_state_dict(Schedule.warmup_cosine(2.0, 0.0, 20, 4).state_dict(), step=6)
    assert "warmup_steps 4 -> 2" in caplog.text and "fractions of the run" not in caplog.text
