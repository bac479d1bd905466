"""``optim.loss_norm``: with nodata, ``step`` gives the gradient of the whole step's loss (every
scored token of every micro-batch and rank over their global count) whatever the split into
micro-batches and ranks; ``micro_batch`` (the default) weighs each micro-batch's own mean
equally, so the split changes it. Also the refusals, an all-nodata micro-batch and step, and
the trainer's logged loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from worker_run import as_torchrun_rank

from eofm.models import create_model
from eofm.pretrain import distributed as dist
from eofm.pretrain.config import ConfigError, load_config
from eofm.pretrain.distributed import DistEnv
from eofm.pretrain.objectives import MAE, SelectiveMAE
from eofm.pretrain.strategy import Strategy, wrap_model

BANDS = ["B02", "B03", "B04", "B08"]
GLOBAL = 8


def _objective(kind: str = "mae") -> torch.nn.Module:
    """A tiny seeded MAE (or SelectiveMAE) on 4 bands at 32 px (16 tokens of 8 px)."""
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=32)
    if kind == "selectivemae":
        return SelectiveMAE(enc, BANDS, mask_ratio=0.5, decoder_dim=32, decoder_depth=1,
                            decoder_heads=2, norm_pix_loss=True, kept_mask_ratio=0.5)
    return MAE(enc, BANDS, decoder_dim=32, decoder_depth=1, decoder_heads=2,
               norm_pix_loss=True)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(x (8, 4, 32, 32), valid (8, 32, 32)): samples valid over 0, 1, 2 and 4 rows of
    8 px patches in turn (none, a quarter, half, all), so micro-batches and ranks score
    different numbers of tokens."""
    x = torch.randn(GLOBAL, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    valid = torch.zeros(GLOBAL, 32, 32, dtype=torch.bool)
    for i, rows in enumerate([0, 1, 2, 4, 4, 1, 4, 2]):
        valid[i, : 8 * rows] = True
    return x, valid


def _cfg(norm: str, accum: int, strategy: str = "single"):
    return load_config(None, ["data.path=unused", f"data.batch_size={GLOBAL}",
                              f"optim.accum_steps={accum}", f"optim.loss_norm={norm}",
                              f"runtime.strategy={strategy}", "optim.grad_clip=null",
                              "runtime.precision=fp32"])


def _capture(strategy: Strategy) -> list[torch.Tensor]:
    """The gradients the optimiser is handed at the next step (full tensors under FSDP2;
    every rank must step), flattened into one tensor appended to the returned list."""
    seen: list[torch.Tensor] = []

    def step(*args, **kwargs) -> None:
        grads = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                 for p in strategy.module.parameters() if p.grad is not None]
        seen.append(torch.cat([g.detach().flatten().clone() for g in grads]))

    strategy.optimizer.step = step
    return seen


def _step_gradient(strategy: Strategy, obj: torch.nn.Module, x: torch.Tensor,
                   valid: torch.Tensor, masks: tuple, rows: slice) -> tuple[torch.Tensor, bool]:
    """One optimiser step over ``rows`` of the global batch, split into ``accum_steps``
    micro-batches: (the gradient the optimiser got, stepped)."""
    seen = _capture(strategy)
    accum = strategy.cfg.optim.accum_steps
    idx = torch.arange(GLOBAL)[rows]
    parts = idx.chunk(accum)
    for m, i in enumerate(parts):
        strategy.forward_backward(
            lambda model, i=i: model(x[i], valid[i], masks=tuple(t[i] for t in masks)),
            last=m == accum - 1)
    _, stepped = strategy.finish_step()
    return (seen[0] if seen else torch.zeros(0)), stepped


def _single(norm: str, accum: int, kind: str = "mae", x=None, valid=None
            ) -> tuple[torch.Tensor, Strategy]:
    obj = _objective(kind)
    x0, v0 = _batch()
    x, valid = (x0 if x is None else x), (v0 if valid is None else valid)
    masks = _masks(obj, kind, x, valid)
    s = Strategy(obj, _cfg(norm, accum), DistEnv(), torch.device("cpu"), 1e-3)
    g, stepped = _step_gradient(s, obj, x, valid, masks, slice(0, GLOBAL))
    assert stepped
    return g, s


def _masks(obj: torch.nn.Module, kind: str, x: torch.Tensor, valid: torch.Tensor) -> tuple:
    """The same masks (MAE) or token sets (SelectiveMAE, passed as ``selection``) for every
    split of the global batch."""
    gen = torch.Generator().manual_seed(3)
    if kind == "selectivemae":
        return obj.select(x, valid, gen)[:2]
    return obj.mask(GLOBAL, torch.device("cpu"), gen)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["mae", "selectivemae"])
