"""SelectiveMAE's opt-in loss-aware sample pruning (InfoBatch): off by default and unchanged
there, pruned samples never reach the encoder, 1 / (1 - r) rescaling, the anneal phase,
reproducibility, refused settings, and a short trainer run with it on."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from eofm.models import create_model
from eofm.models.masking import gather_tokens
from eofm.models.tokenizers import patchify
from eofm.pretrain.objectives import SelectiveMAE
from eofm.pretrain.objectives.loss_pruning import KEY_SEP, LossRecord, prune_low_loss
from eofm.pretrain.objectives.mae import masked_patch_loss

BANDS = ["B02", "B03", "B04", "B08"]
LOW = [f"low{i}" for i in range(4)]  # recorded loss 0.1 (below the mean 0.55)
HIGH = [f"high{i}" for i in range(4)]  # recorded loss 1.0


def _model(**kw) -> SelectiveMAE:
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=64)
    return SelectiveMAE(enc, BANDS, decoder_dim=32, decoder_depth=2, decoder_heads=2, **kw)


def _x(B: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(64, 64), mode="nearest")
    return x + 0.05 * torch.randn(B, 4, 64, 64, generator=g)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with_record(m: SelectiveMAE) -> SelectiveMAE:
    m.loss_record.update(LOW + HIGH, [0.1] * 4 + [1.0] * 4)
    assert m.loss_record.mean == pytest.approx(0.55)
    return m


def _encoder_batch_sizes(m: SelectiveMAE) -> dict[str, int]:
    seen: dict[str, int] = {}
    m.encoder.tokenizer.register_forward_hook(lambda mod, a, out: seen.update(embed=out.shape[0]))
    m.encoder.blocks[0].register_forward_pre_hook(lambda mod, a: seen.update(block=a[0].shape[0]))
    return seen


@pytest.mark.parametrize("with_valid", [False, True])
def test_off_by_default_and_the_loss_is_the_unchanged_token_mean(with_valid) -> None:
    m = _model()
    assert m.prune_ratio == 0.0 and not m.pruning_enabled
    assert m.batch_inputs({"__key__": LOW}, torch.device("cpu")) == {}
    x = _x(4)
    valid = (torch.rand(4, 64, 64, generator=_gen(7)) > 0.3) if with_valid else None
    out = m(x, valid, generator=_gen(3))
    assert "pruned" not in out
    # the reference: the steps of the path before pruning existed, written out by hand
    keep, tgt, _ = m.select(x, valid, _gen(3), embeddings=m.encoder.embed(x).detach())
    assert torch.equal(keep, out["ids_keep"]) and torch.equal(tgt, out["ids_target"])
    pred = m.decoder(m.encoder.forward_tokens(m.encoder.embed(x), keep), tgt)
    v = torch.ones(4, 1, 64, 64) if valid is None else valid[:, None].float()
    total, count = masked_patch_loss(pred, gather_tokens(patchify(x, 8), tgt),
                                     torch.ones_like(tgt),
                                     gather_tokens(patchify(v.expand(4, 4, 64, 64), 8), tgt),
                                     True, 0.5)
    assert torch.equal(out["loss"], total / count.clamp(min=1))
    assert len(m.loss_record) == 0


def test_pruned_samples_never_reach_the_encoder() -> None:
    m = _with_record(_model(prune_low_loss_ratio=0.999))
    seen = _encoder_batch_sizes(m)
    out = m(_x(), generator=_gen(), keys=LOW + HIGH)
    assert int(out["pruned"]) == 4 and out["kept"].tolist() == [4, 5, 6, 7]
    assert seen == {"embed": 4, "block": 4}
    assert out["ids_keep"].shape[0] == 4 and out["sample_loss"].shape == (4,)
    # keys never seen are always kept
    out = m(_x(), generator=_gen(), keys=[f"new{i}" for i in range(8)])
    assert int(out["pruned"]) == 0 and seen == {"embed": 8, "block": 8}


def test_ratio_one_prunes_every_low_loss_sample_and_keeps_unseen_and_at_least_one() -> None:
    rec = torch.tensor([0.1, 0.2, 1.0, math.nan, 0.3, 0.9])
    pruned, low, _ = prune_low_loss(rec, 0.5, 1.0, _gen())
    assert low.tolist() == [True, True, False, False, True, False]
    assert pruned.tolist() == low.tolist()
    assert not prune_low_loss(rec, 0.5, 0.0, _gen())[0].any()
    pruned, _, weight = prune_low_loss(torch.tensor([0.1, 0.2, 0.3]), 0.5, 1.0, _gen())
    assert int(pruned.sum()) == 2  # all low: the one with the largest draw still runs
    assert weight[~pruned].tolist() == [1.0] and weight[pruned].tolist() == [0.0, 0.0]
    assert not prune_low_loss(rec, math.nan, 1.0, _gen())[0].any()  # an empty record


def test_kept_low_loss_samples_are_scaled_by_one_over_one_minus_r() -> None:
    r = 0.5
    m = _with_record(_model(prune_low_loss_ratio=r))  # training mode: pruning on
    reference = copy.deepcopy(m)
    reference.prune_ratio = 0.0  # the off path: token mean of one sample = its per-sample loss
    x = _x()
    keep, tgt, _ = m.select(x, generator=_gen(1))
    out = m(x, generator=_gen(1), selection=(keep, tgt), keys=LOW + HIGH)
    kept = out["kept"].tolist()
    low_kept = [i for i in kept if i < 4]
    assert 0 < len(low_kept) < 4 and int(out["pruned"]) == 4 - len(low_kept)  # both cases seen
    expected = 0.0
    for i in kept:
        li = reference(x[i:i + 1], selection=(keep[i:i + 1], tgt[i:i + 1]))["loss"]
        expected = expected + (1.0 / (1.0 - r) if i < 4 else 1.0) * li
    torch.testing.assert_close(out["loss"], expected / 8)
    # the record now holds the unweighted per-sample losses of the samples that ran
    keys = LOW + HIGH
    for j, i in enumerate(kept):
        assert m.loss_record.lookup([keys[i]]).item() == pytest.approx(float(out["sample_loss"][j]))


def test_a_sample_kept_only_because_all_would_go_has_weight_one() -> None:
    """Every sample low-loss and every draw below the ratio: the one that runs anyway was not
    kept by the draw, so its loss is not scaled by 1 / (1 - r) (1000x here)."""
    m = _with_record(_model(prune_low_loss_ratio=0.999))
    x = _x(4)
    keep, tgt, _ = m.select(x, generator=_gen(1))
    out = m(x, generator=_gen(1), selection=(keep, tgt), keys=LOW)
    assert int(out["pruned"]) == 3 and len(out["kept"]) == 1
    torch.testing.assert_close(out["loss"], out["sample_loss"][0] / 4)


def _nodata_last(B: int) -> torch.Tensor:
    """valid (B, 64, 64): the last sample all nodata, the others all valid."""
    valid = torch.ones(B, 64, 64, dtype=torch.bool)
    valid[-1] = False
    return valid


def test_a_sample_that_cannot_score_is_no_unit_of_the_pruned_loss() -> None:
    """An all-nodata sample scores no token: it is not in the denominator (B counted it, and
    the other samples' loss and gradient shrank by (B - 1) / B), with pruning or without, and
    ``loss_count`` (optim.loss_norm=step) counts the same units."""
    x, valid = _x(), _nodata_last(8)
    m = _model(prune_low_loss_ratio=0.5)
    m.on_step_start(99, 100)  # the anneal phase: nothing pruned
    out = m(x, valid, generator=_gen(1), keys=LOW + HIGH)
    assert int(out["pruned"]) == 0 and out["sample_loss"][-1] == 0
    assert float(out["loss_count"]) == 7
    torch.testing.assert_close(out["loss"], out["sample_loss"][:7].mean())
    assert torch.equal(out["loss"], out["loss_sum"] / out["loss_count"])
    # pruning on: the pruned low-loss samples (all valid) are units, the nodata one is not
    m = _with_record(_model(prune_low_loss_ratio=0.5))
    keep, tgt, _ = m.select(x, valid, _gen(1))
    out = m(x, valid, generator=_gen(1), selection=(keep, tgt), keys=LOW + HIGH)
    kept = out["kept"].tolist()
    assert 0 < int(out["pruned"]) < 4 and 7 in kept
    weights = torch.tensor([2.0 if i < 4 else 1.0 for i in kept])
    assert float(out["loss_count"]) == 7
    torch.testing.assert_close(out["loss"], (weights * out["sample_loss"]).sum() / 7)
    assert torch.equal(out["loss"], out["loss_sum"] / out["loss_count"])


def test_a_pruned_sample_that_cannot_score_is_no_unit_and_none_gives_zero() -> None:
    """A recorded low-loss sample can come back all nodata (another crop of its key): pruned,
    it is not counted. A batch in which no sample can score: loss 0 over count 0."""
    x, valid = _x(4), _nodata_last(4)
    m = _with_record(_model(prune_low_loss_ratio=0.999))
    keys = [HIGH[0], HIGH[1], HIGH[2], LOW[0]]  # the all-nodata sample is low-loss: pruned
    out = m(x, valid, generator=_gen(1), keys=keys)
    assert out["kept"].tolist() == [0, 1, 2] and float(out["loss_count"]) == 3
    torch.testing.assert_close(out["loss"], out["sample_loss"].mean())
    out = m(x, torch.zeros(4, 64, 64, dtype=torch.bool), generator=_gen(1),
            keys=[f"new{i}" for i in range(4)])
    assert float(out["loss_count"]) == 0
    assert out["loss"].item() == out["loss_sum"].item() == 0 and out["loss"].requires_grad


def _mean_weighted_loss(recorded: list[float], r: float, draws: int) -> tuple[float, float]:
    """(mean over ``draws`` pruning draws of sum(weight * loss) / B, the unpruned mean) for a
    batch whose record is ``recorded`` (record mean 0.55) and whose losses this step are
    1 .. 2 (B = len(recorded))."""
    B = len(recorded)
    losses = torch.linspace(1.0, 2.0, B, dtype=torch.float64)
    rec, g, acc = torch.tensor(recorded, dtype=torch.float64), _gen(0), 0.0
    for _ in range(draws):
        acc += float((prune_low_loss(rec, 0.55, r, g).weight * losses).sum()) / B
    return acc / draws, float(losses.mean())


@pytest.mark.parametrize("B,r", [(2, 0.5), (4, 0.75)])
def test_infobatch_estimator_expectation_at_small_micro_batches(B: int, r: float) -> None:
    """E[sum(weight * loss) / B] over the pruning draw: the unpruned mean when the batch holds
    a sample that is not low-loss; (1 + r^B / B) x it when all are low-loss, the documented
    bias of the forced sample (+12.5% at B = 2, r = 0.5; +7.9% at B = 4, r = 0.75). With
    weight 1 / (1 - r) it was (1 + r^B / ((1 - r) B)): +25% and +32%. Seeded draws; the
    tolerances are 4-5 standard errors."""
    got, mean = _mean_weighted_loss([0.1] * (B - 1) + [1.0], r, 10000)
    assert got == pytest.approx(mean, rel=0.03)
    got, mean = _mean_weighted_loss([0.1] * B, r, 20000)
    assert got == pytest.approx(mean * (1 + r ** B / B), rel=0.025)


def test_no_pruning_in_the_anneal_phase_nor_in_eval_mode() -> None:
    m = _with_record(_model(prune_low_loss_ratio=0.999, prune_anneal_fraction=0.25))
    seen = _encoder_batch_sizes(m)
    m.on_step_start(74, 100)
    assert m.pruning_active and int(m(_x(), generator=_gen(), keys=LOW + HIGH)["pruned"]) == 4
    m.on_step_start(75, 100)  # the last quarter of the run
    out = m(_x(), generator=_gen(), keys=LOW + HIGH)
    assert not m.pruning_active and int(out["pruned"]) == 0 and seen["block"] == 8
    m.on_step_start(0, 100)
    m.eval()
    size = len(m.loss_record)
    out = m(_x(), generator=_gen(), keys=[f"new{i}" for i in range(8)])
    assert int(out["pruned"]) == 0 and len(m.loss_record) == size  # nothing recorded in eval


def test_pruning_is_reproducible_from_the_generator_and_leaves_the_selection_alone() -> None:
    m = _model(prune_low_loss_ratio=0.5)
    keys = [f"k{i}" for i in range(16)]

    def kept(seed: int) -> list[int]:
        m.loss_record.update(keys, [0.1] * 8 + [1.0] * 8)  # the same record every time
        with torch.no_grad():
            return m(_x(16), generator=_gen(seed), keys=keys)["kept"].tolist()

    assert kept(5) == kept(5)
    draws = {tuple(kept(s)) for s in range(6)}
    assert len(draws) > 1
    # nothing pruned (unseen keys): the same token sets and, without nodata, the same loss as off
    off = _model()
    x = _x(4)
    on = m(x, generator=_gen(9), keys=["a", "b", "c", "d"])
    ref = off(x, generator=_gen(9))
    assert torch.equal(on["ids_keep"], ref["ids_keep"])
    assert torch.equal(on["ids_target"], ref["ids_target"])
    torch.testing.assert_close(on["loss"], ref["loss"])


def test_loss_record_keeps_the_last_loss_and_its_mean() -> None:
    rec = LossRecord()
    assert math.isnan(rec.mean) and len(rec) == 0
    rec.update(["a", "b", "c"], [1.0, 2.0, 6.0])
    rec.update(["a", "d"], [3.0, float("nan")])  # replaced; a non-finite loss is not recorded
    assert len(rec) == 3 and rec.mean == pytest.approx(11.0 / 3)
    assert rec.lookup(["a", "x"])[0].item() == 3.0 and math.isnan(rec.lookup(["x"]).item())
    with pytest.raises(ValueError, match="losses"):
        rec.update(["a"], [1.0, 2.0])


def test_bad_settings_and_missing_keys_are_refused_by_name() -> None:
    from eofm.pretrain.config import load_config
    from eofm.pretrain.objectives import build_objective

    info = type("Info", (), {"bands": BANDS})()
    for override, name in (("prune_low_loss_ratio=1.0", "prune_low_loss_ratio"),
                           ("prune_low_loss_ratio=-0.1", "prune_low_loss_ratio"),
                           ("prune_anneal_fraction=1.5", "prune_anneal_fraction"),
                           ("prune_ratio=0.5", "prune_low_loss_ratio")):  # unknown: a hint
        with pytest.raises(ValueError, match=name):  # at load (ConfigError), else when built
            build_objective(load_config(None, [
                "objective.name=selectivemae", f"objective.params.{override}",
                "data.path=unused", "model.name=vit_test_patch8", "model.img_size=32"]), info)
    cfg = load_config(None, ["objective.name=selectivemae", "data.path=unused",
                             "model.name=vit_test_patch8", "model.img_size=32",
                             "objective.params.prune_low_loss_ratio=0.5"])
    m = build_objective(cfg, info)
    assert m.prune_ratio == 0.5 and m.prune_anneal_fraction == 0.125
    assert m.batch_inputs({"__key__": ("a", "b")}, torch.device("cpu")) == {"keys": ["a", "b"]}
    with pytest.raises(ValueError, match="keys"):
        m(torch.randn(2, 4, 32, 32), generator=_gen())


PRUNE_CFG = """
data:
  path: {data}
  build_from: {sample}
  build_args: [--tile, "96"]
  bands: {{s2: [B02, B03, B04, B08]}}
  crop_size: 32
  shuffle_buffer: 20
  num_workers: 0
  batch_size: 8
model: {{name: vit_test_patch8, img_size: 32}}
objective:
  name: selectivemae
  mask_ratio: 0.85
  decoder_dim: 32
  decoder_depth: 1
  decoder_heads: 2
  params: {{kept_mask_ratio: 0.25, prune_low_loss_ratio: 0.5, prune_anneal_fraction: 0.0}}
optim: {{base_lr: 1.0e-3, scale_lr: false}}
schedule: {{steps: 6, warmup_steps: 1}}
runtime: {{out_dir: {out}, ckpt_every: 0, deterministic: true}}
logging: {{log_every: 1, progress: false}}
"""


def test_short_trainer_run_with_pruning_on(sample_data: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """16 samples (96 px tiles, 32 px crops) in batches of 8: step 3 sees recorded keys and
    prunes; step 4 is in the anneal phase (the last quarter of 4 steps) and does not."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    cfg = tmp_path / "sel_prune.yaml"
    cfg.write_text(PRUNE_CFG.format(data=tmp_path / "s2_96", out=tmp_path / "run",
                                    sample=sample_data / "sentinel2_l1c_scene"))
    overrides = ["objective.decoder_depth=2", "schedule.steps=4", "runtime.deterministic=false",
                 "objective.params={kept_mask_ratio: 0.25, prune_low_loss_ratio: 0.9, "
                 "prune_anneal_fraction: 0.25}"]
    pruned: list[int] = []
    forward = SelectiveMAE._forward_pruned

    def spy(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        pruned.append(int(out["pruned"]))
        return out

    monkeypatch.setattr(SelectiveMAE, "_forward_pruned", spy)
    assert Trainer(load_config(str(cfg), overrides)).fit() == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in recs)
    assert pruned[:2] == [0, 0] and pruned[2] > 0 and pruned[3] == 0
    assert [r["pruned"] for r in recs] == pruned  # log_every 1: each step's count is logged


def _filled_record() -> LossRecord:
    rec = LossRecord()
    g = torch.Generator().manual_seed(0)
    keys = [f"shard-{i:04d}/sample" for i in range(50)]
    for _ in range(3):  # replacements too: the running sum is no longer a fresh sum
        idx = torch.randint(0, 50, (30,), generator=g).tolist()
        rec.update([keys[i] for i in idx], torch.rand(30, generator=g, dtype=torch.float64)
                   .mul(3).tolist())
    return rec


def test_loss_record_state_round_trips_exactly_through_a_checkpoint(tmp_path: Path) -> None:
    from eofm.pretrain.checkpoint import check_plain

    rec = _filled_record()
    state = rec.state_dict()
    check_plain(state)
    assert set(state) == {"keys", "loss", "sum", "updates"}
    assert state["loss"].dtype == torch.float64 and state["loss"].shape == (len(rec),)
    torch.save(state, tmp_path / "rec.pt")
    back = LossRecord()
    back.update(["stale"], [9.0])  # replaced, not merged
    back.load_state_dict(torch.load(tmp_path / "rec.pt", weights_only=True))
    assert len(back) == len(rec) and back.mean == rec.mean  # bit for bit
    keys = state["keys"].split("\0")
    assert len(keys) == len(set(keys)) == len(rec)
    probe = [*keys[::3], "never-seen", "stale"]
    assert torch.equal(back.lookup(probe).nan_to_num(-1), rec.lookup(probe).nan_to_num(-1))
    for r in (rec, back):  # and they go on identically
        r.update([*keys[:5], "new"], [0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    assert back.mean == rec.mean and back.state_dict()["keys"] == rec.state_dict()["keys"]
    for few in ([], [""], ["", "b"]):  # no key, and the empty key, stay apart
        r = LossRecord()
        r.update(few, [1.0] * len(few))
        back = LossRecord()
        back.load_state_dict(r.state_dict())
        assert len(back) == len(few) and back.lookup(few).tolist() == [1.0] * len(few)
    r.update(["a\0b"], [1.0])
    with pytest.raises(ValueError, match="holds a NUL"):
        r.state_dict()


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("keys", ["a", "b"], "'keys': expected one str \\(the keys joined by NUL\\), got a list"),
    ("keys", "a\0a", "'keys': expected distinct keys"),
    ("keys", "a\0b\0c", "'keys': expected 2 keys \\(one per 'loss' value\\) .*got 3"),
    ("loss", torch.tensor([1.0, 2.0]), "'loss': expected a 1-D float64 tensor, got a "
                                       "torch.float32"),
    ("loss", torch.tensor([1.0], dtype=torch.float64), "'keys': expected 1 keys"),
    ("loss", torch.tensor([1.0, math.inf], dtype=torch.float64), "'loss': expected finite"),
    ("sum", 7.5, "'sum': expected the running sum of 'loss' \\(3.0"),
    ("sum", "3.0", "'sum'"),
    ("updates", -1, "'updates': expected an int >= 0"),
    ("updates", None, "missing \\['updates'\\]"),
    ("extra", 1, "unknown \\['extra'\\]"),
])
def test_bad_loss_record_state_is_refused_by_name(field, value, expected) -> None:
    rec = LossRecord()
    rec.update(["a", "b"], [1.0, 2.0])
    state = rec.state_dict()
    if value is None:
        del state[field]
    else:
        state[field] = value
    target = LossRecord()
    target.update(["kept"], [4.0])
    with pytest.raises(ValueError, match=expected):
        target.load_state_dict(state)
    assert len(target) == 1 and target.mean == 4.0  # unchanged when refused
    with pytest.raises(ValueError, match="expected a dict"):
        target.load_state_dict([state])  # type: ignore[arg-type]


def test_objective_hooks_carry_the_record_only_with_pruning_on() -> None:
    on, off = _with_record(_model(prune_low_loss_ratio=0.5)), _model()
    off.loss_record.update(["x"], [1.0])  # never filled with pruning off; not carried if it were
    assert off.client_state() == {}
    state = on.client_state()
    assert list(state) == ["loss_record"] and state["loss_record"]["keys"].split("\0") == LOW + HIGH
    fresh = _model(prune_low_loss_ratio=0.5)
    fresh.load_client_state(state)
    assert fresh.loss_record.mean == on.loss_record.mean and len(fresh.loss_record) == 8
    fresh.load_client_state({})  # a checkpoint written with pruning off: an empty record
    assert len(fresh.loss_record) == 0
    off.load_client_state(state)  # pruning turned off since: the record is not needed
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['record'\\]"):
        fresh.load_client_state({"record": state["loss_record"]})




def test_preempted_and_resumed_run_prunes_exactly_as_an_uninterrupted_one(
        sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 samples in batches of 8 (an epoch is 2 steps), pruning from step 3 on. One run is
    preempted (SIGTERM) after step 3 and resumed: every step keeps the same samples, and the
    loss record and the weights end identical to an uninterrupted run's."""
    import os
    import signal

    from eofm.pretrain.checkpoint import CheckpointManager
    from eofm.pretrain.config import load_config
    from eofm.pretrain.preemption import REQUEUE_EXIT_CODE
    from eofm.pretrain.trainer import Trainer

    kept: list[list[str]] = []  # per step: the keys of the samples that ran
    forward = SelectiveMAE._forward_pruned

    def spy(self, x, valid, generator, selection, keys, **kw):
        out = forward(self, x, valid, generator, selection, keys, **kw)
        kept.append([keys[i] for i in out["kept"].tolist()])
        return out

    monkeypatch.setattr(SelectiveMAE, "_forward_pruned", spy)

    def trainer(name: str) -> Trainer:
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(PRUNE_CFG.format(data=tmp_path / "s2_96", out=tmp_path / name,
                                         sample=sample_data / "sentinel2_l1c_scene"))
        return Trainer(load_config(str(cfg), []))

    def final(name: str) -> dict:
        path = CheckpointManager(tmp_path / name / "checkpoints", rank=0).latest()
        assert path is not None
        return CheckpointManager.load(path)

    def record(name: str) -> dict:
        """The loss record in the newest checkpoint's rank-0 file."""
        mgr = CheckpointManager(tmp_path / name / "checkpoints", rank=0)
        step = final(name)["step"]
        assert final(name)["objective_files"] == [True]
        return mgr.load_rank_state(step)["loss_record"]

    ref = trainer("ref")
    assert ref.fit() == 0
    ref_kept, kept[:] = list(kept), []
    assert len(ref_kept) == 6 and all(len(k) == 8 for k in ref_kept[:2])  # nothing recorded yet
    assert any(len(k) < 8 for k in ref_kept[3:])  # pruning after the restart point matters

    def preempt_after_step_3(self, step: int, total: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the trainer's PreemptionHandler

    monkeypatch.setattr(SelectiveMAE, "on_step_end", preempt_after_step_3, raising=False)
    assert trainer("split").fit() == REQUEUE_EXIT_CODE
    assert final("split")["step"] == 3 and len(kept) == 3
    monkeypatch.delattr(SelectiveMAE, "on_step_end")
    # only the kept checkpoints' rank files remain (keep_last_k pruned the rest with them)
    ckpts = tmp_path / "split" / "checkpoints"
    steps = sorted(p.name.split(".")[0] for p in ckpts.glob("step_?????????.pt"))
    assert sorted(p.name.split(".")[0] for p in ckpts.glob("step_*.rank00000.pt")) == steps
    # the older layout, every rank's state inline under "objective", still resumes
    shutil.copytree(ckpts, tmp_path / "inline" / "checkpoints")
    [inline] = (tmp_path / "inline" / "checkpoints").glob("step_?????????.pt")
    state = CheckpointManager.load(inline)
    rank_file = inline.with_name(inline.name.replace(".pt", ".rank00000.pt"))
    state["objective"] = [torch.load(rank_file, weights_only=True)]
    del state["objective_files"]
    rank_file.unlink()
    torch.save(state, inline)
    assert trainer("inline").fit() == 0
    assert kept[3:] == ref_kept[3:]
    kept[3:] = []
    # a checkpoint from before the hook existed (no objective entry at all) still resumes
    shutil.copytree(ckpts, tmp_path / "legacy" / "checkpoints")
    [legacy] = (tmp_path / "legacy" / "checkpoints").glob("step_?????????.pt")
    torch.save({k: v for k, v in CheckpointManager.load(legacy).items()
                if k != "objective_files"}, legacy)
    assert trainer("legacy").fit() == 0
    assert len(kept[3]) == 8  # its record restarted empty: nothing to prune at step 4
    kept[3:] = []
    # a rank file that the checkpoint names but is gone: refused by name, nothing guessed
    shutil.copytree(ckpts, tmp_path / "lost" / "checkpoints")
    for f in (tmp_path / "lost" / "checkpoints").glob("step_*.rank00000.pt"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"step_000000003\.rank00000\.pt: the checkpoint"):
        trainer("lost").fit()
    kept[3:] = []
    resumed = trainer("split")
    assert resumed.fit() == 0 and resumed.step == 6
    assert kept == ref_kept
    a, b = final("ref"), final("split")
    assert a["step"] == b["step"] == 6
    rec_a, rec_b = record("ref"), record("split")
    assert rec_a["keys"] == rec_b["keys"] and len(rec_a["keys"].split("\0")) == 16
    assert torch.equal(rec_a["loss"], rec_b["loss"]) and rec_a["sum"] == rec_b["sum"]
    assert resumed.objective.loss_record.mean == ref.objective.loss_record.mean
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def _two_rank_worker(rank: int, port: int, cfg_path: str, out: str) -> None:
    """Train 4 steps with pruning under 2 gloo ranks, then build a fresh trainer that resumes
    from the checkpoint; write what each rank held and what it got back."""
    import os

    from eofm.pretrain import distributed as D
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    cfg = load_config(cfg_path, ["schedule.steps=4"])
    trainer = Trainer(cfg)
    assert trainer.fit() == 0
    held = trainer.objective.loss_record.state_dict()
    again = Trainer(load_config(cfg_path, ["schedule.steps=5"]))
    again.resume()
    got = again.objective.loss_record.state_dict()
    D.barrier()
    D.teardown()
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "step": again.step, "held": held["keys"].split(KEY_SEP) if held["keys"] else [],
        "got": got["keys"].split(KEY_SEP) if got["keys"] else [],
        "same_loss": bool(torch.equal(held["loss"], got["loss"])),
        "same_sum": held["sum"] == got["sum"]}))


