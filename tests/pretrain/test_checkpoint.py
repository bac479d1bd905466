"""Checkpoints: atomic writes survive a kill, keep-k, weights_only loads, RNG round trips."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from eofm.pretrain import checkpoint as C
from eofm.pretrain.checkpoint import CheckpointManager, capture_rng, check_plain, restore_rng


def _state(step: int) -> dict[str, Any]:
    torch.manual_seed(step)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "epoch": 0, "rng": capture_rng(), "data": {"epoch": 0, "skip": {0: 12, 1: 8}},
            "config": {"optim": {"betas": [0.9, 0.95], "grad_clip": None}}}


def test_save_load_weights_only_and_keep_k(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last_k=2, rank=0)
    assert mgr.latest() is None and mgr.load_latest() is None
    for step in (10, 20, 30):
        path = mgr.save(_state(step), step)
        assert path == tmp_path / f"step_{step:09d}.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000020.pt",
                                                          "step_000000030.pt"]
    assert mgr.latest() == tmp_path / "step_000000030.pt"
    raw = torch.load(mgr.latest(), weights_only=True)  # what any reader may do
    ref = _state(30)
    assert raw["step"] == 30 and raw["data"] == ref["data"] and raw["config"] == ref["config"]
    for k, v in ref["model"].items():
        assert torch.equal(raw["model"][k], v)
    nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)).load_state_dict(raw["model"])


def test_kill_during_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = CheckpointManager(tmp_path, keep_last_k=3, rank=0)
    mgr.save(_state(1), 1)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(C.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(_state(2), 2)
    monkeypatch.undo()
    assert not (tmp_path / "step_000000002.pt.tmp").exists()  # the interrupted write's, removed
    assert mgr.latest() == tmp_path / "step_000000001.pt"
    assert mgr.load(mgr.latest())["step"] == 1
    (tmp_path / "step_000000002.pt.tmp").write_bytes(b"PK")  # what a SIGKILL would leave
    mgr.save(_state(3), 3)  # the next save clears the dead temp file
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_or_garbage_newest_falls_back(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    mgr = CheckpointManager(tmp_path, keep_last_k=5, rank=0)
    good = mgr.save(_state(5), 5)
    data = good.read_bytes()
    (tmp_path / "step_000000007.pt").write_bytes(data[: len(data) // 2])  # died mid-copy
    (tmp_path / "step_000000009.pt").write_bytes(b"not a checkpoint")
    assert mgr.latest() == good
    found = mgr.load_latest()
    assert found is not None and found[0] == good and found[1]["step"] == 5
    assert "trying the previous one" in caplog.text


def test_only_rank_zero_writes_and_plain_check(tmp_path: Path) -> None:
    assert CheckpointManager(tmp_path, rank=1).save(_state(1), 1) is None
    assert not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match=r"state\['data'\]\['pos'\]: numpy.float64"):
        CheckpointManager(tmp_path, rank=0).save({"data": {"pos": np.float64(1.0)}}, 1)
    with pytest.raises(TypeError, match="Path"):
        check_plain({"cfg": [Path("x")]})
    with pytest.raises(ValueError, match="keep_last_k"):
        CheckpointManager(tmp_path, keep_last_k=0)


def _draws() -> tuple[list[float], list[float], list[float]]:
    return ([*(random.random() for _ in range(3)), random.gauss(0, 1)],
            [*np.random.rand(3).tolist(), float(np.random.randn())],
            [*torch.rand(3).tolist(), *torch.randn(1).tolist()])


def test_rng_capture_restore_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in the python state
    np.random.randn()
    mgr = CheckpointManager(tmp_path, rank=0)
    mgr.save({"rng": capture_rng()}, 0)
    expected = _draws()
    _draws()  # move every generator on
    restore_rng(mgr.load(mgr.latest())["rng"])
    assert _draws() == expected


class _FakeEngine:
    """Stands in for a DeepSpeed engine: one file per rank per tag."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.fail, self.loaded = fail or set(), None

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict,
                        save_latest: bool) -> None:
        assert save_latest is False
        os.makedirs(Path(save_dir, tag), exist_ok=True)
        torch.save({"client": client_state}, Path(save_dir, tag, "mp_rank_00_model_states.pt"))
        Path(save_dir, tag, "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")

    def zero_optimization_partition_weights(self) -> bool:
        return False

    def load_checkpoint(self, load_dir: str, tag: str, **kw: bool) -> tuple[str | None, Any]:
        if tag in self.fail:
            raise RuntimeError("shard unreadable")
        self.loaded = tag
        path = Path(load_dir, tag, "mp_rank_00_model_states.pt")
        return str(path), torch.load(path, weights_only=True)["client"]


