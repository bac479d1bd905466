"""Reproducibility of eofm-finetune and eofm-probe on the CPU.

eofm-finetune: a run stopped by SIGUSR1 and resumed equals an uninterrupted one bit for bit
(every logged loss, weights, optimiser, RNG, held-out metrics and the exported model folder),
with every random draw of fine-tuning on: flips/turns, drop path and head dropout (the last two
from the global torch RNG, which checkpoints save). test_finetune.py checks only that a resume
continues at the right step.

eofm-probe: the same command twice gives the same report.json (but its timings), report.md and
confusion matrix, whatever the global RNGs hold (random-init encoders, folds and validation
splits are drawn from seeded generators of their own).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.data_shards.build import BuildConfig, build
from eofm.finetune.datasets import open_labelled
from eofm.finetune.finetune import Finetuner
from eofm.finetune.finetune_config import load_config
from eofm.finetune.probe_cli import main as probe_main
from eofm.models import InputContract, create_model, save_pretrained
from eofm.models.hub import EXPORT_FILES
from eofm.pretrain import distributed as dist
from eofm.pretrain.checkpoint import CheckpointManager
from eofm.pretrain.preemption import REQUEUE_EXIT_CODE

STEPS, STOP_AT = 6, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _export(bands: list[str], stats: dict, sensor: str, size: int, out: Path) -> Path:
    """A test-size ViT export whose contract holds the data's statistics."""
    contract = InputContract(sensors=(sensor,), bands=tuple(bands), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(size, size),
                             patch_size=8)
    torch.manual_seed(0)
    return save_pretrained(create_model("vit_test_patch8", bands=bands, img_size=size,
                                        contract=contract), out)


