"""``eofm-probe --run``: probe accuracy along a real (tiny) run's checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.png import read_png
from eofm.finetune.export import export_run
from eofm.finetune.probe_cli import main, parse_args
from eofm.finetune.probe_curve import _same_setup, column_label, feature_setup, write_outputs

ROOT = Path(__file__).resolve().parents[2]
PROBE = ["--folds", "3", "--quiet", "--modality", "s2", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(sample_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(run dir with checkpoints at steps 2 and 4, labelled BigEarthNet shards)."""
    tmp = tmp_path_factory.mktemp("curve")
    out = tmp / "run"
    cmd = [sys.executable, "-m", "eofm.pretrain", "--config", "launch/configs/quickstart.yaml",
           "schedule.steps=4", "runtime.ckpt_every=2", f"runtime.out_dir={out}",
           f"data.path={tmp / 's2_64'}", f"data.build_from={sample_data / 'sentinel2_l1c_scene'}",
           "model.name=vit_test_patch8", "objective.decoder_dim=32", "objective.decoder_depth=1",
           "objective.decoder_heads=2", "data.num_workers=0", "logging.progress=false",
           "logging.preview_every=0", "logging.log_every=1"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    labelled = tmp / "ben_64"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(labelled),
                      ingest=IngestOptions(tile=64, stride=56), progress=False))
    return out, labelled


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "curve.jsonl").read_text().splitlines()]


def test_every_checkpoint_is_probed_once_as_eofm_probe_would(setup, tmp_path: Path,
                                                              capsys) -> None:
    run, labelled = setup
    out = tmp_path / "curve"
    assert main(["--run", str(run), "--data", str(labelled), "--out", str(out), *PROBE]) == 0
    recs = _records(out)
    assert "baselines" in recs[0] and set(recs[0]["baselines"]) == {"random_init", "band_stats"}
    points = recs[1:]
    assert [p["step"] for p in points] == [2, 4] and {p["total_steps"] for p in points} == {4}
    assert 0 < points[0]["elapsed_s"] < points[1]["elapsed_s"]
    logged = {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                                 .splitlines())}
    assert [p["train_loss"] for p in points] == [logged[2], logged[4]]
    key = "linear_micro_map"
    assert all(0.0 <= p[key] <= 1.0 for p in points)
    # the newest point is exactly what eofm-probe gives for the same checkpoint exported
    report = tmp_path / "report"
    assert main(["--encoder", str(export_run(run, tmp_path / "export")), "--data",
                 str(labelled), "--out", str(report), *PROBE]) == 0
    full = json.loads((report / "report.json").read_text())
    assert points[1][key] == pytest.approx(full["pretrained"]["linear"]["micro_map"]["mean"])
    assert recs[0]["baselines"]["band_stats"][key] == pytest.approx(
        full["band_stats"]["linear"]["micro_map"]["mean"])
    assert read_png(out / "curve.png").shape == read_png(out / "curve_time.png").shape \
        == (360, 640, 3)
    assert "| 4 |" in (out / "curve.md").read_text()
    # 16 training tiles per fold: kNN-20 used k=16, named so as report.md names it
    assert all(r["knn_k_used"] == {"10": [10], "20": [16]} for r in recs)
    assert "kNN-20 (k=16)" in (report / "report.md").read_text()
    assert "| knn10_micro_map | knn20_micro_map (k=16) |" in (out / "curve.md").read_text()
    assert "curve.jsonl (2 checkpoints)" in capsys.readouterr().out
    # a rerun, and --watch on a finished run, probe nothing new and stop
    assert main(["--run", str(run), "--data", str(labelled), "--out", str(out), "--watch",
                 "--poll", "0.01", *PROBE]) == 0
    assert _records(out) == recs


def test_a_curve_is_not_extended_with_other_settings(setup, tmp_path: Path, capsys) -> None:
    run, labelled = setup
    out = tmp_path / "curve"
    (out).mkdir()
    (out / "curve.jsonl").write_text(json.dumps(
        {"baselines": {}, "data": {"source": "elsewhere"}, "pool": "cls", "folds": 3,
         "seed": 0, "knn_k": [10, 20]}) + "\n")
    assert main(["--run", str(run), "--data", str(labelled), "--out", str(out), *PROBE]) == 2
    assert "was made with other data" in capsys.readouterr().err
    assert main(["--run", str(tmp_path / "nothing"), "--data", str(labelled), "--out",
                 str(tmp_path / "c2"), *PROBE]) == 2
    assert "is not a pretraining run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--encoder", "x", "--data", str(labelled), "--out", str(out), "--watch"])