def test_deepspeed_hooks_keep_k_and_complete_only(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last_k=2, rank=0)
    engine = _FakeEngine()
    assert mgr.load_deepspeed(engine) is None
    for step in (1, 2, 3):
        mgr.save_deepspeed(engine, step, {"step": step})
    (tmp_path / "step_000000004").mkdir()  # a save that died before its marker
    assert [(s, done) for s, _, done in mgr.deepspeed_tags()] == [(4, False), (3, True),
                                                                   (2, True)]
    assert C.load_deepspeed(engine, mgr) == {"step": 3}
    assert mgr.load_deepspeed(_FakeEngine(fail={"step_000000003"})) == {"step": 2}
    C.save_deepspeed(engine, mgr, 5, {"step": 5})  # the function form
    C.save_deepspeed(engine, mgr, 5, {"step": -1})  # this manager saved it: not written twice
    assert C.load_deepspeed(engine, mgr) == {"step": 5}
    assert [s for s, _, _ in mgr.deepspeed_tags()] == [5, 3]  # dead write and oldest pruned
    # none loads: an error naming each, never a silent fresh start that would prune them
    with pytest.raises(C.UnreadableCheckpoints, match=r"none of its 2 checkpoint\(s\) could be "
                       r"loaded \(step_000000005: RuntimeError: shard unreadable; step_000000003"):
        mgr.load_deepspeed(_FakeEngine(fail={"step_000000005", "step_000000003"}))


def test_a_deepspeed_step_a_resume_fell_back_past_is_saved_anew(tmp_path: Path) -> None:
    """A complete DeepSpeed folder that an earlier process left and a resume could not load
    (a damaged shard) is written anew when the run, fallen back to the step before, trains up
    to its step again. Before, the save was skipped (the folder had its marker): the damaged
    folder stayed the newest, and every relaunch fell back and retrained to it again."""
    engine = _FakeEngine()
    first = CheckpointManager(tmp_path, keep_last_k=3, rank=0)
    for step in (2, 4):
        first.save_deepspeed(engine, step, {"step": step})
    (tmp_path / "step_000000004" / "mp_rank_00_model_states.pt").write_bytes(b"damaged")
    relaunch = CheckpointManager(tmp_path, keep_last_k=3, rank=0)  # the next process
    assert relaunch.load_deepspeed(engine) == {"step": 2}  # falls back past the damaged one
    relaunch.save_deepspeed(engine, 4, {"step": 4, "again": True})  # trained to step 4 again
    assert CheckpointManager(tmp_path, rank=0).load_deepspeed(engine) == {"step": 4,
                                                                          "again": True}
    assert [(s, done) for s, _, done in relaunch.deepspeed_tags()] == [(4, True), (2, True)]
    relaunch.save_deepspeed(engine, 4, {"step": -1})  # its own step: not written twice
    assert CheckpointManager(tmp_path, rank=0).load_deepspeed(engine)["step"] == 4


def test_no_loadable_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last_k=2, rank=0)
    for step in (1, 2):
        mgr.save(_state(step), step)
        (tmp_path / f"step_{step:09d}.pt").write_bytes(b"garbage")  # e.g. a failing disk
    with pytest.raises(C.UnreadableCheckpoints, match=r"step_000000002.pt: .*step_000000001.pt: "
                       r".*move them away to start over"):
        mgr.load_latest()


