"""The real ``eofm-pretrain`` end to end: kill/resume exactness, preemption, bad configs."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.pretrain.cli import main
from eofm.pretrain.preemption import REQUEUE_EXIT_CODE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config(tiny_run_config) -> Path:
    """A tiny deterministic CPU run on the bundled scene: 144 tiles of 32 px, batch 16."""
    return tiny_run_config({"runtime": {"ckpt_every": 3}, "logging": {"sample_keys": True}},
                           name="train")


def _cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "eofm.pretrain", "--config", str(config),
            f"runtime.out_dir={out}", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _final_weights(out: Path) -> dict:
    ckpt = sorted((out / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(ckpt, weights_only=True)


def _steps(out: Path) -> dict[int, dict]:
    """Last record per step of samples.rank0.jsonl (steps replayed after a crash repeat)."""
    recs = [json.loads(x) for x in (out / "samples.rank0.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in recs}


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, timeout: float = 120) -> None:
    folder, pattern = path_glob
    t0 = time.time()
    while not list(folder.glob(pattern)):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.time() - t0 < timeout, f"nothing matching {pattern} in {folder}"
        time.sleep(0.05)


def test_sigkill_and_restart_gives_identical_weights_and_exactly_once(config: Path,
                                                                      tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    subprocess.run(_cmd(config, ref), check=True, env=_env(), capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(config, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for((out / "checkpoints", "step_000000006.pt"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = subprocess.run(_cmd(config, out), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step" in done.stderr
    a, b = _final_weights(ref), _final_weights(out)
    assert a["step"] == b["step"] == 14
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = _steps(ref), _steps(out)
    assert {s: r["keys"] for s, r in sa.items()} == {s: r["keys"] for s, r in sb.items()}
    by_epoch: dict[int, list[str]] = {}
    for r in sa.values():
        by_epoch.setdefault(r["epoch"], []).extend(r["keys"])
    full = [keys for e, keys in by_epoch.items() if e < max(by_epoch)]
    assert full and all(len(k) == len(set(k)) == 144 for k in full)  # each sample once per epoch


@pytest.mark.parametrize("background", [False, True])
def test_sigterm_saves_and_exits_with_requeue_status(config: Path, tmp_path: Path,
                                                     background: bool) -> None:
    """The checkpoint is complete before the requeue status, also when written in the
    background (runtime.async_checkpoint)."""
    out = tmp_path / "pre"
    proc = subprocess.Popen(_cmd(config, out, "schedule.steps=100000", "runtime.ckpt_every=0",
                                 f"runtime.async_checkpoint={str(background).lower()}"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_for((out, "metrics.jsonl"), proc)
    while not (out / "metrics.jsonl").read_text().strip():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, err[-3000:]
    assert (out / "REQUEUE").exists()
    ckpt = _final_weights(out)
    assert 0 < ckpt["step"] < 100000
    again = subprocess.run(_cmd(config, out, f"schedule.steps={ckpt['step'] + 1}",
                                "runtime.ckpt_every=0"), env=_env(), capture_output=True,
                           text=True)
    assert again.returncode == 0 and f"resumed from step {ckpt['step']}" in again.stderr
    assert not (out / "REQUEUE").exists()


def test_invalid_config_fails_before_any_work(config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    status = main(["--config", str(config), f"runtime.out_dir={out}", "optim.base_lr=-1",
                   "data.batch_sise=3", "runtime.strategy=deepspeed"])
    err = capsys.readouterr().err
    assert status == 2
    assert "base_lr" in err and "batch_sise" in err and "did you mean 'batch_size'" in err
    assert "zero_stage" in err
    assert not out.exists()


def test_quickstart_config_runs_from_a_clean_checkout(tmp_path: Path) -> None:
    """The README's main command, shortened: builds its shards from the bundled sample."""
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "eofm.pretrain", "--config",
         str(ROOT / "launch" / "configs" / "quickstart.yaml"), "schedule.steps=2",
         f"runtime.out_dir={out}", f"data.path={tmp_path / 'data'}", "logging.log_every=1",
         f"data.build_from={ROOT / 'data_shards' / 'sample' / 'sentinel2_l1c_scene'}"],
        capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(r["loss"] > 0 for r in recs)
    assert (out / "checkpoints" / "step_000000002.pt").exists()
    assert (out / "config.yaml").exists()


def test_bands_the_dataset_lacks_fail_before_training(config: Path, tmp_path: Path,
                                                      capsys) -> None:
    out = tmp_path / "never"
    status = main(["--config", str(config), f"runtime.out_dir={out}",
                   "data.bands={s2: [B02, B99, B8a]}"])
    err = capsys.readouterr().err
    assert status == 2 and "'B99' (did you mean 'B09'?)" in err and "B8a" not in err
    assert not (out / "checkpoints").exists()