def test_two_ranks_each_get_their_own_record_back(sample_data: Path, tmp_path: Path,
                                                   spawn_two_ranks) -> None:
    """Under DDP each rank records the samples it read; the checkpoint carries both records and
    a resumed rank gets exactly its own back (not rank 0's, not a merge)."""
    cfg = tmp_path / "two.yaml"
    cfg.write_text(PRUNE_CFG.format(data=tmp_path / "s2_96", out=tmp_path / "two",
                                     sample=sample_data / "sentinel2_l1c_scene"))
    spawn_two_ranks(_two_rank_worker, str(cfg), str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["step"] == 4 and r["held"] and r["got"] == r["held"]
        assert r["same_loss"] and r["same_sum"]
    assert not set(r0["held"]) & set(r1["held"])  # each rank read its own samples


def test_background_checkpoints_leave_no_rank_files_of_pruned_steps(
        sample_data: Path, tmp_path: Path) -> None:
    """runtime.async_checkpoint: the rank files were pruned before the background write had
    pruned the checkpoint that fell out of the kept set, so that step's rank files stayed."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    cfg = tmp_path / "a.yaml"
    cfg.write_text(PRUNE_CFG.format(data=tmp_path / "s2_96", out=tmp_path / "run",
                                     sample=sample_data / "sentinel2_l1c_scene"))
    assert Trainer(load_config(str(cfg), ["runtime.async_checkpoint=true",
                                          "runtime.ckpt_every=2",
                                          "runtime.keep_last_k=1"])).fit() == 0
    ckpts = tmp_path / "run" / "checkpoints"
    steps = sorted(p.name.split(".")[0] for p in ckpts.glob("step_?????????.pt"))
    assert steps == ["step_000000006"]
    assert sorted(p.name.split(".")[0] for p in ckpts.glob("step_*.rank*.pt")) == steps