def test_rank_state_files_are_per_rank_atomic_and_pruned_with_their_checkpoint(
        tmp_path: Path) -> None:
    r0 = CheckpointManager(tmp_path, keep_last_k=2, rank=0)
    r1 = CheckpointManager(tmp_path, keep_last_k=2, rank=1)
    for step in (10, 20, 30):
        for mgr in (r0, r1):  # every rank writes its own file before the commit
            mgr.save_rank_state({"rank": mgr.rank, "loss": torch.full((3,), float(step))}, step)
        r0.save(_state(step), step)
        for mgr in (r0, r1):
            mgr.prune_rank_states()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step_000000020.pt", "step_000000020.rank00000.pt",
                     "step_000000020.rank00001.pt", "step_000000030.pt",
                     "step_000000030.rank00000.pt", "step_000000030.rank00001.pt"]
    got = r1.load_rank_state(30)  # each rank reads only its own
    assert got["rank"] == 1 and torch.equal(got["loss"], torch.full((3,), 30.0))
    assert r1.checkpoints()[0][0] == 30  # a rank file is never taken for a checkpoint
    # a dead write (rank file of a step never committed) goes at the next prune, own rank only
    r1.save_rank_state({"rank": 1}, 40)
    r0.prune_rank_states()
    assert r1.rank_state_path(40).is_file()
    r1.prune_rank_states()
    assert not r1.rank_state_path(40).exists()
    # files of ranks a smaller later job does not have: rank 0 removes the unkept ones
    r1.save_rank_state({"rank": 1}, 40)
    r0.prune_rank_states(world_size=2)
    assert r1.rank_state_path(40).is_file()  # rank 1 exists: its own files are its own
    r0.prune_rank_states(world_size=1)
    assert not r1.rank_state_path(40).exists() and r1.rank_state_path(30).is_file()
    with pytest.raises(TypeError, match="rank state"):
        r0.save_rank_state({"bad": object()}, 30)
    r0.rank_state_path(30).unlink()
    with pytest.raises(FileNotFoundError, match=r"step_000000030\.rank00000\.pt: the checkpoint "
                                                r"of step 30 names per-rank state for rank 0"):
        r0.load_rank_state(30)
    r1.rank_state_path(30).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"cannot read rank 1's state of step 30"):
        r1.load_rank_state(30)


def test_background_save_writes_the_snapshot_and_reports_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A background write holds a copy: changing the live tensors after the call does not reach
    the file; the next save or wait() re-raises a failed write, naming its step."""
    mgr = CheckpointManager(tmp_path, keep_last_k=2, rank=0)
    live = _state(10)
    ref = {k: v.clone() for k, v in live["model"].items()}
    mgr.save_async(C.snapshot(live), 10)
    for v in live["model"].values():  # training goes on
        v.add_(1.0)
    mgr.wait()
    raw = torch.load(mgr.latest(), weights_only=True)
    for k, v in ref.items():
        assert torch.equal(raw["model"][k], v), k
    for step in (20, 30):
        mgr.save_async(C.snapshot(_state(step)), step)
    mgr.wait()
    assert [s for s, _ in mgr.checkpoints()] == [30, 20]  # pruned as a plain save prunes

    def fail(state: dict, final: Path) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(C, "_atomic_save", fail)
    mgr.save_async(C.snapshot(_state(40)), 40)
    with pytest.raises(RuntimeError, match=r"writing the checkpoint of step 40 to .* failed: "
                                           r"OSError: disk full"):
        mgr.wait()
    mgr.wait()  # reported once
    CheckpointManager(tmp_path, rank=1).save_async({"x": object()}, 50)  # other ranks: no-op


class _Payload:
    """Unpickling it opens (creates) the file ``marker``: what a hostile checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        import builtins

        return builtins.open, (str(self.marker), "w")


class _DeepSpeedLikeEngine(_FakeEngine):
    """Loads as DeepSpeed's TorchCheckpointEngine does: ``torch.load(weights_only=False)``."""

    def load_checkpoint(self, load_dir: str, tag: str, **kw: bool) -> tuple[str | None, Any]:
        path = Path(load_dir, tag, "mp_rank_00_model_states.pt")
        return str(path), torch.load(path, map_location="cpu", weights_only=False)["client"]


def test_deepspeed_loads_are_weights_only_and_a_pickled_object_is_refused(
        tmp_path: Path) -> None:
    """DeepSpeed's own loader asks for weights_only=False; under load_deepspeed every load is
    weights-only: a file pickling an object outside the allowlist is refused by name before
    it runs (no fallback to the checkpoint before), and torch.load is itself again after."""
    mgr = CheckpointManager(tmp_path, keep_last_k=3, rank=0)
    engine = _DeepSpeedLikeEngine()
    for step in (1, 2):
        mgr.save_deepspeed(engine, step, {"step": step})
    assert mgr.load_deepspeed(engine) == {"step": 2}  # plain data loads as before
    marker = tmp_path / "PAYLOAD_RAN"
    bad = tmp_path / "step_000000002" / "mp_rank_00_model_states.pt"
    torch.save({"client": {"step": 2, "hook": _Payload(marker)}}, bad)
    real = torch.load
    with pytest.raises(C.UnsafeCheckpointFile, match=rf"{bad}: refused: .*could run code "
                                                     rf"\(.*GLOBAL io.open"):
        mgr.load_deepspeed(engine)
    assert not marker.exists() and torch.load is real
    torch.load(bad, weights_only=False)  # the check itself: without the guard it runs
    assert marker.exists()