@pytest.mark.compiles
def test_compile_runs_the_same_training_with_compiled_blocks(config: Path,
                                                              tmp_path: Path) -> None:
    """runtime.compile: every transformer block compiled in place; the same losses as eager
    and a checkpoint with the same parameter names (exports need no unwrapping)."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    def run(name: str, *extra: str) -> Trainer:
        # lrs 0 and 5e-4: the warmup of 2 steps to 1e-3 of the tiny config, cut at 2 steps
        cfg = load_config(str(config), [f"runtime.out_dir={tmp_path / name}", "schedule.steps=2",
                                        "schedule.warmup_steps=1", "optim.base_lr=5e-4",
                                        "logging.sample_keys=false", *extra])
        t = Trainer(cfg)
        assert t.fit() == 0
        return t

    run("eager")
    compiled = run("compiled", "runtime.compile=true")
    blocks = [m for m in compiled.objective.modules() if type(m).__name__ == "Block"]
    assert len(blocks) == len(compiled.objective.encoder.blocks) + 1  # + 1 decoder block
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)

    def losses(name: str) -> list[float]:
        return [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").open()]

    assert losses("compiled") == pytest.approx(losses("eager"), rel=1e-4)
    a, b = _final_weights(tmp_path / "eager"), _final_weights(tmp_path / "compiled")
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5)


def test_resume_on_another_world_size_is_refused_unless_elastic(config: Path,
                                                                tmp_path: Path) -> None:
    """A checkpoint of 2 ranks resumed by 1: refused by default (the data position cannot be
    exact), resumed with runtime.resume_elastic (weights and step exact, the epoch continued
    with the samples the two ranks had not read)."""
    from eofm.pretrain.checkpoint import CheckpointManager
    from eofm.pretrain.config import ConfigError, load_config
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "run"

    def trainer(*extra: str) -> Trainer:
        return Trainer(load_config(str(config), [f"runtime.out_dir={out}",
                                                 "logging.sample_keys=false", *extra]))

    assert trainer("schedule.steps=3").fit() == 0
    [path] = (out / "checkpoints").glob("step_000000003.pt")
    state = CheckpointManager.load(path)
    half = {**state["data"][0], "rank": 1, "world_size": 2, "consumed": {"0": 8}}
    state["data"] = [{**state["data"][0], "world_size": 2, "consumed": {"0": 8}}, half]
    state["rng"] = state["rng"] * 2
    state["objective_files"] = [False, False]
    torch.save(state, path)  # as if two ranks had each read 8 samples of epoch 0
    with pytest.raises(ConfigError, match=r"written by 2 ranks; this job has 1: the data position "
                                          r"cannot be kept exact; set runtime.resume_elastic=true"):
        trainer("schedule.steps=5").resume()
    t = trainer("schedule.steps=5", "runtime.resume_elastic=true")
    t.resume()
    assert t.step == 3 and t.loader.epoch == 0 and t.loader.consumed == {}
    total = t.loader.dataset.manifest.sample_count
    assert t.loader.dataset.epoch_samples_of(0) == total // 2 * 2 - 16  # 8 read by each rank
    assert t.loader.dataset.epoch_samples_of(1) == total
    state["data"] = [{**s, "dataset": "0123456789abcdef"} for s in state["data"]]
    torch.save(state, path)  # positions in another dataset: only the share read carries over
    with pytest.raises(ConfigError, match=r"the data changed \(dataset was '0123456789abcdef', "
                                          r"now '[0-9a-f]{16}'\), so the position cannot be"):
        trainer("schedule.steps=5").resume()
    other = trainer("schedule.steps=5", "runtime.resume_elastic=true")
    other.resume()
    # 16 of the 128 samples the two ranks' epoch holds in full batches of 16 (2 x 64 of 72)
    assert other.loader.consumed == {0: 16 * len(other.loader.dataset) // 128}
    for k, v in state["model"].items():
        assert torch.equal(t.strategy.module.state_dict()[k], v), k
    assert t.fit() == 0 and t.step == 5


def test_elastic_resume_onto_fewer_ranks_drops_the_removed_ranks_later_sample_keys(
        config: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 2-rank run killed after its step-3 checkpoint left steps 4 and 5 in both ranks'
    samples.rank{r}.jsonl; resumed elastically on 1 rank, rank 0 dropped them from its own
    file but rank 1's kept them, so the logging.sample_keys audit counted the samples of
    steps 4 and 5 twice (read again by the one rank). Rank 0 now drops them from the
    removed rank's file too, and says so as for its own."""
    from eofm.pretrain.checkpoint import CheckpointManager
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "run"

    def trainer(*extra: str) -> Trainer:
        return Trainer(load_config(str(config), [f"runtime.out_dir={out}", *extra]))

    assert trainer("schedule.steps=3").fit() == 0
    [path] = (out / "checkpoints").glob("step_000000003.pt")
    state = CheckpointManager.load(path)
    state["data"] = [{**state["data"][0], "world_size": 2, "consumed": {"0": 8}},
                     {**state["data"][0], "rank": 1, "world_size": 2, "consumed": {"0": 8}}]
    state["rng"] = state["rng"] * 2
    state["objective_files"] = [False, False]
    torch.save(state, path)  # as if two ranks had each read 8 samples of epoch 0

    def records(rank: int, steps: range) -> str:
        return "".join(json.dumps({"step": s, "epoch": 0, "keys": [f"r{rank}s{s}"]}) + "\n"
                       for s in steps)

    with open(out / "samples.rank0.jsonl", "a", encoding="utf-8") as f:
        f.write(records(0, range(4, 6)))  # what the killed run's ranks wrote past step 3
    (out / "samples.rank1.jsonl").write_text(records(1, range(1, 6)), encoding="utf-8")
    caplog.set_level(logging.INFO)
    t = trainer("schedule.steps=5", "runtime.resume_elastic=true")
    t.resume()
    t.keys.close()
    assert t.step == 3
    assert [s for s, _ in sorted(_steps(out).items())] == [1, 2, 3]
    kept = [json.loads(x) for x in (out / "samples.rank1.jsonl").read_text().splitlines()]
    assert kept == [json.loads(x) for x in records(1, range(1, 4)).splitlines()]
    assert (f"{out / 'samples.rank1.jsonl'}: records after step 3 removed (the steps are run "
            f"again)") in caplog.text