@pytest.fixture(scope="module")
def bigearthnet(sample_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(the bundled BigEarthNet patches as shards, a matching tiny export)."""
    root = tmp_path_factory.mktemp("ft_repro")
    build(BuildConfig(str(sample_data / "bigearthnet"), str(root / "ben"), progress=False))
    s2 = open_labelled(root / "ben", modality="s2", progress=False)
    stats = {b: {k: s2.stats[b][k] for k in ("mean", "std")} for b in s2.bands}
    return root / "ben", _export(s2.bands, stats, s2.sensor, 32, root / "enc")


def _finetuner(data: Path, encoder: Path, out: Path, *extra: str) -> Finetuner:
    cfg = load_config(None, [f"schedule.steps={STEPS}", "schedule.warmup_fraction=0",
                             "data.batch_size=2", "data.test_fraction=0.34", "data.augment=true",
                             "encoder.drop_path=0.2", "task.dropout=0.3", "runtime.ckpt_every=0",
                             "logging.log_every=1", "logging.progress=false", *extra],
                      flags={"encoder.path": str(encoder), "data.path": str(data),
                             "task.kind": "multilabel", "runtime.out_dir": str(out)})
    return Finetuner(cfg)


def _fit(data: Path, encoder: Path, out: Path) -> int:
    try:
        return _finetuner(data, encoder, out).fit()
    finally:
        dist.teardown()


def _final(out: Path) -> dict:
    path = CheckpointManager(out / "checkpoints", rank=0).latest()
    assert path is not None, out
    return CheckpointManager.load(path)


def test_a_stopped_and_resumed_fine_tune_equals_an_uninterrupted_one(
        bigearthnet: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, encoder = bigearthnet
    assert _fit(data, encoder, tmp_path / "ref") == 0
    with monkeypatch.context() as m:
        batch = Finetuner.batch

        def signalling(self: Finetuner, *args, gen=None, **kw):
            if gen is not None and self.step == STOP_AT - 1:  # during step STOP_AT
                os.kill(os.getpid(), signal.SIGUSR1)
            return batch(self, *args, gen=gen, **kw)

        m.setattr(Finetuner, "batch", signalling)
        assert _fit(data, encoder, tmp_path / "split") == REQUEUE_EXIT_CODE
    assert _final(tmp_path / "split")["step"] == STOP_AT
    assert _fit(data, encoder, tmp_path / "split") == 0

    def losses(name: str) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in map(
            json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}

    ref = losses("ref")
    assert sorted(ref) == list(range(1, STEPS + 1)) and losses("split") == ref
    a, b = _final(tmp_path / "ref"), _final(tmp_path / "split")
    assert a["step"] == b["step"] == STEPS
    for part in ("model", "optimizer"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys()
        for k, v in flat_a.items():
            assert torch.equal(v, flat_b[k]), f"{part}: {k}"
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    results = [json.loads((tmp_path / n / "results.json").read_text())["metrics"]
               for n in ("ref", "split")]
    assert results[0] == results[1]
    for name in EXPORT_FILES:
        assert ((tmp_path / "ref" / "model" / name).read_bytes()
                == (tmp_path / "split" / "model" / name).read_bytes()), name


def test_a_random_init_encoder_is_the_same_for_the_same_seed(
        bigearthnet: tuple[Path, Path], tmp_path: Path) -> None:
    """encoder.random_init=true drew the random encoder from torch's global RNG before the run
    seeded it: the baseline differed on every run of one config (and could differ across
    ranks). It is drawn from data.seed now, whatever the global RNG holds, and another seed
    gives another encoder; load_encoder leaves its caller's RNG state as it was."""
    from eofm.finetune.encoder import load_encoder

    data, encoder = bigearthnet

    def weights(before: int, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(before)  # whatever the caller or an earlier run left in the RNG
        try:
            ft = _finetuner(data, encoder, tmp_path / f"{before}_{seed}",
                            "encoder.random_init=true", f"data.seed={seed}")
            return {k: v.detach().clone() for k, v in ft.strategy.module.encoder.state_dict()
                    .items()}
        finally:
            dist.teardown()

    a, b, other = weights(1, 0), weights(2, 0), weights(1, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    load_encoder(str(encoder), drop_path=0.0, random_init=True, seed=0)
    assert torch.equal(torch.get_rng_state(), state)


def _tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested state dict by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = (tree.items() if isinstance(tree, dict) else enumerate(tree)
             if isinstance(tree, (list, tuple)) else ())
    return {k: v for key, sub in items for k, v in _tensors(sub, f"{prefix}.{key}").items()}


def test_probing_twice_gives_the_same_report(tmp_path: Path, capsys, eurosat_folder) -> None:
    src = eurosat_folder(tmp_path / "eurosat", boost=1500)
    data = open_labelled(src, progress=False)
    bands = [b for b in data.bands if b != "B10"]
    stats = {b: {k: data.stats[b][k] for k in ("mean", "std")} for b in bands}
    enc = _export(bands, stats, data.sensor, 16, tmp_path / "enc")
    reports = []
    for i, ambient in enumerate((0, 12345)):  # other global RNG states: nothing reads them
        torch.manual_seed(ambient)
        np.random.seed(ambient)
        out = tmp_path / f"report{i}"
        assert probe_main(["--encoder", str(enc), "--data", str(src), "--out", str(out),
                           "--folds", "3", "--random-seeds", "2", "--quiet"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report.pop("seconds")  # timings: the one part that may differ
        reports.append((report, (out / "report.md").read_text(),
                        (out / "confusion.png").read_bytes()))
    capsys.readouterr()
    assert reports[0][0] == reports[1][0]
    assert reports[0][1:] == reports[1][1:]


def test_a_stop_is_taken_at_the_next_step_not_the_next_log_step(
        bigearthnet: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGUSR1 during step 2 of a run that logs every 100 steps checkpoints at step 2: the
    grace period a scheduler gives (SLURM: --signal=B:USR1@120) must not wait for a log step."""
    data, encoder = bigearthnet
    batch = Finetuner.batch

    def signalling(self: Finetuner, *args, gen=None, **kw):
        if gen is not None and self.step == 1:  # during step 2
            os.kill(os.getpid(), signal.SIGUSR1)
        return batch(self, *args, gen=gen, **kw)

    monkeypatch.setattr(Finetuner, "batch", signalling)
    cfg = load_config(None, [f"schedule.steps={STEPS}", "data.batch_size=2",
                             "data.test_fraction=0.34", "runtime.ckpt_every=0",
                             "logging.log_every=100", "logging.progress=false"],
                      flags={"encoder.path": str(encoder), "data.path": str(data),
                             "task.kind": "multilabel", "runtime.out_dir": str(tmp_path)})
    try:
        assert Finetuner(cfg).fit() == REQUEUE_EXIT_CODE
    finally:
        dist.teardown()
    assert _final(tmp_path)["step"] == 2


def test_resuming_on_another_world_size_says_the_random_draws_restart(
        bigearthnet: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint saved by 2 ranks, resumed by 1: the data order goes on (it is global), the
    saved RNG states fit no rank, and the log says so instead of skipping them in silence."""
    data, encoder = bigearthnet
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        batch = Finetuner.batch

        def signalling(self: Finetuner, *args, gen=None, **kw):
            if gen is not None and self.step == STOP_AT - 1:
                os.kill(os.getpid(), signal.SIGUSR1)
            return batch(self, *args, gen=gen, **kw)

        m.setattr(Finetuner, "batch", signalling)
        assert _fit(data, encoder, out) == REQUEUE_EXIT_CODE
    path = CheckpointManager(out / "checkpoints", rank=0).latest()
    state = CheckpointManager.load(path)
    state["rng"] = state["rng"] * 2  # as two ranks would have saved it
    torch.save(state, path)
    caplog.clear()
    assert _fit(data, encoder, out) == 0
    said = [r.getMessage() for r in caplog.records if "saved by 2 ranks" in r.getMessage()]
    assert len(said) == 1 and "resumed on 1" in said[0], caplog.text[-3000:]