def test_checkpoints_of_the_other_strategy_are_refused_not_skipped(tmp_path: Path) -> None:
    """A DDP job in a folder of DeepSpeed checkpoints (or the other way round) would start
    again from step 0 beside them: refused, naming them and what to do."""
    from eofm.pretrain.config import ConfigError, load_config
    from eofm.pretrain.distributed import DistEnv
    from eofm.pretrain.state_fit import refuse_other_kind
    from eofm.pretrain.strategy import Strategy

    mgr = CheckpointManager(tmp_path, rank=0)
    refuse_other_kind(mgr, deepspeed=False, strategy="ddp")  # empty folder: fine
    _FakeEngine().save_checkpoint(str(tmp_path), "step_000000007", {}, save_latest=False)
    refuse_other_kind(mgr, deepspeed=False, strategy="ddp")  # no COMPLETE marker: a dead write
    (tmp_path / "step_000000007" / C.DS_MARKER).write_text("7\n")
    cfg = load_config(None, ["data.path=/d", "runtime.strategy=ddp"])
    strategy = Strategy(nn.Linear(2, 2), cfg, DistEnv(), torch.device("cpu"), 1e-3)
    with pytest.raises(ConfigError, match=r"holds 1 DeepSpeed checkpoint\(s\) \(step_000000007\) "
                                          r"written by DeepSpeed; this job runs 'ddp'.* from step "
                                          r"0. Resume with runtime.strategy=deepspeed"):
        strategy.load(mgr)
    refuse_other_kind(mgr, deepspeed=True, strategy="deepspeed")  # its own kind: fine
    mgr.save(_state(3), 3)
    with pytest.raises(ConfigError, match=r"holds 1 plain checkpoint\(s\) \(step_000000003.pt\) "
                                          r"written by the ddp, fsdp2 or single strategy; this job "
                                          r"runs 'deepspeed'.*another runtime.out_dir"):
        refuse_other_kind(mgr, deepspeed=True, strategy="deepspeed")


def test_a_checkpoint_of_another_parameter_grouping_is_a_named_config_error(tmp_path) -> None:
    """A checkpoint that reads fine but whose optimiser groups differ from this job's (another
    config, or an eofm version grouping weight decay differently) is refused naming the file
    and the way on, not a bare torch traceback."""
    from eofm.pretrain.config import ConfigError, load_config
    from eofm.pretrain.distributed import DistEnv
    from eofm.pretrain.strategy import Strategy

    mgr = CheckpointManager(tmp_path / "checkpoints", rank=0)
    mgr.save(_state(3), 3)  # one AdamW group over all four tensors
    cfg = load_config(None, ["data.path=/d"])
    module = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))  # ours: decay / no-decay groups
    strategy = Strategy(module, cfg, DistEnv(), torch.device("cpu"), 1e-3)
    with pytest.raises(ConfigError, match=r"step_000000003.pt does not fit this job: optimizer: "
                                          r"checkpoint has 1 parameter group\(s\) of sizes \[4\], "
                                          r"this job 2 of sizes \[1, 3\].*parameter grouping.*"
                                          r"model.init_from=EXPORT"):
        strategy.load(mgr)