def test_step_norm_gradient_does_not_depend_on_accum_steps(kind: str,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """One batch of 8 and two micro-batches of 4 (valid shares differ): the same gradient under
    ``step``; under ``micro_batch`` another one (the 4 mostly-nodata samples weigh as much as
    the 4 clear ones); with one micro-batch both settings agree."""
    if kind == "selectivemae":  # the token sets are given: the forward takes them as selection
        forward = SelectiveMAE.forward
        monkeypatch.setattr(SelectiveMAE, "forward", lambda self, x, v, masks: forward(
            self, x, v, selection=masks))
    one_step, _ = _single("step", 1, kind)
    two_step, _ = _single("step", 2, kind)
    one_micro, _ = _single("micro_batch", 1, kind)
    two_micro, _ = _single("micro_batch", 2, kind)
    assert _rel(two_step, one_step) < 1e-6
    assert _rel(one_micro, one_step) < 1e-6  # one micro-batch, one rank: the same loss
    assert _rel(two_micro, one_micro) > 0.05  # the split changes micro_batch's gradient


def test_step_norm_matches_the_whole_batch_loss() -> None:
    """Under ``step`` two micro-batches give the gradient of the global batch's loss (mean
    over all its scored tokens), computed directly."""
    obj = _objective()
    x, valid = _batch()
    masks = _masks(obj, "mae", x, valid)
    obj.zero_grad()
    obj(x, valid, masks=masks)["loss"].backward()
    ref = torch.cat([p.grad.flatten() for p in obj.parameters() if p.grad is not None])
    got, _ = _single("step", 2)
    assert _rel(got, ref) < 1e-6


def test_an_all_nodata_micro_batch_adds_nothing_and_does_not_halve_the_gradient() -> None:
    """Samples 0-3 all nodata, 4-7 clear, two micro-batches: under ``step`` the gradient is that
    of the 4 clear samples alone; under ``micro_batch`` the empty micro-batch's 0 still counts
    and halves it."""
    x, valid = _batch()
    valid[:4], valid[4:] = False, True
    obj = _objective()
    masks = _masks(obj, "mae", x, valid)
    obj.zero_grad()
    obj(x[4:], valid[4:], masks=tuple(t[4:] for t in masks))["loss"].backward()
    clear = torch.cat([p.grad.flatten() for p in obj.parameters() if p.grad is not None])
    step, _ = _single("step", 2, x=x, valid=valid)
    micro, _ = _single("micro_batch", 2, x=x, valid=valid)
    assert _rel(step, clear) < 1e-6
    assert _rel(micro, clear / 2) < 1e-6


def test_a_step_without_any_scored_token_is_not_taken() -> None:
    """Every sample all nodata: no optimiser step (weights and optimiser state unchanged),
    the strategy reports 0 scored units and a loss of 0."""
    x, valid = _batch()
    valid[:] = False
    obj = _objective()
    masks = _masks(obj, "mae", x, valid)
    s = Strategy(obj, _cfg("step", 2), DistEnv(), torch.device("cpu"), 1e-3)
    before = {k: v.clone() for k, v in obj.state_dict().items()}
    for m, i in enumerate(torch.arange(GLOBAL).chunk(2)):
        s.forward_backward(lambda model, i=i: model(x[i], valid[i],
                                                    masks=tuple(t[i] for t in masks)),
                           last=m == 1)
    norm, stepped = s.finish_step()
    assert not stepped and float(norm) == 0.0
    assert s.step_count == 0 and s.step_loss == 0.0
    assert all(torch.equal(before[k], v) for k, v in obj.state_dict().items())
    assert not s.optimizer.state and all(p.grad is None for p in obj.parameters())


def test_step_loss_is_the_whole_steps_mean() -> None:
    """The strategy's ``step_loss`` is the global batch's loss (sum over its scored tokens over
    their count), not the mean of the micro-batches' means."""
    obj = _objective()
    x, valid = _batch()
    masks = _masks(obj, "mae", x, valid)
    with torch.no_grad():
        whole = obj(x, valid, masks=masks)
    _, s = _single("step", 2)
    assert s.step_count == float(whole["loss_count"])
    assert s.step_loss == pytest.approx(float(whole["loss"]), rel=1e-6)


def test_a_loss_without_sums_is_refused_under_step() -> None:
    """An objective output without ``loss_sum``/``loss_count`` (a plain loss) is a
    ConfigError naming optim.loss_norm, not a silently unnormalised gradient."""
    s = Strategy(torch.nn.Linear(4, 1), _cfg("step", 1), DistEnv(), torch.device("cpu"), 1e-3)
    with pytest.raises(ConfigError, match=r"optim\.loss_norm: .step. needs .*loss_sum"):
        s.forward_backward(lambda m: m(torch.randn(2, 4)).square().mean(), last=True)
    with pytest.raises(ConfigError, match=r"without \[.loss_count.\]"):
        s.forward_backward(lambda m: {"loss": m(torch.randn(2, 4)).sum(),
                                      "loss_sum": m(torch.randn(2, 4)).sum()}, last=True)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["optim.loss_norm=steps"], "optim.loss_norm: expected one of ['micro_batch', 'step'], "
                                "got 'steps' (did you mean 'step'?)"),
    (["optim.loss_norm=step", "runtime.strategy=deepspeed", "runtime.zero_stage=2"],
     "optim.loss_norm: 'step' needs the ddp, fsdp2 or single strategy"),
    (["optim.loss_norm=step", "objective.name=satmaepp", "objective.norm_pix_loss=false"],
     "optim.loss_norm: 'step' is not supported by objective 'satmaepp'"),
    (["optim.loss_norm=step", "objective.name=softcon"],
     "optim.loss_norm: 'step' is not supported by objective 'softcon'"),
])
def test_config_refusals(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.path=/d", *overrides])
    assert expected in str(info.value)


@pytest.mark.parametrize("name", ["mae", "selectivemae"])
def test_step_is_accepted_for_mae_and_selectivemae(name: str) -> None:
    cfg = load_config(None, ["data.path=/d", "optim.loss_norm=step", f"objective.name={name}",
                             "runtime.strategy=ddp"])
    assert cfg.optim.loss_norm == "step"
    assert load_config(None, ["data.path=/d"]).optim.loss_norm == "micro_batch"


def _rank_gradients(rank: int, port: int, world: int, out: str, jobs: list[str]) -> None:
    """Rank ``rank`` of ``world``: one optimiser step of each ``STRATEGY:NORM:ACCUM`` job over
    this rank's share of the global batch; rank 0 saves the gradients to ``out``."""
    as_torchrun_rank(rank, world, port)
    env = dist.init_distributed()
    x, valid = _batch()
    per_rank = GLOBAL // env.world_size
    got = {}
    for job in jobs:
        strategy, norm, accum = job.split(":")
        obj = _objective()
        masks = _masks(obj, "mae", x, valid)
        s = wrap_model(obj, _cfg(norm, int(accum), strategy), env, torch.device("cpu"), 1e-3)
        g, stepped = _step_gradient(s, obj, x, valid, masks,
                                    slice(rank * per_rank, (rank + 1) * per_rank))
        assert stepped
        got[job] = g
    if rank == 0:
        torch.save(got, out)
    dist.teardown()


def test_two_ranks_match_one_under_step(tmp_path: Path, spawn_ranks) -> None:
    """Two gloo ranks (DDP without and with accumulation, FSDP2 with it) whose shares of the
    batch score different numbers of tokens give the one-process gradient under ``step``;
    DDP under ``micro_batch`` does not."""
    two = tmp_path / "two.pt"
    jobs = ["ddp:step:1", "ddp:step:2", "fsdp2:step:2", "ddp:micro_batch:1"]
    spawn_ranks(2, _rank_gradients, 2, str(two), jobs)
    ref = _single("step", 1)[0]  # one process, the whole batch in one micro-batch
    got = torch.load(two, weights_only=True)
    off = {j: _rel(got[j], ref) for j in jobs}
    assert all(off[j] < 1e-6 for j in jobs if ":step:" in j), off
    assert off["ddp:micro_batch:1"] > 0.05, off


def test_trainer_logs_the_steps_loss_and_passes_an_empty_step(tiny_run_config,
                                                              tmp_path: Path) -> None:
    """A tiny run under ``step`` with two micro-steps: each logged loss is the step's summed
    loss over its scored tokens (not the micro-batches' mean), no new metric keys appear, and
    a step whose every pixel is nodata is not taken (weights unchanged) nor counted as
    non-finite."""
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "run"
    cfg = load_config(str(tiny_run_config()), [
        f"runtime.out_dir={out}", "schedule.steps=3", "schedule.warmup_steps=0",
        "optim.accum_steps=2", "optim.loss_norm=step", "logging.sample_keys=false"])
    t = Trainer(cfg)
    forward, sums = t.objective.forward, []

    def recorded(x, valid, **kwargs):
        if len(sums) == 0:  # the first micro-step: half its rows nodata (fewer tokens)
            valid = valid.clone()
            valid[:, :16] = False
        if len(sums) in (2, 3):  # both micro-steps of the second step: all nodata
            valid = torch.zeros_like(valid)
        got = forward(x, valid, **kwargs)
        sums.append(tuple(float(got[k].detach()) for k in ("loss_sum", "loss_count", "loss")))
        return got

    t.objective.forward = recorded
    finish, moved = t.strategy.finish_step, []

    def finish_step():
        before = [p.detach().clone() for p in t.objective.parameters()]
        got = finish()
        moved.append(any(not torch.equal(b, p) for b, p in
                         zip(before, t.objective.parameters(), strict=True)))
        return got

    t.strategy.finish_step = finish_step
    try:
        assert t.fit() == 0
    finally:
        dist.teardown()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3] and moved == [True, False, True]
    for r, (a, b) in zip(recs, [(0, 1), (2, 3), (4, 5)], strict=True):
        total, count = sums[a][0] + sums[b][0], sums[a][1] + sums[b][1]
        assert r["loss"] == pytest.approx(total / count if count else 0.0, rel=1e-6)
        assert "loss_sum" not in r and "loss_count" not in r
    assert sums[2][1] == sums[3][1] == 0 and recs[1]["loss"] == 0.0
    assert all(r["skipped_steps"] == 0 for r in recs)
    assert sums[0][1] < sums[1][1]  # so the micro-batches' mean is another number
    assert abs((sums[0][2] + sums[1][2]) / 2 - recs[0]["loss"]) > 1e-5