def test_a_curve_is_extended_only_with_the_feature_settings_it_was_made_with(
        setup, tmp_path: Path, capsys, caplog) -> None:
    """--lastn, tile grouping, --s2-offset and --override-contract change the features or the
    folds: a rerun with another one would append points computed otherwise, so it is refused
    (the baselines record stores them). A curve from before they were stored is taken to have
    used the defaults (it cannot tell otherwise): a rerun with them extends it, with a
    warning; one with another value is refused."""
    run, labelled = setup
    out = tmp_path / "curve"
    base = ["--run", str(run), "--data", str(labelled), "--out", str(out), *PROBE]
    lastn = [*base, "--pool", "lastn", "--lastn", "2"]  # the test encoder has 2 blocks
    assert main(lastn) == 0
    recs = _records(out)
    assert {k: recs[0][k] for k in ("pool", "lastn", "group_tiles", "s2_offset",
                                    "override_contract")} == {
        "pool": "lastn", "lastn": 2, "group_tiles": True, "s2_offset": "auto",
        "override_contract": False}
    assert 0 < recs[0]["source_images"] <= recs[0]["data"]["samples"]
    lines = (out / "curve.jsonl").read_text().splitlines()
    (out / "curve.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # step 4 still to probe
    capsys.readouterr()
    assert main([*lastn, "--lastn", "1"]) == 2
    err = capsys.readouterr().err
    assert "was made with other lastn (lastn=2, now 1)" in err and "another --out" in err, err
    assert len(_records(out)) == len(lines) - 1
    for flags, key in ((["--no-group-tiles"], "group_tiles"),
                       (["--s2-offset", "-1000"], "s2_offset"),
                       (["--override-contract"], "override_contract")):
        now = {**recs[0], **feature_setup(parse_args([*lastn, *flags]))}
        with pytest.raises(ValueError, match=f"was made with other {key} \\({key}="):
            _same_setup(recs[0], now, out)
    # a curve written before these were stored: the defaults are assumed (--lastn 4)
    old = {k: v for k, v in recs[0].items()
           if k not in ("lastn", "group_tiles", "s2_offset", "override_contract")}
    (out / "curve.jsonl").write_text("\n".join([json.dumps(old), *lines[1:-1]]) + "\n")
    assert main(lastn) == 2
    assert "lastn=4 (not recorded by the older eofm-probe that wrote it; assumed), now 2" \
        in capsys.readouterr().err
    (out / "curve.jsonl").write_text("\n".join([json.dumps({**old, "pool": "cls"}),
                                                *lines[1:-1]]) + "\n")
    with pytest.raises(ValueError, match="group_tiles=True \\(not recorded"):
        _same_setup(old, {**old, **feature_setup(parse_args([*base, "--no-group-tiles"]))},
                    out)
    caplog.clear()
    with caplog.at_level("WARNING", logger="eofm.finetune.probe_curve"):
        assert main(base) == 0
    assert "did not record lastn, group_tiles, s2_offset, override_contract" in caplog.text
    assert [r.get("step") for r in _records(out)] == [None, 2, 4]


def test_a_rerun_with_other_settings_is_refused_before_anything_is_probed_or_opened(
        setup, tmp_path: Path, capsys, monkeypatch) -> None:
    """A rerun into a finished curve's --out with nothing new to probe returned the old curve
    (exit 0, no warning) for any other --data, --modality, --pool, --lastn, --folds, --seed or
    --no-group-tiles: its numbers were not of those settings. The command line is compared
    with the baselines record first, without opening the data or probing, and such a rerun is
    refused; with a new checkpoint too, before it is probed. The same settings still return
    the curve (``ds/`` and ``ds`` are one --data)."""
    run, labelled = setup
    out = tmp_path / "curve"
    base = ["--run", str(run), "--data", str(labelled), "--out", str(out), *PROBE]
    assert main(base) == 0
    jsonl, table = (out / "curve.jsonl").read_text(), (out / "curve.md").read_text()

    def never(*args, **kwargs):
        raise AssertionError("data opened or a checkpoint probed for a refused rerun")

    monkeypatch.setattr("eofm.finetune.probe_curve.open_labelled", never)
    monkeypatch.setattr("eofm.finetune.probe_curve.CurveProber.probe", never)
    s1_only = tmp_path / "ben_s1"  # never opened: another --data is refused by its name
    for flags, msg in (
            (["--data", str(s1_only), "--modality", "s1"],
             f"data (data={{'source': '{labelled}', 'modality': 's2'}}, now "
             f"{{'source': '{s1_only}', 'modality': 's1'}})"),
            (["--modality", "s1"], "data (data="),
            (["--pool", "mean"], "pool (pool='cls', now 'mean')"),
            (["--pool", "lastn", "--lastn", "2"], "pool, lastn (pool='cls', now 'lastn'; "
                                                  "lastn=None, now 2)"),
            (["--folds", "2"], "folds (folds=3, now 2)"),
            (["--seed", "1"], "seed (seed=0, now 1)"),
            (["--no-group-tiles"], "group_tiles (group_tiles=True, now False)")):
        capsys.readouterr()
        assert main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert f"was made with other {msg}" in err and "another --out" in err, (flags, err)
        assert (out / "curve.jsonl").read_text() == jsonl
        assert (out / "curve.md").read_text() == table
    # a new checkpoint with other settings: refused before it is probed
    lines = jsonl.splitlines()
    (out / "curve.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert main([*base, "--pool", "mean"]) == 2
    assert "was made with other pool" in capsys.readouterr().err
    (out / "curve.jsonl").write_text(jsonl)
    assert main([*base, "--data", f"{labelled}/"]) == 0  # the same settings: the curve
    assert (out / "curve.jsonl").read_text() == jsonl


def test_curve_columns_name_a_capped_knn_k(tmp_path: Path) -> None:
    """The curve labelled kNN columns knn20_... even when kNN used fewer neighbours (the
    probe's own table says kNN-20 (k=16)): curve.md's header and baselines name the k used,
    from the records' knn_k_used; a curve whose records lack it keeps the plain names."""
    used = {"10": [10], "20": [16]}
    base = {"baselines": {"random_init": {"linear_micro_map": 0.3, "knn10_micro_map": 0.31,
                                          "knn20_micro_map": 0.32}},
            "knn_k_used": used, "data": {"source": "ben"}, "folds": 3, "pool": "cls"}
    points = [{"step": s, "elapsed_s": None, "train_loss": None, "linear_micro_map": 0.4,
               "knn10_micro_map": 0.41, "knn20_micro_map": 0.42, "knn_k_used": used}
              for s in (2, 4)]
    write_outputs(tmp_path, [base, *points], "run")
    md = (tmp_path / "curve.md").read_text()
    assert ("| step | elapsed_s | train_loss | linear_micro_map | knn10_micro_map | "
            "knn20_micro_map (k=16) |") in md, md
    assert "knn20_micro_map (k=16) 0.320" in md and "knn10_micro_map 0.310" in md
    assert column_label("knn20_micro_map", {"20": [15, 16]}) == "knn20_micro_map (k=15-16)"
    old = tmp_path / "old"
    old.mkdir()
    write_outputs(old, [{k: v for k, v in r.items() if k != "knn_k_used"}
                        for r in (base, *points)], "run")
    assert "| knn10_micro_map | knn20_micro_map |" in (old / "curve.md").read_text()


def test_a_curve_from_before_the_data_recorded_its_s2_offset_is_still_extended(
        tmp_path: Path) -> None:
    """The data description now records the Sentinel-2 offset applied (data.s2_offset): a
    curve whose baselines record predates it is compared without it, not refused as made
    with other data; a recorded one that differs is refused."""
    setup = {"pool": "cls", "lastn": None, "group_tiles": True, "s2_offset": "auto",
             "override_contract": False, "folds": 3, "seed": 0, "knn_k": [10, 20]}
    data = {"source": "ben", "samples": 24}
    offset = {"mode": "auto", "groups": [{"offset": 0}]}
    now = {**setup, "data": {**data, "s2_offset": offset}}
    _same_setup({**setup, "data": data}, now, tmp_path / "curve.jsonl")
    other = {**setup, "data": {**data, "s2_offset": {"mode": "-1000", "groups": []}}}
    with pytest.raises(ValueError, match="was made with other data"):
        _same_setup(other, now, tmp_path / "curve.jsonl")


def test_a_curve_from_before_the_data_recorded_dropped_samples_is_still_extended(
        tmp_path: Path) -> None:
    """The data description now says how many tiles the build dropped (dropped_samples, only
    when it dropped any): a curve recorded before is compared without it, not refused."""
    setup = {"pool": "cls", "lastn": None, "group_tiles": True, "s2_offset": "auto",
             "override_contract": False, "folds": 3, "seed": 0, "knn_k": [10, 20]}
    data = {"source": "ben", "samples": 24}
    dropped = {"counts": {"dropped_nodata": 2}, "limits": {"max_nodata": 0.5}}
    now = {**setup, "data": {**data, "dropped_samples": dropped}}
    _same_setup({**setup, "data": data}, now, tmp_path / "curve.jsonl")
    other = {**setup, "data": {**data, "dropped_samples": {**dropped, "counts": {"x": 1}}}}
    with pytest.raises(ValueError, match="was made with other data"):
        _same_setup(other, now, tmp_path / "curve.jsonl")


@pytest.mark.parametrize(("group_tiles", "images", "flagged"),
                         [(False, 6, True), (False, 24, False), (True, 6, False),
                          (False, None, False)])
def test_a_curve_split_tile_by_tile_says_its_scores_are_optimistic(
        tmp_path: Path, group_tiles: bool, images: int | None, flagged: bool) -> None:
    """--no-group-tiles over tiles of fewer images puts tiles of one image on both sides of
    the folds' splits, as eofm-probe's report flags: curve.md and the charts' axis say so;
    not with grouping on, not when every tile is its own image, nor for a baselines record
    from before source_images was recorded."""
    base = {"baselines": {"random_init": {"linear_accuracy": 0.3}}, "data": {
        "source": "eurosat", "samples": 24}, "folds": 3, "pool": "cls",
        "group_tiles": group_tiles, **({} if images is None else {"source_images": images})}
    points = [{"step": s, "elapsed_s": None, "train_loss": None, "linear_accuracy": 0.4}
              for s in (2, 4)]
    write_outputs(tmp_path, [base, *points], "run")
    md = (tmp_path / "curve.md").read_text()
    assert ("every score here is optimistic" in md) is flagged, md
    if flagged:
        assert "24 tiles of 6 images" in md