def _strategy(width: int):
    """A Strategy (single process) around a small model ``width`` wide."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.distributed import DistEnv
    from eofm.pretrain.strategy import Strategy

    torch.manual_seed(width)
    module = nn.Sequential(nn.Linear(4, width), nn.LayerNorm(width))
    return Strategy(module, load_config(None, ["data.path=/d"]), DistEnv(), torch.device("cpu"),
                    1e-3)


def test_a_checkpoint_of_another_model_shape_is_refused_before_loading(tmp_path) -> None:
    """The fit (keys and shapes of the model, optimiser groups and their state) is decided
    before anything is loaded: another width is a ConfigError naming the tensors, and this
    job's weights are untouched; a checkpoint of the same model resumes."""
    from eofm.pretrain.config import ConfigError

    mgr = CheckpointManager(tmp_path / "checkpoints", rank=0)
    trained = _strategy(8)
    trained.forward_backward(lambda m: m(torch.randn(2, 4)).square().sum(), last=True)
    assert trained.finish_step()[1]  # AdamW state (exp_avg ...) to restore too
    trained.save(mgr, 3, {"step": 3})
    wider = _strategy(16)
    before = {k: v.clone() for k, v in wider.module.state_dict().items()}
    with pytest.raises(ConfigError, match=r"does not fit this job: model: 4 tensor\(s\) of "
                                          r"another shape \(0.weight \(checkpoint \[8, 4\], this "
                                          r"job \[16, 4\]\), 0.bias .*; optimizer: 8 state "
                                          r"tensor\(s\) of another shape \(exp_avg of parameter"):
        wider.load(mgr)
    assert all(torch.equal(v, before[k]) for k, v in wider.module.state_dict().items())
    same = _strategy(8)
    torch.nn.init.zeros_(same.module[0].weight)
    assert same.load(mgr) == {"step": 3} and same.module[0].weight.abs().sum() > 0


def test_an_error_while_loading_a_fitting_checkpoint_is_not_called_a_misfit(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory (or a failed collective) while restoring a checkpoint that fits is raised
    as it is, not reported as 'does not fit this job'."""
    mgr = CheckpointManager(tmp_path / "checkpoints", rank=0)
    _strategy(8).save(mgr, 3, {"step": 3})
    strategy = _strategy(8)

    def oom(*_: Any, **__: Any) -> None:
        raise torch.OutOfMemoryError("out of memory while restoring")

    monkeypatch.setattr(strategy.module, "load_state_dict", oom)
    with pytest.raises(torch.OutOfMemoryError, match="out of memory while restoring"):
        strategy.load(mgr)


def test_rank_zero_listing_decides_whether_other_checkpoints_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """refuse_other_kind goes by rank 0's listing (broadcast), not each rank's own view of
    the folder: a rank that sees nothing (node-local or lagging storage) still refuses with
    the others, and one that sees stale files goes on with them."""
    from eofm.pretrain import distributed
    from eofm.pretrain.config import ConfigError
    from eofm.pretrain.state_fit import refuse_other_kind

    mgr = CheckpointManager(tmp_path, rank=1)
    sent: list[Any] = []
    rank0: list[str] = ["step_000000007"]

    def from_rank0(obj: Any, src: int = 0) -> Any:
        sent.append(obj)
        return rank0

    monkeypatch.setattr(distributed, "broadcast_object", from_rank0)
    with pytest.raises(ConfigError, match=r"holds 1 DeepSpeed checkpoint\(s\) \(step_000000007\)"):
        refuse_other_kind(mgr, deepspeed=False, strategy="ddp")  # this rank sees none
    assert sent == [[]]
    _FakeEngine().save_checkpoint(str(tmp_path), "step_000000007", {}, save_latest=False)
    (tmp_path / "step_000000007" / C.DS_MARKER).write_text("7\n")
    rank0.clear()
    refuse_other_kind(mgr, deepspeed=False, strategy="ddp")  # rank 0 sees none: goes on
    assert sent[-1] == ["step_000000007"]


def test_an_export_of_a_bf16_softcon_run_continues_with_its_fp32_ema_shadow(tmp_path) -> None:
    """``eofm-export --with-decoder`` of a SoftCon run under DeepSpeed bf16 holds the fp32 EMA
    shadow (``ema_fp32.*``), which a freshly built objective does not have yet: the export's
    tensors are still loaded (not refused as unexpected), the shadow among them."""
    import dataclasses

    from eofm.models.hub import save_pretrained
    from eofm.pretrain.config import load_config
    from eofm.pretrain.data import BandInfo
    from eofm.pretrain.encoders import load_extra_state
    from eofm.pretrain.objectives import build_objective

    bands = ["B02", "B03", "B04", "B08"]
    cfg = load_config(None, ["data.path=/d", "objective.name=softcon", "model.img_size=16",
                             "model.name=vit_test_patch8", "objective.params={proj_hidden_dim: "
                             "32, proj_dim: 16, pred_hidden_dim: 32}"])
    n = len(bands)
    info = BandInfo("s2", "s2_l1c", bands, torch.full((n,), 500.0), torch.full((n,), 20.0),
                    10.0, torch.zeros(n), torch.ones(n), {})
    donor = build_objective(cfg, info)
    for p in donor.parameters():  # what DeepSpeed bf16 does to every parameter
        p.data = p.data.to(torch.bfloat16)
    donor.on_step_end(0, 10)  # the EMA creates its fp32 shadow
    state = {k: v.float() for k, v in donor.state_dict().items()}
    encoder = build_objective(cfg, info).encoder
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()
                             if k.startswith("encoder.")})
    encoder.contract = dataclasses.replace(encoder.contract, objective="softcon")
    rest = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    save_pretrained(encoder, tmp_path / "export", extra_state=rest)
    fresh = build_objective(cfg, info)
    assert "ema_fp32" not in fresh._modules
    assert load_extra_state(fresh, str(tmp_path / "export"), "softcon") == sorted(rest)
    got = fresh.state_dict()
    assert all(torch.equal(got[k], v) for k, v in rest.items())
    assert any(k.startswith("ema_fp32.") for k in rest)


def test_a_resume_keeps_the_configured_optimiser_hyper_parameters(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """optim.weight_decay (the decayed group only), optim.betas and optim.eps changed since the
    checkpoint: the resumed optimiser uses the config's, with a warning giving old -> new
    (loading an optimiser state restores the values it was saved with; before, they were
    silently kept, while config.yaml said otherwise); the moments are the checkpoint's."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.distributed import DistEnv
    from eofm.pretrain.strategy import Strategy

    mgr = CheckpointManager(tmp_path / "checkpoints", rank=0)
    trained = _strategy(8)
    trained.forward_backward(lambda m: m(torch.randn(2, 4)).square().sum(), last=True)
    assert trained.finish_step()[1]
    trained.save(mgr, 3, {"step": 3})
    cfg = load_config(None, ["data.path=/d", "optim.weight_decay=0.3", "optim.betas=[0.8, 0.99]",
                             "optim.eps=1e-6"])
    torch.manual_seed(8)
    changed = Strategy(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)), cfg, DistEnv(),
                       torch.device("cpu"), 1e-3)
    caplog.clear()
    assert changed.load(mgr) == {"step": 3}
    got = [(g["weight_decay"], tuple(g["betas"]), g["eps"]) for g in changed.optimizer.param_groups]
    assert got == [(0.3, (0.8, 0.99), 1e-6), (0.0, (0.8, 0.99), 1e-6)]  # decayed, exempt
    assert ("the optimiser's hyper-parameters differ from the checkpoint's (weight_decay 0.05 -> "
            "0.3, betas (0.9, 0.95) -> (0.8, 0.99), eps 1e-08 -> 1e-06)") in caplog.text
    ours, theirs = changed.optimizer.state_dict(), trained.optimizer.state_dict()
    for key, state in theirs["state"].items():
        assert torch.equal(ours["state"][key]["exp_avg"], state["exp_avg"])
    caplog.clear()
    assert _strategy(8).load(mgr) == {"step": 3}  # the same config: nothing to say
    assert "hyper-parameters" not in caplog.text