def test_a_launch_with_more_ranks_that_died_before_a_checkpoint_leaves_no_sample_keys(
        config: Path, tmp_path: Path) -> None:
    """A 2-rank launch killed before its first checkpoint left steps 1-2 in both ranks'
    sample-key files; requeued on 1 rank, rank 0 dropped its own but rank 1's stayed, so the
    audit counted the samples of steps 1-2 twice. Every rank file this job does not have is
    cut at the resumed step too, checkpoint or not."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "run"
    out.mkdir()
    for rank in (0, 1):
        (out / f"samples.rank{rank}.jsonl").write_text(
            "".join(json.dumps({"step": s, "epoch": 0, "keys": [f"r{rank}s{s}"]}) + "\n"
                    for s in (1, 2)), encoding="utf-8")
    t = Trainer(load_config(str(config), [f"runtime.out_dir={out}", "schedule.steps=3"]))
    t.resume()
    t.keys.close()
    assert t.step == 0
    assert (out / "samples.rank1.jsonl").read_text() == ""
    assert (out / "samples.rank0.jsonl").read_text() == ""


def test_two_fsdp2_ranks_moved_to_one_read_each_sample_of_the_epoch_once(config: Path,
                                                                        tmp_path: Path) -> None:
    """torchrun with 2 FSDP2 ranks stops after 3 steps (48 of 144 tiles read), drawing a
    preview (every rank runs the reconstruction: its weights are sharded, gathered for it; rank
    0 writes); one process resumes elastically with the default strategy, DDP (FSDP2's
    checkpoint is gathered into the plain one DDP writes; DDP's own two-rank save:
    test_two_nodes.py): the rest of epoch 0 is exactly the 96 tiles not read, then epoch 1
    starts."""
    out = tmp_path / "run"
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", *_cmd(config, out, "schedule.steps=3", "logging.preview_every=3",
                      "runtime.strategy=fsdp2")[1:]]
    first = subprocess.run(two, env=_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [p.name for p in (out / "previews").iterdir()] == ["step_000000003.png"]
    one = subprocess.run(_cmd(config, out, "schedule.steps=11", "runtime.resume_elastic=true"),
                         env=_env(), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "resumed from step 3" in one.stderr
    assert "goes on with the 96 samples the old ranks had not read" in one.stderr
    recs = [json.loads(x) for f in sorted(out.glob("samples.rank*.jsonl"))
            for x in f.read_text().splitlines()]
    epoch0 = [k for r in recs if r["epoch"] == 0 for k in r["keys"]]
    assert len(epoch0) == len(set(epoch0)) == 144
    assert sorted({r["step"] for r in recs if r["epoch"] == 0}) == list(range(1, 10))
    assert sorted({r["step"] for r in recs if r["epoch"] == 1}) == [10, 11]


def test_deepspeed_job_resumes_on_another_world_size(config: Path, tmp_path: Path) -> None:
    """A ZeRO-3 job of 2 ranks (drawing a preview: every rank gathers the partitioned weights
    for the picture, rank 0 writes) goes on as one plain process (no launcher) with
    runtime.resume_elastic, through DeepSpeed's universal checkpoint from step 6 with the
    epoch's unread samples, each sample of the epoch read once (without it,
    test_deepspeed_universal.py: refused with what to set; the weights and moments restored
    exactly, ZeRO-3 2 -> 1 and ZeRO-2 1 -> 2: there)."""
    out = tmp_path / "run"
    ds = ["runtime.strategy=deepspeed", "runtime.zero_stage=3", "runtime.ckpt_every=6"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", *_cmd(config, out, "schedule.steps=6", "logging.preview_every=6", *ds)[1:]]
    first = subprocess.run(two, env=_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [p.name for p in (out / "previews").iterdir()] == ["step_000000006.png"]
    one = subprocess.run(_cmd(config, out, "schedule.steps=9", "runtime.resume_elastic=true",
                              *ds), env=_env(), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "converting it to DeepSpeed's universal format" in one.stderr
    assert "resumed from step 6" in one.stderr
    recs = [json.loads(x) for f in sorted(out.glob("samples.rank*.jsonl"))
            for x in f.read_text().splitlines()]
    epoch0 = [k for r in recs if r["epoch"] == 0 for k in r["keys"]]
    assert len(epoch0) == len(set(epoch0)) == 144
    assert sorted({r["step"] for r in recs}) == list(range(1, 10))
    assert not (out / "checkpoints" / "universal").exists()  # superseded by step 9's
    # the DeepSpeed run exports and probes like any other: its fp32 master weights
    from eofm.finetune.export import export_run
    from eofm.finetune.probe_curve import run_checkpoints
    from eofm.models import from_pretrained
    from eofm.pretrain.zero_checkpoint import consolidate

    assert [s for s, _ in run_checkpoints(out)] == [6, 9]
    encoder = from_pretrained(export_run(out, tmp_path / "export"))
    master = consolidate(out / "checkpoints" / "step_000000009")["model"]
    assert encoder.contract.bands == ("B02", "B03", "B04", "B08")
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, master["encoder." + k]), k


def test_reconstruction_previews_show_input_mask_and_prediction(config: Path,
                                                                tmp_path: Path) -> None:
    """Every preview_every steps (and at the end) a PNG of the same 8 samples: input, input
    with the hidden pixels grey (the mask ratio of them, the same mask each time), and the
    reconstruction, equal to the input wherever the encoder saw it."""
    from eofm.data_shards.png import read_png
    from eofm.pretrain.config import load_config
    from eofm.pretrain.preview import HIDDEN
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "run"
    t = Trainer(load_config(str(config), [f"runtime.out_dir={out}", "schedule.steps=5",
                                          "logging.preview_every=2", "logging.sample_keys=false"]))
    assert t.fit() == 0
    pics = sorted(p.name for p in (out / "previews").iterdir())
    assert pics == [f"step_{s:09d}.png" for s in (2, 4, 5)]
    a, b = (read_png(out / "previews" / p) for p in pics[:2])
    assert a.shape == (2 + 3 * 66 + 2 * 4, 2 + 8 * 66, 3)  # 3 rows of 8 tiles of 64 px
    tops = [2, 2 + 66 + 4, 2 + 2 * (66 + 4)]
    for k in range(8):
        x0 = 2 + k * 66
        inp, hid, rec = (a[y:y + 64, x0:x0 + 64] for y in tops)
        grey = (hid == HIDDEN).all(-1)
        assert 0.6 < grey.mean() < 0.9  # mask ratio 0.75, a few visible pixels may be grey too
        assert (inp[~grey] == rec[~grey]).all()  # what the encoder saw comes back as it was
        assert not (inp[grey] == rec[grey]).all()  # the rest is predicted
        hid_b = b[tops[1]:tops[1] + 64, x0:x0 + 64]
        assert ((hid_b == HIDDEN).all(-1) == grey).all()  # the same mask at every step
    assert not np.array_equal(a[tops[2]:], b[tops[2]:])  # the model changed in between


def test_softcon_previews_show_its_views(config: Path, tmp_path: Path) -> None:
    """A contrastive objective pictures the input and its two views, view 1's dropped tokens
    grey (SoftCon drops half by default)."""
    from eofm.data_shards.png import read_png
    from eofm.pretrain.preview import HIDDEN

    out = tmp_path / "run"
    assert main(["--config", str(config), f"runtime.out_dir={out}", "schedule.steps=2",
                 "schedule.warmup_steps=1", "logging.preview_every=2", "objective.name=softcon",
                 "objective.decoder_dim=512", "objective.decoder_depth=8",
                 "objective.decoder_heads=16", "logging.sample_keys=false"]) == 0
    sheet = read_png(out / "previews" / "step_000000002.png")
    assert sheet.shape == (2 + 3 * 66 + 2 * 4, 2 + 8 * 66, 3)
    top = 2 + 66 + 4  # the view-1 row
    grey = (sheet[top:top + 64, 2:2 + 64] == HIDDEN).all(-1)
    assert 0.4 < grey.mean() < 0.6


def test_previews_need_something_to_picture(config: Path, tmp_path: Path, capsys,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from eofm.pretrain.objectives import MAE

    monkeypatch.delattr(MAE, "reconstruct")  # an objective without reconstructions or views
    status = main(["--config", str(config), f"runtime.out_dir={tmp_path / 'never'}",
                   "logging.preview_every=2"])
    assert status == 2 and ("logging.preview_every: objective 'mae' has neither "
                            "reconstructions nor views" in capsys.readouterr().err)


def test_a_zarr_store_is_refused_with_what_to_build(config: Path, sample_data: Path,
                                                    tmp_path: Path, capsys) -> None:
    from eofm.data_shards.build import BuildConfig, build
    from eofm.data_shards.ingest import IngestOptions

    store = tmp_path / "ds.zarr"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(store), format="zarr",
                      ingest=IngestOptions(tile=40), progress=False))
    status = main(["--config", str(config), f"runtime.out_dir={tmp_path / 'never'}",
                   f"data.path={store}", "data.build_from=null"])
    assert status == 2
    assert f"data.path: {store} is a zarr store" in capsys.readouterr().err


def test_resume_warns_when_the_input_contract_changed(config: Path, tmp_path: Path,
                                                      caplog) -> None:
    from eofm.pretrain.checkpoint import CheckpointManager
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "run"
    args = [f"runtime.out_dir={out}", "logging.sample_keys=false"]
    assert Trainer(load_config(str(config), [*args, "schedule.steps=3"])).fit() == 0
    [path] = (out / "checkpoints").glob("step_000000003.pt")
    state = CheckpointManager.load(path)
    band = state["contract"]["bands"][0]
    state["contract"]["stats"][band]["std"] *= 2  # as if trained on other statistics
    torch.save(state, path)
    caplog.clear()
    Trainer(load_config(str(config), [*args, "schedule.steps=4",
                                      "schedule.warmup_steps=1"])).resume()
    err = caplog.text
    assert "the input contract differs from the checkpoint's (stats)" in err
    # so does a changed schedule, old -> new, with the lr it resumes at (old: past its end)
    assert ("the schedule differs from the checkpoint's (total_steps 3 -> 4, warmup_steps 2 -> "
            "1): from the resumed step on it follows the new one; at step 3 the value goes 0 -> "
            "0.0002") in err
    assert "settings differ" not in err  # the schedule is said above, not twice
    # any other setting that shapes training, old -> new (it went unsaid: config.yaml and the
    # export then stated the new values as if the whole run had used them)
    caplog.clear()
    Trainer(load_config(str(config), [*args, "schedule.steps=3", "data.batch_size=8",
                                      "objective.mask_ratio=0.5"])).resume()
    assert ("settings differ from the checkpoint's run (data.batch_size 16 -> 8, "
            "objective.mask_ratio 0.75 -> 0.5): training goes on with this config's from step "
            "3") in caplog.text


def test_background_checkpoints_equal_the_plain_ones(config: Path, tmp_path: Path) -> None:
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    def run(name: str, *extra: str) -> Path:
        out = tmp_path / name
        t = Trainer(load_config(str(config), [f"runtime.out_dir={out}", "schedule.steps=6",
                                              "runtime.ckpt_every=2", *extra]))
        assert t.fit() == 0
        return out / "checkpoints"

    plain, bg = run("plain"), run("async", "runtime.async_checkpoint=true")
    names = sorted(p.name for p in plain.iterdir())
    assert names == sorted(p.name for p in bg.iterdir()) == ["step_000000004.pt",
                                                             "step_000000006.pt"]
    for name in names:
        a, b = (torch.load(d / name, weights_only=True) for d in (plain, bg))
        for k, v in a["model"].items():
            assert torch.equal(b["model"][k], v), (name, k)
        assert a["step"] == b["step"] and a["data"] == b["data"]


def test_continual_pretraining_starts_from_an_export(config: Path, tmp_path: Path) -> None:
    """model.init_from: a new run (other bands) starts from an exported encoder's weights,
    filters matched by band name, and its own export names where it came from."""
    from eofm.finetune.export import export_run
    from eofm.models import from_pretrained
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    first = tmp_path / "first"
    args = ["logging.sample_keys=false", "schedule.steps=2", "schedule.warmup_steps=1"]
    assert Trainer(load_config(str(config), [f"runtime.out_dir={first}", *args])).fit() == 0
    donor = from_pretrained(export_run(first, tmp_path / "donor"))
    second = Trainer(load_config(str(config), [
        f"runtime.out_dir={tmp_path / 'second'}", *args, f"model.init_from={tmp_path / 'donor'}",
        "data.bands={s2: [B08, B04, B11]}"]))
    enc = second.encoder
    w, theirs = enc.tokenizer.proj.weight, donor.tokenizer.proj.weight  # donor: B02 B03 B04 B08
    assert torch.equal(w[:, 0], theirs[:, 3]) and torch.equal(w[:, 1], theirs[:, 2])
    assert torch.allclose(w[:, 2], theirs.mean(1))
    for k, v in donor.blocks.state_dict().items():
        assert torch.equal(enc.blocks.state_dict()[k], v), k
    softcon = Trainer(load_config(str(config), [  # SoftCon's EMA target starts there too
        f"runtime.out_dir={tmp_path / 'softcon'}", *args, f"model.init_from={tmp_path / 'donor'}",
        "objective={_replace_: true, name: softcon, params: {proj_hidden_dim: 64, proj_dim: 32, "
        "pred_hidden_dim: 64}}", "data.bands={s2: [B08, B04, B11]}"])).objective
    for k, v in donor.blocks.state_dict().items():
        assert torch.equal(softcon.target_encoder.blocks.state_dict()[k], v), k
    assert second.fit() == 0
    card = (export_run(tmp_path / "second", tmp_path / "continued") / "README.md").read_text()
    assert "| Continued from | .../donor |" in card  # a local absolute path: its name only
    # a requeued job resumes from its own checkpoint: the export is not needed any more
    (tmp_path / "donor").rename(tmp_path / "moved")
    again = Trainer(load_config(str(config), [
        f"runtime.out_dir={tmp_path / 'second'}", "logging.sample_keys=false", "schedule.steps=3",
        f"model.init_from={tmp_path / 'donor'}", "data.bands={s2: [B08, B04, B11]}"]))
    assert again.fit() == 0
    with pytest.raises(ValueError, match=r"model.init_from: cannot load .*donor"):
        Trainer(load_config(str(config), [
            f"runtime.out_dir={tmp_path / 'third'}", *args,
            f"model.init_from={tmp_path / 'donor'}", "data.bands={s2: [B08, B04, B11]}"]))


def test_launch_problems_are_reported_together_before_any_data_is_built(
        config: Path, sample_data: Path, tmp_path: Path, capsys) -> None:
    """Problems that need no data come at once, before the (possibly long) shard build; a
    grouped tokenizer's groups against the dataset's bands come before building the model."""
    ds = tmp_path / "zero3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    data = tmp_path / "data"
    status = main(["--config", str(config), f"runtime.out_dir={tmp_path / 'never'}",
                   f"data.path={data}", f"data.build_from={sample_data / 'sentinel2_l1c_scene'}",
                   "model.name=vit_nope", "runtime.strategy=deepspeed",
                   "runtime.zero_stage=2", f"runtime.deepspeed_config={ds}"])
    err = capsys.readouterr().err
    assert status == 2 and "2 problem(s)" in err and not data.exists()
    assert "model.name: unknown model 'vit_nope'" in err
    assert f"{ds} sets zero_optimization.stage=3, runtime.zero_stage is 2" in err
    status = main(["--config", str(config), f"runtime.out_dir={tmp_path / 'never'}",
                   "model.tokenizer=grouped"])
    err = capsys.readouterr().err
    assert status == 2 and "the groups name bands ['B05', 'B06', 'B07', 'B8A', 'B11', " in err
    assert not (tmp_path / "never").exists()


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(config: Path,
                                                               tmp_path: Path) -> None:
    """Injected NaN losses: the step is skipped (weights and optimiser unchanged), the count is
    in metrics.jsonl, and max_nonfinite_in_a_row in a row stop the run with what to try."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "nan"
    t = Trainer(load_config(str(config), [
        f"runtime.out_dir={out}", "schedule.steps=8", "schedule.warmup_steps=0",
        "runtime.max_nonfinite_in_a_row=2",
        "runtime.ckpt_every=0", "logging.sample_keys=false"]))
    forward, calls = t.objective.forward, [0]

    def poisoned(*args, **kwargs):
        got = forward(*args, **kwargs)
        calls[0] += 1
        if calls[0] in (2, 4, 5):  # one optimiser step per call (no accumulation)
            got["loss"] = got["loss"] * float("nan")
        return got

    t.objective.forward = poisoned
    finish, moved = t.strategy.finish_step, []

    def finish_step():
        before = [p.detach().clone() for p in t.objective.parameters()]
        got = finish()
        moved.append(any(not torch.equal(b, p) for b, p in zip(before, t.objective.parameters(),
                                                                strict=True)))
        return got

    t.strategy.finish_step = finish_step
    with pytest.raises(RuntimeError, match=r"2 non-finite losses or gradients in a row \(last at "
                                           r"step 5\), 3 skipped in all \(limit runtime."
                                           r"max_nonfinite_in_a_row=2\)"):
        t.fit()
    assert moved == [True, False, True, False, False]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"]) for r in recs] == [(1, 0), (2, 1), (3, 1), (4, 2)]
    assert recs[1]["loss"] is None and recs[2]["loss"] > 0  # NaN is logged as null


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed")
def test_deepspeed_zero3_bf16_trains_as_on_a_gpu(config: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeRO-3 in bf16 with DeepSpeed seeing the trainer's autocast, as it does on a GPU (see
    the ZeRO-2 test below): two finite steps, fp32 weights gathered for the preview."""
    from eofm.pretrain import distributed
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    enabled = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled",
                        lambda device_type=None: enabled(device_type or "cpu"))
    out = tmp_path / "z3"
    try:
        t = Trainer(load_config(str(config), [
            f"runtime.out_dir={out}", "runtime.strategy=deepspeed", "runtime.zero_stage=3",
            "runtime.precision=bf16", "logging.sample_keys=false", "runtime.ckpt_every=0",
            "schedule.steps=2", "schedule.warmup_steps=1", "logging.preview_every=2"]))
        assert t.fit() == 0
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs] == [1, 2]
        assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in recs)
        assert (out / "previews" / "step_000000002.png").is_file()
    finally:
        distributed.teardown()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed")
def test_deepspeed_bf16_trains_and_its_resume_unpickles_nothing(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed with bf16 (the GPU default) computes under bf16 autocast with fp32 weights, as
    DDP does: the forward and the previews run, and the losses are finite. On a GPU DeepSpeed's
    engine sees the trainer's autocast (``torch.is_autocast_enabled()`` asks about CUDA) and
    switches it off unless its own ``torch_autocast`` section is on, so this test makes that
    question see the CPU's autocast (before: an H200 run crashed at step 1, fp32 input against
    bf16 weights). Its checkpoint resumes weights-only: a file pickling an object is refused by
    name before it runs; and a DDP checkpoint beside is refused."""
    import builtins

    from eofm.pretrain import distributed
    from eofm.pretrain.config import ConfigError, load_config
    from eofm.pretrain.trainer import Trainer

    class Payload:
        def __reduce__(self):
            return builtins.open, (str(marker), "w")

    for var in ("LOCAL_RANK", "DS_ACCELERATOR"):  # DeepSpeedStrategy sets them if unset
        monkeypatch.setenv(var, {"LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu"}[var])
    enabled = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled",
                        lambda device_type=None: enabled(device_type or "cpu"))
    out, marker = tmp_path / "ds", tmp_path / "PAYLOAD_RAN"
    args = [f"runtime.out_dir={out}", "runtime.strategy=deepspeed", "runtime.zero_stage=2",
            "runtime.precision=bf16", "logging.sample_keys=false", "runtime.ckpt_every=0"]
    try:
        t = Trainer(load_config(str(config), [*args, "schedule.steps=2", "schedule.warmup_steps=1",
                                              "logging.preview_every=2"]))
        assert t.fit() == 0
        assert (out / "previews" / "step_000000002.png").is_file()
        assert next(t.objective.parameters()).dtype == torch.float32
        assert t.strategy.engine.torch_autocast_dtype() == torch.bfloat16
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs] == [1, 2]
        assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in recs)
        states = out / "checkpoints" / "step_000000002" / "mp_rank_00_model_states.pt"
        saved = torch.load(states, weights_only=False)
        torch.save({**saved, "extra": Payload()}, states)
        again = Trainer(load_config(str(config), [*args, "schedule.steps=3",
                                                  "optim.weight_decay=0.3",
                                                  "optim.betas=[0.8, 0.99]", "optim.eps=1e-6"]))
        with pytest.raises(ValueError, match=rf"{states}: refused: .*could run code"):
            again.resume()
        assert not marker.exists()
        torch.save(saved, states)
        torch.save({}, out / "checkpoints" / "step_000000001.pt")
        with pytest.raises(ConfigError, match=r"holds 1 plain checkpoint\(s\) "
                                              r"\(step_000000001.pt\)"):
            again.resume()
        (out / "checkpoints" / "step_000000001.pt").unlink()
        again.resume()  # the job's optim.* over the ones DeepSpeed restored with the state
        assert again.step == 2
        groups = again.strategy.engine.optimizer.param_groups
        assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.3]
        assert all(tuple(g["betas"]) == (0.8, 0.99) and g["eps"] == 1e-6 for g in groups)
    finally:
        distributed.teardown()


