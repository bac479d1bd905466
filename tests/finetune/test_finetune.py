"""eofm-finetune: dense heads learn on real pixels, the CLI runs end to end, the exported model
reloads (load_finetuned) and predicts as the run did, layer-wise lr decay, freezing and the
fc-norm pooling do what they say, bad configurations and data are refused by name."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from huggingface_hub import ModelCard

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import LayoutOptions
from eofm.data_shards.sensors import get_sensor
from eofm.finetune import load_finetuned
from eofm.finetune.datasets import open_labelled
from eofm.finetune.features import apply_contract
from eofm.finetune.finetune import main
from eofm.finetune.finetune_config import load_config
from eofm.finetune.finetuned import TASK_KEY, export_finetuned, task_record
from eofm.finetune.finetuner import Finetuner
from eofm.finetune.probe import class_metrics
from eofm.finetune.tasks import (
    IGNORE_INDEX,
    DenseData,
    Evaluator,
    FinetuneModel,
    apply_freeze,
    layer_id,
    lrd_param_groups,
    open_dense,
    split_indices,
    task_loss,
)
from eofm.models import InputContract, create_model, from_pretrained, save_pretrained
from eofm.pretrain import distributed as dist
from eofm.pretrain.config import ConfigError
from eofm.pretrain.optim import set_lr

ROOT = Path(__file__).resolve().parents[2]
TILE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _contract(bands: list[str], stats: dict, sensor: str) -> InputContract:
    """A full contract for 32 px tiles at 10 m."""
    return InputContract(sensors=(sensor,), bands=tuple(bands), gsd=10.0, nodata=0.0,
                         normalisation="meanstd", stats=stats, input_size=(TILE, TILE),
                         patch_size=8)


def _encoder(bands: list[str], stats: dict, sensor: str, **kw) -> torch.nn.Module:
    """A test-size ViT tied to ``bands`` and its contract."""
    torch.manual_seed(0)
    return create_model("vit_test_patch8", bands=bands, img_size=TILE,
                        contract=_contract(bands, stats, sensor), **kw)


@pytest.fixture(scope="module")
def dense(sample_data: Path, tmp_path_factory) -> dict[str, Path]:
    """Real BigEarthNet S2 patches as multi-band GeoTIFFs with two per-pixel targets built
    through `eofm-shard build --seg-dir` into 32 px tiles: an NDVI class map (0: < 0.3,
    1: 0.3-0.6, 2: > 0.6; border 255 = unlabelled) and NDVI itself (border NaN); plus an
    export of a test-size encoder whose contract holds the data's statistics."""
    root = tmp_path_factory.mktemp("dense")
    build(BuildConfig(str(sample_data / "bigearthnet"), str(root / "ben"), progress=False))
    s2 = open_labelled(root / "ben", modality="s2", progress=False)
    for d in ("src", "seg", "ndvi"):
        (root / d).mkdir()
    for i, key in enumerate(s2.keys):
        x = s2.pixels(i)
        red, nir = (x[s2.bands.index(b)].astype(np.float32) for b in ("B04", "B08"))
        ndvi = (nir - red) / np.maximum(nir + red, 1.0)
        classes = np.digitize(ndvi, [0.3, 0.6]).astype(np.uint8)
        classes[:2], ndvi[:2] = 255, np.nan
        tifffile.imwrite(root / "src" / f"{key}.tif", np.moveaxis(x, 0, -1),
                         photometric="minisblack", planarconfig="contig")
        tifffile.imwrite(root / "seg" / f"{key}.tif", classes)
        tifffile.imwrite(root / "ndvi" / f"{key}.tif", ndvi.astype(np.float32))
    out = {}
    for name, seg in (("seg", "seg"), ("reg", "ndvi")):
        opts = LayoutOptions(sensor=s2.sensor, file_bands=s2.bands, seg_dir=root / seg)
        # apart from its --seg-dir: the seg dataset went into the seg rasters' own folder
        built = root / f"{name}_ds"
        build(BuildConfig(str(root / "src"), str(built), layout="multiband",
                          layout_options=opts, ingest=IngestOptions(tile=TILE), progress=False))
        out[name] = built
    stats = {b: {k: s2.stats[b][k] for k in ("mean", "std")} for b in s2.bands}
    out["encoder"] = save_pretrained(_encoder(s2.bands, stats, s2.sensor), root / "encoder")
    return out


def _finetuner(dense: dict[str, Path], task: str, out: Path, *extra: str) -> Finetuner:
    """A Finetuner on the dense sample; a short full fine-tune that sees every tile often."""
    data = dense["seg" if task == "segmentation" else "reg"]
    cfg = load_config(None, ["schedule.steps=20", "schedule.warmup_fraction=0",
                             "optim.base_lr=2e-3", "optim.scale_lr=false", "data.batch_size=8",
                             "task.decoder_channels=32",
                             "data.augment=false", "encoder.drop_path=0", "logging.log_every=1",
                             "logging.progress=false", *extra],
                      flags={"encoder.path": str(dense["encoder"]), "data.path": str(data),
                             "task.kind": task, "runtime.out_dir": str(out)})
    return Finetuner(cfg)


def _train_loss(ft: Finetuner) -> float:
    """Loss over the whole training split in eval mode (no dropout): a noise-free yardstick."""
    model = ft.strategy.module.eval()
    with torch.no_grad():
        x, y, valid = ft.batch(ft.data, ft.pre, ft.train_idx)
        loss = float(task_loss(ft.cfg.task.kind, model(x, tuple(y.shape[-2:])), y, valid))
    model.train()
    return loss


def test_dense_data_from_seg_dir_build(dense) -> None:
    seg, reg = open_dense(dense["seg"]), open_dense(dense["reg"])
    assert len(seg) == len(reg) == 6 * 9 and seg.size == (TILE, TILE)
    assert seg.bands == get_sensor("s2_l2a").band_names and seg.sensor == "s2_l2a"
    x, y = seg[0]
    assert x.shape == (12, TILE, TILE) and y.shape == (TILE, TILE) and y.dtype == np.uint8
    assert set(np.unique(y)) <= {0, 1, 2, 255}
    assert reg.target(0).dtype == np.float32 and np.isnan(reg.target(0)[:2]).all()
    with pytest.raises(ValueError, match="labels kind 'segmentation'"):
        open_dense(dense["seg"].parent / "ben")