def test_a_resume_keeps_the_configured_lr_scale_of_each_group(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Fine-tuning's layer-wise lr decay (optim.layer_decay) sets each group's lr_scale; a
    resume with another layer_decay kept the checkpoint's (Optimizer.load_state_dict restores
    every group setting), while config.yaml and the warnings said the new one. The freshly
    built groups' lr_scale wins, warned of as a count (pretraining's groups have none: the
    test above sees no lr_scale in its warning)."""
    from eofm.pretrain.optim import adamw

    def with_scales(strategy, scales: tuple[float, float]):
        groups = strategy.optimizer.param_groups
        strategy.optimizer = adamw(
            [{"params": g["params"], "weight_decay": g["weight_decay"], "lr_scale": s}
             for g, s in zip(groups, scales, strict=True)], 1e-3, (0.9, 0.95), 1e-8)
        return strategy

    mgr = CheckpointManager(tmp_path / "checkpoints", rank=0)
    trained = with_scales(_strategy(8), (0.75, 1.0))
    trained.forward_backward(lambda m: m(torch.randn(2, 4)).square().sum(), last=True)
    assert trained.finish_step()[1]
    trained.save(mgr, 3, {"step": 3})
    changed = with_scales(_strategy(8), (0.5, 1.0))
    caplog.clear()
    assert changed.load(mgr) == {"step": 3}
    assert [g["lr_scale"] for g in changed.optimizer.param_groups] == [0.5, 1.0]
    changed.set_lr(1e-3)
    assert [g["lr"] for g in changed.optimizer.param_groups] == [5e-4, 1e-3]
    assert ("the optimiser's hyper-parameters differ from the checkpoint's (lr_scale of 1 of 2 "
            "group(s) (optim.layer_decay))") in caplog.text


def test_a_checkpoint_keyed_by_number_is_keyed_by_name_for_fsdp2() -> None:
    """FSDP2's set_state_dict reads an optimiser state keyed by parameter names; the one a
    single process or DDP writes numbers the parameters in group order. Each number becomes
    the name of the parameter at its place in the job's groups (decayed weights first, then
    the exempt ones), as Optimizer.load_state_dict matches them by position; a state keyed by
    names already passes as it is."""
    from eofm.pretrain.state_fit import keyed_by_name

    strategy = _strategy(8)
    strategy.forward_backward(lambda m: m(torch.randn(2, 4)).square().sum(), last=True)
    strategy.finish_step()
    saved = strategy.optimizer.state_dict()
    assert [g["params"] for g in saved["param_groups"]] == [[0], [1, 2, 3]]
    named = keyed_by_name(saved, strategy.optimizer.param_groups, strategy.module)
    assert [g["params"] for g in named["param_groups"]] == [["0.weight"],
                                                             ["0.bias", "1.weight", "1.bias"]]
    params = dict(strategy.module.named_parameters())
    for name, state in named["state"].items():
        assert torch.equal(state["exp_avg"], strategy.optimizer.state[params[name]]["exp_avg"])
    assert keyed_by_name(named, strategy.optimizer.param_groups, strategy.module) is named


def test_pruning_never_trades_new_checkpoints_for_a_damaged_later_one(tmp_path: Path) -> None:
    """A resume past a damaged step_30 (from step 10), keep_last_k=1: ranked by step, the
    damaged file kept the one slot, so steps 15 and 20 were deleted as written (and 10 too):
    the run ended with status 0 and nothing loadable."""
    mgr = CheckpointManager(tmp_path / "c", keep_last_k=1, rank=0)
    mgr.save({"step": 10, "w": torch.ones(3)}, 10)
    mgr.path_for(30).write_bytes(b"PK\x03\x04 truncated")
    assert mgr.load_latest()[1]["step"] == 10  # past the damaged one
    for step in (15, 20):
        mgr.save({"step": step, "w": torch.ones(3) * step}, step)
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["step_000000020.pt", "step_000000030.pt"]
    assert mgr.load_latest()[1]["step"] == 20
    mgr.save({"step": 35, "w": torch.ones(3)}, 35)  # past it: the damaged one goes as usual
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["step_000000035.pt"]


def test_the_checkpoint_records_where_init_from_was_read_even_after_a_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """eofm-export decided folder or Hub repo for model.init_from in ITS working directory (a
    local exp/mae exported from elsewhere became base_model: exp/mae). The checkpoint records
    the origin run_encoder read (init_origin); a resumed run, which does not read the export,
    decides it in its own directory, as run_encoder would have; plain data, weights_only."""
    from eofm.pretrain.encoders import INIT_ORIGIN, init_origin

    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp" / "mae").mkdir(parents=True)
    read = nn.Linear(2, 2)
    read.init_origin = {"kind": "hub", "repo_id": "acme/enc", "revision": "v1"}  # run_encoder's
    assert init_origin(read, "acme/enc@v1") == read.init_origin
    resumed = nn.Linear(2, 2)  # no init_origin: model.init_from was not read
    local = {"kind": "folder", "path": str(tmp_path / "exp" / "mae")}
    assert init_origin(resumed, "exp/mae") == local
    assert init_origin(resumed, "hf-hub:exp/mae@v2") == {"kind": "hub", "repo_id": "exp/mae",
                                                         "revision": "v2"}
    assert init_origin(resumed, "acme/enc") == {"kind": "hub", "repo_id": "acme/enc",
                                                "revision": None}
    assert init_origin(resumed, None) is None and init_origin(read, "") is None
    assert init_origin(resumed, "not an export") is None
    mgr = CheckpointManager(tmp_path / "c", rank=0)
    mgr.save({"step": 1, "w": torch.ones(1), INIT_ORIGIN: local}, 1)
    assert CheckpointManager.load(mgr.path_for(1))[INIT_ORIGIN] == local