def test_a_new_run_into_a_folder_with_checkpoints_is_refused_before_any_work(
        config: Path, tmp_path: Path, capsys) -> None:
    """runtime.resume=false where an earlier run left checkpoints (plain or DeepSpeed): refused
    with status 2, naming the folder, how many and the ways out, before any data is read or
    built; the folder is left as it was. Before, the new run trained beside them: pruning by
    step deleted its checkpoints below the old run's newest as they were written, and a resume
    or eofm-export took the old run's newest."""
    from eofm.pretrain.checkpoint import DS_MARKER, refuse_fresh_run_over_checkpoints
    from eofm.pretrain.config import load_config

    out, data = tmp_path / "run", tmp_path / "never_built"
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in (4, 6):
        torch.save({"step": step}, ckpts / f"step_{step:09d}.pt")
    (ckpts / "step_000000002").mkdir()  # a DeepSpeed one
    (ckpts / "step_000000002" / DS_MARKER).write_text("2\n")
    before = sorted(p.name for p in ckpts.iterdir())
    status = main(["--config", str(config), f"runtime.out_dir={out}", "runtime.resume=false",
                   f"data.path={data}", f"data.build_from={tmp_path / 'raw'}"])
    err = capsys.readouterr().err
    assert status == 2, err[-3000:]
    assert (f"runtime.resume: false starts a new run from step 0, but {ckpts} holds 3 "
            f"checkpoint(s) of an earlier run (step_000000006.pt, step_000000004.pt, "
            f"step_000000002; newest first)") in err
    assert all(way in err for way in ("another runtime.out_dir", "move or delete",
                                      "runtime.resume=true"))
    assert sorted(p.name for p in ckpts.iterdir()) == before
    assert not data.exists() and not (out / "config.yaml").exists()
    empty = load_config(str(config), [f"runtime.out_dir={tmp_path / 'new'}",
                                      "runtime.resume=false"])
    refuse_fresh_run_over_checkpoints(empty)  # nothing there: a new run may start