@pytest.mark.parametrize("task", ["segmentation", "regression"])
def test_dense_heads_train_and_reduce_the_loss(dense, tmp_path: Path, task: str) -> None:
    extra = ["task.ignore_value=255"] if task == "segmentation" else []
    ft = _finetuner(dense, task, tmp_path / task, *extra)
    try:
        before = _train_loss(ft)
        assert ft.fit() == 0
        after = _train_loss(ft)
    finally:
        dist.teardown()
    assert np.isfinite(before) and after < 0.75 * before, (before, after)
    records = [json.loads(line) for line in (tmp_path / task / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 20 and all(np.isfinite(losses))
    results = json.loads((tmp_path / task / "results.json").read_text())
    m = results["metrics"]
    assert results["eval_precision"] == "fp32"
    assert results["data"]["kind"] == "dense" and results["data"]["samples"] == len(ft.data)
    assert results["data"]["source"] == str(dense["seg" if task == "segmentation" else "reg"])
    labelled = (TILE - 2) * TILE  # the border rows of the top tiles carry no label
    if task == "segmentation":
        assert ft.num_outputs == 3 and 0 <= m["miou"] <= 1
        assert m["pixels"] < results["test_samples"] * TILE * TILE
        assert m["pixels"] >= results["test_samples"] * labelled - 2 * TILE * 6
        from eofm.data_shards.png import read_png
        from eofm.finetune.report import confusion_png

        drawn = confusion_png(m["confusion"], tmp_path / "c.png", results["classes"])
        assert read_png(tmp_path / task / "confusion.png").shape[:2] == drawn["size"]
        assert drawn["labels"] == ["0", "1", "2"]  # segmentation data names no classes
    else:
        assert not (tmp_path / task / "confusion.png").exists()
        assert m["rmse"] > 0 and np.isfinite(m["rmse"]) and m["r2"] is not None
        assert 0 < ft.target_norm[1] < 1  # NDVI spread: targets were standardised
    assert (tmp_path / task / "checkpoints" / "step_000000020.pt").is_file()
    _check_reload(ft, tmp_path / task / "model", results)
    from eofm.data_shards.png import read_png

    sheet = read_png(tmp_path / task / "predictions.png")  # input, target, prediction rows
    n, cell = min(8, results["test_samples"]), max(64, TILE) + 2
    assert sheet.shape == (2 + 3 * cell + 2 * 4, 2 + n * cell, 3)


@pytest.mark.compiles
def test_compiled_fine_tuning_matches_eager(dense, tmp_path: Path) -> None:
    """runtime.compile: the encoder's blocks compiled in place; the same losses and weights."""
    runs = {}
    for name, extra in (("eager", ()), ("compiled", ("runtime.compile=true",))):
        ft = _finetuner(dense, "regression", tmp_path / name, "schedule.steps=2",
                        "data.eval_batch_size=16", *extra)
        try:
            assert ft.fit() == 0
        finally:
            dist.teardown()
        runs[name] = ft
    blocks = runs["compiled"].encoder.blocks
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
    records = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").open()] for n in runs}
    losses = {n: [r["loss"] for r in recs if "loss" in r] for n, recs in records.items()}
    assert len(losses["eager"]) == 2
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    # the compiled encoder trains to the same weights (the head's conv biases ahead of a
    # BatchNorm have zero gradient in exact arithmetic, so AdamW turns rounding noise there
    # into lr-sized steps: they are left out)
    a, b = (runs[n].encoder.state_dict() for n in ("eager", "compiled"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=5e-5, msg=k)


def test_resume_continues_from_the_checkpoint(dense, tmp_path: Path) -> None:
    out = tmp_path / "run"
    for steps, resumed_at in ((1, 0), (2, 1)):  # the second run extends the first
        ft = _finetuner(dense, "regression", out, f"schedule.steps={steps}",
                        "data.eval_batch_size=16")
        try:
            ft.resume()
            assert ft.step == resumed_at
            assert ft.fit() == 0 and ft.step == steps
        finally:
            dist.teardown()
    steps = [json.loads(line).get("step") for line in (out / "metrics.jsonl").open()]
    assert steps == [1, 1, 2, 2]  # each run logs its steps, then its test record
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_000000001.pt", "step_000000002.pt"]


def test_eurosat_classification_through_the_cli(shared_data: Path, tmp_path: Path, capsys,
                                               monkeypatch) -> None:
    import eofm.finetune.finetune as ft_module

    runs = []  # the run's Finetuner: its model and data, for the reload check

    class Kept(Finetuner):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            runs.append(self)

    monkeypatch.setattr(ft_module, "Finetuner", Kept)
    bands = get_sensor("s2_l1c").band_names
    stats = {b: {"mean": 1500.0, "std": 1000.0} for b in bands}
    enc = save_pretrained(_encoder(bands, stats, "s2_l1c"), tmp_path / "encoder")
    out = tmp_path / "run"
    rc = main(["--encoder", str(enc), "--data", str(shared_data / "eurosat_ms"),
               "--task", "classification", "--out", str(out), "--config",
               str(ROOT / "launch" / "configs" / "finetune_eurosat_cpu.yaml"),
               "schedule.steps=3", "data.batch_size=16", "logging.progress=false",
               "encoder.freeze=last_n", "encoder.last_n=1"])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "classification" and results["steps"] == 3
    assert results["test_samples"] + results["train_samples"] == 202
    assert 35 <= results["test_samples"] <= 45 and len(results["classes"]) == 10
    assert 0 <= results["metrics"]["accuracy"] <= 1
    assert any("resized (64, 64) -> (32, 32)" in f for f in results["preprocess"]["fixed"])
    # results.json says what was read, with the Sentinel-2 offset decision its pixels got
    d = results["data"]
    assert d["samples"] == 202 and d["bands"] == list(bands) and d["kind"] == "class"
    assert d["s2_offset"]["mode"] == "auto" and d["s2_offset"]["groups"]
    assert "test_data" not in results  # held out of data.path, no data.test_path
    assert "accuracy" in capsys.readouterr().out
    exported = json.loads((out / "model" / "config.json").read_text())
    assert exported["extra_state"] == ["head"]
    assert from_pretrained(out / "model").contract.bands == tuple(bands)
    # the export says the pool fine-tuning used and records the task
    assert results["config"]["encoder"]["pool"] == "avg" == exported["global_pool"]
    record = exported[TASK_KEY]
    assert record["kind"] == "classification" and record["classes"] == results["classes"]
    assert record["pool"] == "avg" and record["pool_prenorm"] is True
    assert record["head"] == {"type": "LinearHead", "in_dim": 64, "num_outputs": 10,
                              "norm": "ln", "dropout": 0.0}
    assert record["evaluation"]["accuracy"] == results["metrics"]["accuracy"]
    # reloaded encoder + head on the held-out split, preprocessed through its contract, give
    # the run's logits and the metrics it recorded
    model, run = load_finetuned(out / "model"), runs[0]
    data = run.data
    labels = np.asarray(data.labels)
    _, test = split_indices(len(data), 0.2, 0, labels)
    x = apply_contract(data, model.contract)(np.stack([data.pixels(i) for i in test]))
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, run.strategy.module.eval()(x))
    pred = logits.argmax(1).numpy()
    again = class_metrics(labels[test], pred, len(record["classes"]))
    assert again["confusion"] == results["metrics"]["confusion"]
    assert again["accuracy"] == results["metrics"]["accuracy"]
    card = (out / "model" / "README.md").read_text()
    assert "\npipeline_tag: image-classification\n" in card and "## Fine-tuned task" in card
    assert f"| accuracy | {results['metrics']['accuracy']:.6g} |" in card
    assert "| per-class recall / AnnualCrop |" in card and "\nbase_model:" not in card


def test_multilabel_bigearthnet_frozen(dense, tmp_path: Path, capsys, caplog) -> None:
    out = tmp_path / "ml"
    rc = main(["--encoder", str(dense["encoder"]), "--data", str(dense["seg"].parent / "ben"),
               "--task", "multilabel", "--out", str(out), "schedule.steps=2",
               "data.batch_size=2", "data.test_fraction=0.34", "encoder.freeze=frozen",
               "logging.progress=false"])
    err = capsys.readouterr().err
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["test_samples"] == 2 and 0 <= results["metrics"]["micro_map"] <= 1
    assert "macro_map" in results["metrics"] and results["freeze"] == "frozen"
    assert any("resized (120, 120) -> (32, 32)" in f for f in results["preprocess"]["fixed"])
    # said at the start, as eofm-probe does: what was fixed and every note
    said = caplog.text  # the log (on stderr from the command line)
    assert "fixed: resized (120, 120) -> (32, 32) (bilinear)" in said
    assert results["preprocess"]["notes"] and all(
        f"note: {n}" in said for n in results["preprocess"]["notes"])


def test_a_rerun_or_a_fresh_run_over_the_checkpoints(dense, tmp_path: Path, capsys) -> None:
    """A finished run run again is evaluated again but its final checkpoint is not rewritten;
    runtime.resume=false over its checkpoints is refused (the two runs' would mix), as in
    pretraining; each rank draws dropout from a stream of its own once the model is built."""
    from eofm.pretrain.determinism import rank_seed

    out = tmp_path / "again"
    args = ["--encoder", str(dense["encoder"]), "--data", str(dense["seg"].parent / "ben"),
            "--task", "multilabel", "--out", str(out), "schedule.steps=2",
            "data.batch_size=2", "data.test_fraction=0.34", "encoder.freeze=frozen",
            "logging.progress=false"]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    final = out / "checkpoints" / "step_000000002.pt"
    saved = final.read_bytes()
    assert main(args) == 0 and final.read_bytes() == saved
    capsys.readouterr()
    assert main([*args, "runtime.resume=false"]) == 2
    assert "runtime.resume: false starts a new run from step 0, but" in capsys.readouterr().err
    cfg = load_config(None, ["encoder.path=" + str(dense["encoder"]), "task.kind=multilabel",
                             "data.path=" + str(dense["seg"].parent / "ben"),
                             f"runtime.out_dir={tmp_path / 'seeded'}", "data.batch_size=2",
                             "data.test_fraction=0.34", "logging.progress=false"])
    Finetuner(cfg)
    expected = torch.Generator().manual_seed(rank_seed(cfg.data.seed, 0))
    assert torch.equal(torch.rand(4), torch.rand(4, generator=expected))


def test_a_resume_with_another_input_contract_is_refused(dense, tmp_path: Path, capsys,
                                                          caplog) -> None:
    """The checkpoint's weights were trained on data preprocessed by its encoder's contract: a
    resume with an export of another contract (here other statistics for one band) would
    normalise the rest of the run otherwise and export only the second contract, so it is
    refused, naming the field; a moved copy of the same export resumes, and so does an older
    checkpoint that stored no contract (with a warning that it could not be checked)."""
    import shutil

    from eofm.finetune.resume_checks import contract_problem

    ben, out = dense["seg"].parent / "ben", tmp_path / "run"

    def args(encoder: Path, steps: int) -> list[str]:
        return ["--encoder", str(encoder), "--data", str(ben), "--task", "multilabel", "--out",
                str(out), f"schedule.steps={steps}", "data.batch_size=2",
                "data.test_fraction=0.34", "encoder.freeze=frozen", "logging.progress=false"]

    assert main(args(dense["encoder"], 1)) == 0, capsys.readouterr().err[-2000:]
    restat = Path(shutil.copytree(dense["encoder"], tmp_path / "restat"))
    config = json.loads((restat / "config.json").read_text())
    band = config["eofm_contract"]["bands"][1]
    config["eofm_contract"]["stats"][band]["mean"] += 1000.0
    config["pretrained_cfg"]["mean"][1] += 1000.0
    (restat / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(args(restat, 2)) == 2
    err = capsys.readouterr().err
    assert ("encoder: the checkpoint" in err and "another input contract (fields stats;" in err
            and f"stats: {band} " in err and "resume with the encoder it was started from" in err
            and "encoder.path" in err), err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000000001.pt"]
    moved = Path(shutil.copytree(dense["encoder"], tmp_path / "moved"))
    assert main(args(moved, 2)) == 0, capsys.readouterr().err[-2000:]  # the same contract
    # the data field (where the statistics came from) is not compared; an older checkpoint
    # without a contract has nothing to compare with
    contract = json.loads((dense["encoder"] / "config.json").read_text())["eofm_contract"]
    assert contract_problem({**contract, "data": "elsewhere"}, contract, out) is None
    assert contract_problem(None, contract, out) is None
    ckpt = out / "checkpoints" / "step_000000002.pt"
    state = torch.load(ckpt, weights_only=True)
    client = state.get("client", state)
    assert client.pop("contract")["stats"] == contract["stats"]
    torch.save(state, ckpt)
    caplog.clear()
    with caplog.at_level("WARNING", logger="eofm.finetune.finetune"):
        assert main([*args(restat, 3)]) == 0, capsys.readouterr().err[-2000:]
    assert "predates storing the encoder's input contract" in caplog.text


def test_the_time_budget_counts_over_every_launch(dense, tmp_path: Path, capsys) -> None:
    """runtime.max_minutes is the run's training time over every launch, as in pretraining:
    a rerun of a run that spent it evaluates again without training a step."""
    out = tmp_path / "budget"
    args = ["--encoder", str(dense["encoder"]), "--data", str(dense["seg"].parent / "ben"),
            "--task", "multilabel", "--out", str(out), "schedule.steps=4",
            "data.batch_size=2", "data.test_fraction=0.34", "encoder.freeze=frozen",
            "logging.progress=false", "runtime.max_minutes=1e-9"]
    for _ in range(2):
        assert main(args) == 0, capsys.readouterr().err[-2000:]
        assert json.loads((out / "results.json").read_text())["steps"] == 1


def test_a_run_the_time_budget_stopped_says_so(dense, tmp_path: Path, capsys) -> None:
    """A run runtime.max_minutes ended before its last planned step is marked as stopped
    early in results.json (steps, planned_steps, stopped_early), in config.json's task
    record, in the card and on the final line, at once and when run again with the budget
    spent; raised, the resumed run reaches its end and is not marked."""
    out = tmp_path / "budget"
    args = ["--encoder", str(dense["encoder"]), "--data", str(dense["seg"].parent / "ben"),
            "--task", "multilabel", "--out", str(out), "schedule.steps=4",
            "data.batch_size=2", "data.test_fraction=0.34", "encoder.freeze=frozen",
            "logging.progress=false"]
    said = "stopped by runtime.max_minutes at step 1 of 4"
    for _ in range(2):  # stopped, then run again with the budget spent by the first launch
        assert main([*args, "runtime.max_minutes=1e-9"]) == 0, capsys.readouterr().err[-2000:]
        results = json.loads((out / "results.json").read_text())
        assert (results["steps"], results["planned_steps"], results["stopped_early"]) == (
            1, 4, True)
        assert f"test samples ({said}) -> " in capsys.readouterr().out
        evaluation = json.loads((out / "model" / "config.json").read_text())[TASK_KEY][
            "evaluation"]
        assert evaluation["stopped_early"] is True and evaluation["training"] == said
        assert (evaluation["steps"], evaluation["planned_steps"]) == (1, 4)
        assert f"| Training | {said} |" in (out / "model" / "README.md").read_text()
    assert main([*args, "runtime.max_minutes=null"]) == 0, capsys.readouterr().err[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert (results["steps"], results["planned_steps"], results["stopped_early"]) == (4, 4, False)
    assert "stopped by" not in capsys.readouterr().out
    evaluation = json.loads((out / "model" / "config.json").read_text())[TASK_KEY]["evaluation"]
    assert evaluation["stopped_early"] is False and evaluation["training"] == "4 steps, as planned"
    assert "| Training | 4 steps, as planned |" in (out / "model" / "README.md").read_text()


# ---------------------------------------------------------------- layer decay and freezing
def _model(task: str = "classification", depth: int = 3, pool: str = "avg",
           **kw) -> FinetuneModel:
    """A small classification model over 3 bands (``kw``: more encoder arguments)."""
    bands = ["B02", "B03", "B04"]
    stats = {b: {"mean": 0.0, "std": 1.0} for b in bands}
    enc = _encoder(bands, stats, "s2_l2a", depth=depth, **kw)
    return FinetuneModel(enc, task, 4, pool=pool, encoder_kwargs={"bands": bands})


def _expected_layer(name: str, depth: int) -> int:
    """The layer each parameter name must get, written out independently of layer_id: a
    parameter no rule here covers (a new or renamed one) fails the test until it gets one."""
    parts = name.split(".")
    if parts[0] == "head":
        return depth + 1
    assert parts[0] == "encoder", name
    if parts[1] in ("tokenizer", "cls_token", "pos_table"):  # embedding: patches, token, positions
        return 0
    if parts[1] == "blocks":
        return int(parts[2]) + 1
    if parts[1] == "norm":
        return depth + 1
    raise AssertionError(f"{name}: no layer rule; give it one in finetune.tasks.layer_id and here")


S2_10 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


@pytest.mark.parametrize("kw", [
    {"learned_pos": True},  # SoftCon exports: a trainable position table
    {"tokenizer": "grouped", "bands": S2_10, "gsd_pos": True, "img_size": TILE},
    {"tokenizer": "spectral", "learned_pos": True, "img_size": TILE}], ids=str)
def test_every_parameter_gets_its_layer(kw: dict) -> None:
    depth = 2
    if "tokenizer" in kw:
        names = [f"encoder.{n}" for n, _ in create_model("vit_test_patch8", depth=depth,
                                                          **kw).named_parameters()]
    else:
        model = _model(depth=depth, pool="token", **kw)  # "avg" freezes the unused final norm
        names = [n for n, _ in model.named_parameters()]
        scale = {id(p): g["lr_scale"] for g in lrd_param_groups(model, 0.05, 0.5)
                 for p in g["params"]}
        for n, p in model.named_parameters():
            assert scale[id(p)] == pytest.approx(0.5 ** (depth + 1 - _expected_layer(n, depth))), n
    assert ("encoder.pos_table" in names) == bool(kw.get("learned_pos"))
    for n in names:
        assert layer_id(n, depth) == _expected_layer(n, depth), n


def test_layer_wise_lr_decay_ratios() -> None:
    model = _model(depth=3, pool="token")  # "avg" freezes the unused final norm
    groups = lrd_param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    expect = {"encoder.tokenizer.proj.weight": 0.5 ** 4, "encoder.cls_token": 0.5 ** 4,
              "encoder.blocks.0.attn.qkv.weight": 0.5 ** 3,
              "encoder.blocks.1.mlp.fc1.weight": 0.5 ** 2,
              "encoder.blocks.2.norm1.weight": 0.5, "encoder.norm.weight": 1.0,
              "head.fc.weight": 1.0, "head.norm.bias": 1.0}
    for name, s in expect.items():
        assert scale[id(named[name])][0] == pytest.approx(s), name
    assert len(scale) == len(named)  # every parameter in exactly one group
    for name in ("encoder.cls_token", "encoder.blocks.0.norm1.weight", "head.fc.bias"):
        assert scale[id(named[name])][1] == 0.0, name  # pretrain.optim's no-decay rules
    assert scale[id(named["encoder.blocks.0.attn.qkv.weight"])][1] == 0.05
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 2e-3)
    lrs = {g["layer_id"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({4: 2e-3, 3: 1e-3, 2: 5e-4, 1: 2.5e-4, 0: 1.25e-4})


def _train_steps(model: FinetuneModel, steps: int = 3) -> None:
    """A few AdamW steps of cross-entropy on random inputs."""
    opt = torch.optim.AdamW(lrd_param_groups(model, 0.05, 0.75), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(4, 3, TILE, TILE, generator=gen)
        task_loss("classification", model(x), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("mode", ["frozen", "last_n"])
def test_freezing(mode: str) -> None:
    model = _model(depth=3, learned_pos=True)  # the position table freezes with the tokenizer
    trainable = apply_freeze(model, mode, last_n=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    head = {k for k in before if k.startswith("head.")}
    assert head <= changed
    if mode == "frozen":
        assert changed == head and trainable == sum(p.numel() for p in model.head.parameters())
        assert not model.encoder.training and model.training  # no drop path on frozen blocks
    else:
        # the final norm stays frozen: avg pooling reads the tokens before it
        last = {k for k in before if k.startswith("encoder.blocks.2.")}
        assert changed == head | last and not model.encoder.pos_table.requires_grad
        assert not model.encoder.norm.weight.requires_grad
        assert not model.encoder.blocks[1].training and model.encoder.blocks[2].training


def _blocks_output(model: FinetuneModel, x: torch.Tensor) -> torch.Tensor:
    """The encoder's tokens after its last block, before its final norm, written out."""
    enc = model.encoder
    h = enc._prepend(enc.embed(x, bands=model.bands))
    for blk in enc.blocks:
        h = blk(h)
    return h


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_fc_norm_reads_the_mean_of_the_tokens_before_the_final_norm(pool: str) -> None:
    """MAE's global-pool recipe: avg pools the blocks' output (the final norm unused, frozen)
    and the head's fc-norm normalises that mean; the class token stays the normed one."""
    model = _model(depth=2, pool=pool)
    with torch.no_grad():  # a final norm that is not the identity, so skipping it shows
        model.encoder.norm.weight.uniform_(0.5, 2.0)
        model.encoder.norm.bias.normal_()
    model.eval()
    seen = []
    model.head.fc.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, 3, TILE, TILE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(x)
        h = _blocks_output(model, x)
        feat = h[:, 1:].mean(1) if pool == "avg" else model.encoder.norm(h)[:, 0]
        expected = torch.nn.functional.layer_norm(feat, (feat.shape[-1],),
                                                  model.head.norm.weight, model.head.norm.bias,
                                                  eps=1e-6)
    torch.testing.assert_close(seen[0], expected)
    apply_freeze(model, "full")
    assert model.encoder.norm.weight.requires_grad == (pool == "token")


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_the_exported_encoder_alone_gives_its_own_pooled_features(tmp_path: Path,
                                                                  pool: str) -> None:
    """What the README and the card say of OUT/model: from_pretrained gives the encoder with
    its own pooled features (avg: the mean after its final norm); the head read, with avg,
    the mean before it, which encoder(x, norm=False) gives (with token: the encoder's own
    output); model_args keep the fine-tune's drop path rate."""
    model = _model(depth=2, pool=pool, global_pool=pool, drop_path_rate=0.2)
    with torch.no_grad():  # a final norm that is not the identity, so skipping it shows
        model.encoder.norm.weight.uniform_(0.5, 2.0)
        model.encoder.norm.bias.normal_()
    model.eval()
    results = {"task": "classification", "test_samples": 4, "test_source": "memory",
               "metrics": {"accuracy": 0.5}}
    record = task_record(model, classes=list("abcd"))
    export_finetuned(model, tmp_path / "m", record=record, results=results)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_args"]["drop_path_rate"] == 0.2
    encoder, reloaded = from_pretrained(tmp_path / "m"), load_finetuned(tmp_path / "m")
    assert not encoder.training and encoder.blocks[-1].drop_path1.drop_prob > 0
    seen = []
    reloaded.model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    kw = reloaded.model.encoder_kwargs()
    x = torch.randn(2, 3, TILE, TILE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reloaded(x)
        h = _blocks_output(model, x)  # the last block's tokens, before the final norm
        normed = model.encoder.norm(h)
        alone = encoder(x, **kw)
        if pool == "avg":
            torch.testing.assert_close(alone, normed[:, 1:].mean(1))
            torch.testing.assert_close(seen[0], h[:, 1:].mean(1))
            torch.testing.assert_close(seen[0], encoder(x, norm=False, **kw))
            assert not torch.allclose(alone, seen[0], atol=1e-3)
            assert "encoder(x, norm=False) gives this mean" in config[TASK_KEY]["features"]
        else:
            torch.testing.assert_close(alone, normed[:, 0])
            torch.testing.assert_close(seen[0], alone)
            assert "the encoder's own pooled output" in config[TASK_KEY]["features"]


def _check_reload(ft: Finetuner, path: Path, results: dict) -> None:
    """``load_finetuned(path)``, fed the held-out tiles preprocessed through its contract,
    predicts what the run's model did (regression in target units) and gives its metrics."""
    model = load_finetuned(path)
    config = json.loads((path / "config.json").read_text())
    record = config[TASK_KEY]
    assert record["kind"] == ft.cfg.task.kind and record["pool"] is None
    mean, std = ft.target_norm
    assert record["target_norm"] == {"mean": mean, "std": std} and model.target_norm == (mean, std)
    data = open_dense(ft.cfg.data.path)
    x = apply_contract(data, model.contract)(np.stack([data.pixels(i) for i in ft.test_idx]))
    run_x, y, valid = ft.batch(ft.test_data, ft.test_pre, ft.test_idx)
    torch.testing.assert_close(x, run_x, rtol=0, atol=0)
    run_model = ft.strategy.module.eval()
    with torch.no_grad():
        out, run_out = model(x, tuple(y.shape[-2:])), run_model(run_x, tuple(y.shape[-2:]))
    m = results["metrics"]
    if record["kind"] == "regression":
        torch.testing.assert_close(out, run_out * std + mean)
        raw = torch.as_tensor(np.stack([data.target(i) for i in ft.test_idx]))
        rmse = float((out - raw)[valid].double().pow(2).mean().sqrt())
        assert rmse == pytest.approx(m["rmse"], rel=1e-5)
    else:
        torch.testing.assert_close(out, run_out, rtol=0, atol=0)
        ev = Evaluator("segmentation", ft.num_outputs)
        ev.update(out, y)
        assert ev.result()["confusion"] == m["confusion"]
        assert "pipeline_tag: image-segmentation" in (path / "README.md").read_text()


def test_a_fine_tune_keeps_the_encoders_licence_as_eofm_finetune_loads_it(tmp_path: Path) -> None:
    """Through load_encoder (what eofm-finetune reads an export with): the export's licence,
    with an 'other' licence's name and link, is the fine-tune's unless the config gives
    another; a new name goes over the inherited one."""
    from eofm.finetune.encoder import load_encoder

    results = {"task": "classification", "test_samples": 4, "test_source": "memory",
               "metrics": {"accuracy": 0.5, "per_class": [1.0, 0.0, 1.0, 0.0]}}
    terms = {"license": "other", "license_name": "esa-data-terms",
             "license_link": "https://esa.int/terms"}
    save_pretrained(_model(depth=1).encoder, tmp_path / "enc", card=terms)

    def exported(name: str, **licence: str) -> dict:
        enc = load_encoder(str(tmp_path / "enc"), drop_path=None, global_pool="avg")
        model = FinetuneModel(enc, "classification", 4, pool="avg",
                              encoder_kwargs={"bands": ["B02", "B03", "B04"]})
        export_finetuned(model, tmp_path / name, record=task_record(model, classes=list("abcd")),
                         results=results, **licence)
        return ModelCard.load(tmp_path / name / "README.md").data.to_dict()

    assert {k: exported("same")[k] for k in terms} == terms
    renamed = exported("renamed", license_name="esa-terms-2")
    assert (renamed["license_name"], renamed["license_link"]) == ("esa-terms-2", terms["license_link"])
    mit = exported("mit", license="mit")
    assert mit["license"] == "mit" and "license_name" not in mit
    fresh = load_encoder(str(tmp_path / "enc"), drop_path=None, random_init=True)
    assert not getattr(fresh, "license_terms", None)  # fresh weights do not derive from them
    # a name for an inherited licence the Hub lists is refused before any training
    from types import SimpleNamespace

    from eofm.finetune.encoder import check_encoder_license

    listed = SimpleNamespace(pretrained_cfg={"license": "cc-by-4.0"})
    given = SimpleNamespace(license="", license_name="x-terms", license_link="")
    with pytest.raises(ConfigError, match=r"encoder.license_name: only with license 'other' "
                                          r".*got license 'cc-by-4.0' \(the encoder's licence"):
        check_encoder_license(given, listed)
    check_encoder_license(given, load_encoder(str(tmp_path / "enc"), drop_path=None))  # 'other'


def test_export_names_the_hub_base_model_and_refuses_another_pool(tmp_path: Path) -> None:
    results = {"task": "classification", "test_samples": 4, "test_source": "memory",
               "metrics": {"accuracy": 0.5, "per_class": [1.0, 0.0, 1.0, 0.0]}}
    wrong = _model(depth=1)  # the encoder's global_pool "token", the head reads "avg"
    with pytest.raises(ValueError, match=r"global_pool.*'avg'.*'token'"):
        export_finetuned(wrong, tmp_path / "wrong", results=results,
                         record=task_record(wrong, classes=list("abcd")))
    model = _model(depth=1, global_pool="avg").eval()
    model.encoder.pretrained_cfg = {"license": "cc-by-nc-4.0"}  # as from_pretrained sets it
    record = task_record(model, classes=list("abcd"), fine_tuned_from="org/base-model@v1")
    export_finetuned(model, tmp_path / "m", record=record, results=results)
    card = (tmp_path / "m" / "README.md").read_text()
    assert "\nbase_model: org/base-model\n" in card and "base_model_relation: finetune" in card
    assert "\nlicense: cc-by-nc-4.0\n" in card  # the encoder's licence, not the default
    export_finetuned(model, tmp_path / "mit", record=record, results=results, license="mit")
    assert "\nlicense: mit\n" in (tmp_path / "mit" / "README.md").read_text()  # encoder.license
    assert "| per-class recall / b | 0 |" in card
    x = torch.randn(2, 3, TILE, TILE)
    with torch.no_grad():
        torch.testing.assert_close(load_finetuned(tmp_path / "m")(x), model(x))


def test_load_finetuned_refuses_a_pretrained_export(dense) -> None:
    with pytest.raises(ValueError, match=f"no '{TASK_KEY}' record.*eofm-finetune"):
        load_finetuned(dense["encoder"])


@pytest.fixture(scope="module")
def finetuned_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned classification export: 4 classes over B02, B03, B04."""
    model = _model(depth=1, global_pool="avg").eval()
    results = {"task": "classification", "test_samples": 4, "test_source": "memory",
               "metrics": {"accuracy": 0.5}}
    out = tmp_path_factory.mktemp("ft") / "m"
    export_finetuned(model, out, record=task_record(model, classes=list("abcd")),
                     results=results)
    return out


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("classes", ["a", "b"], r"eofm_task\.classes: expected 4 class names \(one per output of "
                            r"the head, eofm_task\.head\.num_outputs\), got 2 names"),
    ("classes", ["a", "b", "a", ""], r"eofm_task\.classes: expected non-empty class names, got "
                                     r"an empty name at position\(s\) \[3\]; .*eofm_task\.classes: "
                                     r"expected distinct class names, got \['a'\] more than once"),
    ("encoder_kwargs", "x", r"eofm_task\.encoder_kwargs: expected a mapping of the encoder's "
                            r"arguments .*got str 'x'"),
    ("bands", ["B02", "B03"], r"eofm_task\.encoder_kwargs: bands: missing \['B04'\]"),
    ("bands", ["B04", "B03", "B02"], r"eofm_task\.encoder_kwargs: bands: same bands in "
                                     r"another order"),
])
def test_load_finetuned_refuses_a_record_its_head_or_encoder_cannot_follow(
        finetuned_export: Path, tmp_path: Path, field: str, value: object,
        expected: str) -> None:
    """Class names other in number than the head's outputs loaded (and named the wrong
    logits); encoder_kwargs that are not a mapping, or bands the encoder cannot take, failed
    without naming the file (at load, or at the first forward)."""
    out = tmp_path / "m"
    shutil.copytree(finetuned_export, out)
    config = json.loads((out / "config.json").read_text())
    if field == "bands":
        config[TASK_KEY]["encoder_kwargs"]["bands"] = value
    else:
        config[TASK_KEY][field] = value
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"^{out}/config\.json: {expected}"):
        load_finetuned(out)
    assert load_finetuned(finetuned_export).classes == list("abcd")


def test_freeze_refuses_bad_last_n() -> None:
    """The message names the setting, encoder.last_n (it said last_n)."""
    with pytest.raises(ValueError, match=r"^encoder\.last_n: expected 1\.\.3 \(the encoder's "
                                         r"depth\), got 5$"):
        apply_freeze(_model(depth=3), "last_n", last_n=5)


# ---------------------------------------------------------------- losses and metrics
def test_losses_ignore_unlabelled_pixels() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0] = IGNORE_INDEX
    ref = torch.nn.functional.cross_entropy(logits[1:], target[1:])
    assert torch.allclose(task_loss("segmentation", logits, target), ref)
    none = task_loss("segmentation", logits, torch.full_like(target, IGNORE_INDEX))
    none.backward()
    assert none.item() == 0 and torch.isfinite(logits.grad).all()
    pred, y = torch.zeros(1, 2, 2), torch.tensor([[[1.0, 2.0], [3.0, 100.0]]])
    valid = torch.tensor([[[True, True], [True, False]]])
    assert task_loss("regression", pred, y, valid).item() == pytest.approx(14 / 3)


def test_evaluator_metrics() -> None:
    ev = Evaluator("segmentation", 2)
    logits = torch.tensor([[[[1.0, 1.0]], [[0.0, 2.0]]]])  # predicts [0, 1]
    ev.update(logits, torch.tensor([[[0, 0]]]))
    ev.update(logits, torch.tensor([[[IGNORE_INDEX, 1]]]))
    assert ev.result()["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    reg = Evaluator("regression", 1).merge([Evaluator("regression", 1).state()])
    reg.update(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]]),
               torch.tensor([[True, True]]))
    assert reg.result(target_scale=2.0)["rmse"] == pytest.approx(2 * np.sqrt(5))


def test_regression_evaluator_reports_rmse_mae_bias_and_r2() -> None:
    """Every regression metric by hand over the valid pixels, on errors where they disagree
    (RMSE != MAE): bias is prediction - target (positive: the model over-predicts), R2 is
    1 - MSE / the targets' variance (not their mean square), errors in target units."""
    out, y = torch.tensor([[2.0, 4.0, 3.0, 9.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    valid = torch.tensor([[True, True, True, False]])  # the 9 vs 4 pixel is nodata
    ev = Evaluator("regression", 1)
    ev.update(out, y, valid)
    r = ev.result(target_scale=10.0)
    e, yv = np.array([1.0, 2.0, 0.0]), np.array([1.0, 2.0, 3.0])  # prediction - target
    assert r["rmse"] == pytest.approx(10 * np.sqrt((e ** 2).mean()))
    assert r["mae"] == pytest.approx(10 * np.abs(e).mean())
    assert r["bias"] == pytest.approx(10 * e.mean()) and r["bias"] > 0
    assert r["r2"] == pytest.approx(1 - (e ** 2).mean() / yv.var())
    assert r["pixels"] == 3


def test_segmentation_evaluator_reports_pixel_accuracy_and_per_class_iou() -> None:
    """Pixel accuracy is the share of labelled pixels predicted right (2 of 3; the ignored
    pixel counts nowhere), not the mean IoU (1/2 here); per-class IoU by hand."""
    ev = Evaluator("segmentation", 3)
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, [0, 0, 2, 1], 0, [0, 1, 2, 3]] = 1.0  # predicts [0, 0, 2, 1]
    ev.update(logits, torch.tensor([[[0, 1, 2, IGNORE_INDEX]]]))
    r = ev.result()
    assert r["pixel_accuracy"] == pytest.approx(2 / 3) and r["pixels"] == 3
    assert r["per_class_iou"] == [pytest.approx(1 / 2), 0.0, 1.0]
    assert r["miou"] == pytest.approx(1 / 2)


# ---------------------------------------------------------------- refusals
def test_config_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["task.kind=segmentaton", "encoder.freez=frozen", "optim.layer_decay=2",
                           "runtime.strategy=deepspeed", "data.s2_offset=+1000",
                           "encoder.license=MIT", "encoder.license_link=LICENSE"])
    text = str(e.value)
    for part in ("did you mean 'segmentation'", "encoder.freez: unknown key", "did you mean "
                 "'freeze'", "optim.layer_decay", "runtime.strategy", "encoder.path: required",
                 "data.s2_offset: expected 'auto', 'none' or an offset in DN",
                 "encoder.license: expected a Hub licence id", "did you mean 'mit'",
                 "encoder.license_link: only with license 'other'"):
        assert part in text, part
    cfg = load_config(ROOT / "launch" / "configs" / "finetune_eurosat_cpu.yaml",
                      ["encoder.path=x", "runtime.out_dir=y"])
    assert cfg.data.path.endswith("eurosat_ms") and cfg.task.kind == "classification"


def test_print_config_shows_the_resolved_config_and_runs_nothing(tmp_path: Path,
                                                                 capsys) -> None:
    import yaml

    out = tmp_path / "never"
    assert main(["--config", str(ROOT / "launch" / "configs" / "finetune_eurosat_cpu.yaml"),
                 "--encoder", "x", "--out", str(out), "--print-config", "encoder.pool=token"]) == 0
    text = capsys.readouterr().out
    cfg = yaml.safe_load(text)
    assert cfg["encoder"] == {**cfg["encoder"], "path": "x", "pool": "token"}
    assert cfg["runtime"]["out_dir"] == str(out) and not out.exists()
    assert "  freeze: full  # \"frozen\" | \"last_n\" | \"full\"" in text.splitlines()


def test_print_config_describes_every_key() -> None:
    """--print-config claims to describe every key; 25 had no meaning: the fields fine-tuning's
    optim, schedule and runtime sections inherit from pretraining's lost their comments (only
    the subclass's own source was read), and optim.betas and optim.eps had none."""
    from eofm.finetune.finetune_config import FinetuneConfig
    from eofm.pretrain.config_doc import annotated_yaml

    text = annotated_yaml(FinetuneConfig())
    undescribed = [line.split(":")[0].strip() for line in text.splitlines()
                   if not line.endswith(":") and "  # " not in line]
    assert undescribed == []
    lines = text.splitlines()  # fine-tuning's meaning where pretraining's would mislead
    assert '  strategy: ddp  # "ddp" | "fsdp2" | "single" (no DeepSpeed: it would replace the ' \
        "layer-decayed optimiser)" in lines
    assert "  preview_every: 0  # not read by eofm-finetune (its pictures: OUT/confusion.png, " \
        "OUT/predictions.png): must stay 0" in lines
    assert "  warmup_steps: null  # linear warmup steps; when set it wins over warmup_fraction" \
        in lines  # inherited from pretraining's schedule section


def test_data_that_breaks_the_contract_is_refused(dense, tmp_path: Path, capsys) -> None:
    bands = get_sensor("s2_l1c").band_names  # has B10, which the L2A tiles lack
    stats = {b: {"mean": 1000.0, "std": 500.0} for b in bands}
    enc = save_pretrained(_encoder(bands, stats, "s2_l1c"), tmp_path / "l1c")
    rc = main(["--encoder", str(enc), "--data", str(dense["seg"]), "--task", "segmentation",
               "--out", str(tmp_path / "run")])
    assert rc == 2 and "missing band(s) ['B10']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["--encoder", str(enc), "--data", str(dense["seg"]), "--task",
                 "classification", "--out", str(tmp_path / "run")]) == 2
    assert "expected class or multilabel labels" in capsys.readouterr().err


def test_dense_data_from_arrays() -> None:
    x = np.random.default_rng(0).integers(1, 100, (3, 2, 8, 8)).astype(np.uint16)
    d = DenseData.from_arrays(x, np.zeros((3, 8, 8), np.uint8), bands=["B02", "B03"],
                              sensor="s2_l2a")
    assert len(d) == 3 and d.size == (8, 8) and d.units and d.stats["B02"]["std"] > 0


@pytest.mark.parametrize("batch,accum", [(8, 4), (6, 3)])
def test_epochs_count_every_micro_batch_and_the_last_step_is_saved_once(
        dense, tmp_path: Path, request, batch: int, accum: int) -> None:
    """schedule.epochs with accumulation: steps per epoch were floored, so epochs=E trained
    fewer epochs; and with steps a multiple of ckpt_every the last step was saved twice."""
    ft = _finetuner(dense, "regression", tmp_path / "e", "schedule.steps=null",
                    "schedule.epochs=2.5", f"data.batch_size={batch}",
                    f"optim.accum_steps={accum}")
    try:
        assert ft.micro_per_epoch % accum, "the case must leave micro-batches over"
        assert ft.total == math.ceil(2.5 * ft.micro_per_epoch / accum)  # every micro-batch
    finally:
        dist.teardown()
    saves = request.getfixturevalue("checkpoint_saves")  # counted from here on
    ft = _finetuner(dense, "regression", tmp_path / "s", "schedule.steps=2",
                    "runtime.ckpt_every=1", "data.eval_batch_size=16")
    try:
        assert ft.fit() == 0
    finally:
        dist.teardown()
    assert saves == {1: 1, 2: 1}


def test_a_resume_names_the_training_settings_it_changed(dense, tmp_path: Path,
                                                         caplog) -> None:
    """Settings that shape training but are neither refused nor part of the schedule (the
    head's dropout, drop path, layer decay) changed on resume without a word, and the run's
    results and export stated only the new ones."""
    out = tmp_path / "run"
    ft = _finetuner(dense, "regression", out, "schedule.steps=1", "data.eval_batch_size=16")
    try:
        assert ft.fit() == 0
    finally:
        dist.teardown()
    ft = _finetuner(dense, "regression", out, "schedule.steps=2", "data.eval_batch_size=32",
                    "task.dropout=0.1", "optim.layer_decay=0.5")
    try:
        caplog.clear()
        ft.resume()
    finally:
        dist.teardown()
    assert ft.step == 1
    assert ("settings differ from the checkpoint's run (optim.layer_decay 0.75 -> 0.5, "
            "task.dropout 0.0 -> 0.1): training goes on with this config's from step 1") \
        in caplog.text  # the schedule is said on its own; eval_batch_size trains nothing


def test_a_resume_with_another_layer_decay_trains_with_the_new_one(dense, tmp_path: Path
                                                                   ) -> None:
    """optim.layer_decay changed on resume: the optimiser kept the checkpoint's per-group
    lr_scale (only weight decay, betas and eps were set back to the config's), while the
    warning, config.yaml and results.json said the new value. The freshly built groups'
    lr_scale is the one trained with."""
    out = tmp_path / "run"
    ft = _finetuner(dense, "regression", out, "schedule.steps=1")
    try:
        assert ft.fit() == 0
    finally:
        dist.teardown()
    ft = _finetuner(dense, "regression", out, "schedule.steps=2", "optim.layer_decay=0.5")
    try:
        built = [(g["layer_id"], g["lr_scale"]) for g in ft.strategy.optimizer.param_groups]
        ft.resume()
    finally:
        dist.teardown()
    assert ft.step == 1
    assert len({s for _, s in built}) > 2, "the case must have layers of several lr scales"
    assert [(g["layer_id"], g["lr_scale"]) for g in ft.strategy.optimizer.param_groups] == built


def test_segmentation_refuses_a_num_classes_other_than_the_data_names(dense, tmp_path: Path
                                                                       ) -> None:
    """Segmentation data with named classes: task.num_classes set to another count was taken
    (the head had 4 outputs, the export recorded them over 3 class names); it is refused as
    classification refuses it. The same count, or none, gives the named classes."""
    from eofm.finetune.finetune_config import TaskConfig
    from eofm.finetune.task_data import num_outputs

    root = dense["seg"].parent
    first = open_dense(dense["seg"])
    opts = LayoutOptions(sensor=first.sensor, file_bands=list(first.bands), seg_dir=root / "seg")
    build(BuildConfig(str(root / "src"), str(tmp_path / "named"), layout="multiband",
                      layout_options=opts, ingest=IngestOptions(tile=TILE),
                      classes=["low", "mid", "high"], progress=False))
    named = open_dense(tmp_path / "named")
    assert named.classes == ["low", "mid", "high"]
    with pytest.raises(ValueError, match=r"task.num_classes=4 but the data has 3 classes "
                                         r"\['low', 'mid', 'high'\] \(.*named\); expected 3"):
        num_outputs(TaskConfig("segmentation", num_classes=4, ignore_value=255), named, named)
    for n in (3, None):
        assert num_outputs(TaskConfig("segmentation", num_classes=n, ignore_value=255),
                           named, named) == 3
    assert num_outputs(TaskConfig("segmentation", num_classes=4, ignore_value=255),
                       first, first) == 4  # no names: task.num_classes says the count


def test_dense_data_is_read_in_key_order_however_it_was_built(dense, tmp_path: Path) -> None:
    """Builds mix the write order (--order-seed, writers, shards or zarr): read back in it, the
    same samples got another held-out split with each build."""
    root = dense["seg"].parent
    first = open_dense(dense["seg"])
    assert list(first.keys) == sorted(first.keys)
    opts = LayoutOptions(sensor=first.sensor, file_bands=list(first.bands), seg_dir=root / "seg")
    for name, kw in (("seed1", {"order_seed": 1, "num_writers": 2}),
                     ("seg.zarr", {"order_seed": 1, "format": "zarr"})):
        build(BuildConfig(str(root / "src"), str(tmp_path / name), layout="multiband",
                          layout_options=opts, ingest=IngestOptions(tile=TILE), progress=False,
                          **kw))
        other = open_dense(tmp_path / name)
        assert list(other.keys) == list(first.keys), name
        for i in (0, len(first.keys) - 1):
            assert np.array_equal(other.pixels(i), first.pixels(i))
            assert np.array_equal(other.target(i), first.target(i), equal_nan=True)


def test_tiles_the_build_dropped_are_noted_on_the_final_lines(tmp_path: Path, capsys,
                                                              eurosat_folder) -> None:
    """A dataset whose build dropped a mostly-nodata tile (eofm-shard build's default
    --max-nodata 0.5): results.json's data says so and eofm-finetune prints the note under its
    result line, as eofm-probe prints it under its table."""
    root = eurosat_folder(tmp_path / "eurosat")
    first = sorted((root / "Class0").glob("*.tif"))[0]
    raw = tifffile.imread(first)
    raw[:10] = 0  # 62.5 % of the tile, every band
    tifffile.imwrite(first, raw, photometric="minisblack", planarconfig="contig")
    build(BuildConfig(source=str(root), out=str(tmp_path / "ds"), progress=False))
    bands = get_sensor("s2_l1c").band_names
    stats = {b: {"mean": 1500.0, "std": 1000.0} for b in bands}
    enc = save_pretrained(_encoder(bands, stats, "s2_l1c"), tmp_path / "encoder")
    out = tmp_path / "run"
    assert main(["--encoder", str(enc), "--data", str(tmp_path / "ds"), "--task",
                 "classification", "--out", str(out), "schedule.steps=1", "data.batch_size=4",
                 "encoder.freeze=frozen", "logging.progress=false"]) == 0
    printed = capsys.readouterr().out.splitlines()
    note = json.loads((out / "results.json").read_text())["data"]["dropped_samples"]["note"]
    assert "dropped 1 tile(s)" in note
    assert printed[-1] == f"eofm-finetune: note: {note}", printed[-3:]