def test_a_stop_during_the_dataset_build_cuts_it_short_and_requeues(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """SIGUSR1 (SLURM's warning) while data.build_from builds the dataset: the build is cut
    short (it goes on from its finished parts when requeued), the job exits with the requeue
    status and marker, nothing trained or saved; the program's own handler is back afterwards
    and never saw the signal. Before, the handler came after the build: SIGUSR1's default
    action killed the job (status 138, no marker, no requeue)."""
    import eofm.data_shards.cli as shard_cli

    finished: list[list[str]] = []

    def slow_build(argv: list[str]) -> int:
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a build far longer than the grace period
            time.sleep(0.01)
        finished.append(argv)
        return 1

    monkeypatch.setattr(shard_cli, "main", slow_build)
    seen: list[int] = []

    def programs_own(signum: int, frame: object) -> None:  # also keeps old code from dying
        seen.append(signum)

    out = tmp_path / "run"
    previous = signal.signal(signal.SIGUSR1, programs_own)
    try:
        status = main(["--config", str(config), f"runtime.out_dir={out}",
                       f"data.path={tmp_path / 'ds'}", f"data.build_from={tmp_path / 'raw'}"])
        assert signal.getsignal(signal.SIGUSR1) is programs_own
    finally:
        signal.signal(signal.SIGUSR1, previous)
    err = caplog.text
    assert status == REQUEUE_EXIT_CODE, err[-3000:]
    assert not finished and not seen  # finished: the build ran to its end
    assert (out / "REQUEUE").is_file() and not (out / "checkpoints").exists()
    assert "stop requested during the data.build_from build" in err


def test_a_stop_while_the_job_starts_ends_it_before_the_first_step(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """SIGTERM while the job loads its checkpoint (after the model is built): caught, and the
    job stops before its first step with the requeue status and marker; nothing new to
    checkpoint, so nothing written. Before, the handler came after the load: the default
    action killed the job without requeue (here the test's own handler takes it instead, and
    the run trained to the end)."""
    from eofm.pretrain.trainer import Trainer

    resume = Trainer.resume

    def signalled_while_resuming(self: Trainer) -> None:
        resume(self)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "resume", signalled_while_resuming)
    seen: list[int] = []
    out = tmp_path / "run"
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        status = main(["--config", str(config), f"runtime.out_dir={out}", "schedule.steps=3"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = caplog.text
    assert status == REQUEUE_EXIT_CODE, err[-3000:]
    assert not seen and (out / "REQUEUE").is_file()
    assert "stop requested before the first step (received SIGTERM" in err
    assert not (out / "checkpoints").exists()
    assert not (out / "metrics.jsonl").read_text().strip()  # not a step trained


def test_the_time_budget_is_checked_every_step_with_the_stop_flag(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """runtime.max_minutes spent: the run stops after the step that spent it, whether it logs
    or not (here it logs only at the end), and checkpoints as a finished run does. The budget
    and the preemption flag share one all-reduce per step (which one asked is reduced once
    more, only on the step that stops). Before, the budget was looked at on logging steps
    only: this run went on to its last step."""
    from eofm.pretrain import distributed
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    reduced: list[bool] = []
    any_across_ranks = distributed.any_across_ranks

    def counted(flag: bool, device: object = None) -> bool:
        reduced.append(bool(flag))
        return any_across_ranks(flag, device)

    monkeypatch.setattr(distributed, "any_across_ranks", counted)
    out = tmp_path / "run"
    t = Trainer(load_config(str(config), [f"runtime.out_dir={out}", "schedule.steps=6",
                                          "logging.log_every=100", "runtime.max_minutes=1e-9",
                                          "logging.sample_keys=false"]))
    assert t.fit() == 0 and t.step == 1
    assert [p.name for p in (out / "checkpoints").glob("step_*.pt")] == ["step_000000001.pt"]
    # before the first step; step 1: the budget or a signal (one reduce); which of the two
    assert reduced == [False, True, False]


def test_the_time_budget_counts_over_every_launch(config: Path, tmp_path: Path,
                                                 caplog) -> None:
    """runtime.max_minutes is the run's training time over every launch: a rerun of a run
    that spent it trains nothing and rewrites nothing (it used to get a fresh budget each
    launch, so rerunning a recipe doubled its pretraining); a finished run run again does
    not rewrite its final checkpoint either."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "run"
    args = [f"runtime.out_dir={out}", "schedule.steps=4", "logging.log_every=1",
            "runtime.max_minutes=1e-9", "logging.sample_keys=false"]
    t = Trainer(load_config(str(config), args))
    assert t.fit() == 0 and t.step == 1
    ckpt = out / "checkpoints" / "step_000000001.pt"
    before = ckpt.read_bytes()
    again = Trainer(load_config(str(config), args))
    assert again.fit() == 0 and again.step == 1
    assert ckpt.read_bytes() == before
    assert [p.name for p in (out / "checkpoints").glob("step_*.pt")] == [ckpt.name]
    more = Trainer(load_config(str(config), [*args[:3], "runtime.max_minutes=null",
                                             "logging.sample_keys=false"]))
    assert more.fit() == 0 and more.step == 4
    final = out / "checkpoints" / "step_000000004.pt"
    done = final.read_bytes()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eofm.pretrain.trainer"):
        assert Trainer(load_config(str(config), args[:3])).fit() == 0
    assert final.read_bytes() == done
    assert "the run is finished (step 4 of 4): nothing to train" in caplog.text


def test_the_last_step_is_checkpointed_once(config: Path, tmp_path: Path,
                                            checkpoint_saves) -> None:
    """steps a multiple of ckpt_every: the loop's checkpoint and the finished run's were both
    written, the whole model and optimiser twice over."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    saves = checkpoint_saves
    assert Trainer(load_config(str(config), [f"runtime.out_dir={tmp_path / 'run'}",
                                             "schedule.steps=4", "schedule.warmup_steps=1",
                                             "runtime.ckpt_every=2"])).fit() == 0
    assert saves == {2: 1, 4: 1}


@pytest.mark.parametrize("batch,accum", [(32, 2), (40, 4)])
def test_epochs_count_every_micro_batch_under_accumulation(config: Path, tmp_path: Path,
                                                           batch: int, accum: int) -> None:
    """schedule.epochs with optim.accum_steps: steps per epoch were floored (15 micro-batches
    at accum 4: 3 steps, so epochs=10 trained 8 epochs); the leftover carries over."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    t = Trainer(load_config(str(config), [f"runtime.out_dir={tmp_path / 'run'}",
                                          "schedule.steps=null", "schedule.epochs=3.5",
                                          "schedule.warmup_steps=1",
                                          f"optim.accum_steps={accum}",
                                          f"data.batch_size={batch}"]))
    micro = len(t.loader)  # 144 tiles: 9 micro-batches of 16, 14 of 10
    assert micro % accum, "the case must leave micro-batches over"
    assert t.total == math.ceil(3.5 * micro / accum), (micro, accum)  # every micro-batch


def test_a_resumed_run_leaves_one_record_per_step(config: Path, tmp_path: Path) -> None:
    """Steps lost in a crash (after the newest checkpoint) are run again: their first records
    were kept beside the new ones, so a reader counting lines counted them twice."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "run"
    args = [f"runtime.out_dir={out}", "schedule.steps=6", "runtime.ckpt_every=3",
            "logging.sample_keys=true"]
    assert Trainer(load_config(str(config), args)).fit() == 0
    (out / "checkpoints" / "step_000000006.pt").unlink()  # as if it crashed before writing it
    assert Trainer(load_config(str(config), args)).fit() == 0
    for name in ("metrics.jsonl", "samples.rank0.jsonl"):
        steps = [json.loads(line).get("step") for line in (out / name).read_text().splitlines()]
        steps = [s for s in steps if s is not None]
        assert steps == sorted(set(steps)) and steps[-1] == 6, (name, steps)
    for ckpt in (out / "checkpoints").glob("step_*"):  # as if it died before its first one
        ckpt.unlink()
    assert Trainer(load_config(str(config), args)).fit() == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_resumed_run_purges_the_tensorboard_events_it_runs_again(config: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """TensorBoard kept the killed launch's events of the steps after its newest checkpoint
    beside the rerun's (two values per step); the resumed writer now purges from its first
    step. tensorboard itself is optional: a recording SummaryWriter stands in for it."""
    import types

    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    writers: list[dict] = []

    class Writer:
        def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
            self.rec = {"purge_step": purge_step, "steps": []}
            writers.append(self.rec)

        def add_scalar(self, key: str, value: float, step: int) -> None:
            if key == "loss":
                self.rec["steps"].append(step)

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=Writer))
    out = tmp_path / "run"
    args = [f"runtime.out_dir={out}", "schedule.steps=6", "runtime.ckpt_every=3",
            "logging.tensorboard=true", "logging.log_every=1"]
    assert Trainer(load_config(str(config), args)).fit() == 0
    (out / "checkpoints" / "step_000000006.pt").unlink()  # as if it crashed before writing it
    assert Trainer(load_config(str(config), args)).fit() == 0
    assert [w["purge_step"] for w in writers] == [None, 4]
    assert writers[1]["steps"] == [4, 5, 6]


def test_a_run_stopped_by_its_time_budget_records_and_pictures_its_last_step(
        config: Path, tmp_path: Path) -> None:
    """max_minutes stopped the run between log and preview steps: its last loss, elapsed_s
    and pictures were those of an earlier step (or none at all), and so was the export's card
    picture; a finished run's last step is always recorded and pictured."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    out = tmp_path / "run"
    t = Trainer(load_config(str(config), [f"runtime.out_dir={out}", "schedule.steps=6",
                                          "logging.log_every=4", "logging.preview_every=4",
                                          "runtime.max_minutes=1e-9"]))
    assert t.fit() == 0 and t.step == 1
    steps = [json.loads(x).get("step") for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]
    assert list((out / "previews").glob("*000001*")), sorted((out / "previews").iterdir())


def test_a_budget_spent_on_the_last_step_finishes_the_run(config: Path, tmp_path: Path,
                                                          monkeypatch, caplog) -> None:
    """The clock ran out on the last step: the run was told to raise max_minutes to go on (it
    was finished) and its pictures were drawn twice (a second full-weight gather)."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.preview import ReconstructionPreview
    from eofm.pretrain.trainer import Trainer

    drawn: list[int] = []
    write = ReconstructionPreview.write

    def counting(self, objective, step):
        drawn.append(step)
        return write(self, objective, step)

    monkeypatch.setattr(ReconstructionPreview, "write", counting)
    t = Trainer(load_config(str(config), [f"runtime.out_dir={tmp_path / 'run'}",
                                          "schedule.steps=1", "schedule.warmup_steps=0",
                                          "logging.preview_every=4", "runtime.max_minutes=1e-9"]))
    assert t.fit() == 0 and t.step == 1
    assert drawn == [1] and "raise runtime.max_minutes" not in caplog.text
