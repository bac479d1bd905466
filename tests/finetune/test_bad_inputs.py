"""Hostile inputs to eofm-export, eofm-probe and eofm-finetune (and eofm-pretrain's command
line) are refused with one line that names the flag, the file and the field, status 2 and no
traceback (the CLI audit's findings, one test each). Fixtures are cheap: the bundled
BigEarthNet sample as shards, a test-size export of a fresh encoder, and a hand-made
pretraining checkpoint of that encoder (no training run)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from eofm.finetune import export as export_cli
from eofm.finetune import finetune as finetune_cli
from eofm.finetune import probe_cli, resume_checks
from eofm.finetune.encoder import load_encoder
from eofm.models import from_pretrained
from eofm.pretrain import cli as pretrain_cli

ARCH = "vit_test_patch8"  # depth 2
TORCH_ADVICE = "weights_only` set to `False"  # torch's own advice, never relayed


@pytest.fixture(scope="module")
def ben(bigearthnet_export: tuple[Path, Path]) -> tuple[Path, Path]:
    """(the bundled BigEarthNet patches as shards, a matching test-size export)."""
    return bigearthnet_export


@pytest.fixture(scope="module")
def checkpoint(bigearthnet_checkpoint: Path) -> Path:
    """The shared hand-made pretraining checkpoint (tests/conftest.py)."""
    return bigearthnet_checkpoint


def _copy_export(export: Path, to: Path) -> Path:
    shutil.copytree(export, to)
    return to


def _probe(encoder: Path, data: Path, out: Path, *more: str) -> int:
    return probe_cli.main(["--encoder", str(encoder), "--data", str(data), "--out", str(out),
                           "--folds", "2", "--quiet", *more])


def _refused(err: str) -> str:
    """The one error line of a refused command (no traceback)."""
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if ": error: " in x]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- eofm-export


@pytest.mark.parametrize(("text", "want"), [
    ("[1, 2]", "expected a JSON object"),  # e11: crashed in the model card (AttributeError)
    (None, "cannot read the report (No such file or directory)"),  # e09: no flag named
    ('{"linear": \n', "not valid JSON (Expecting value: line 2"),  # e10: no file named
], ids=["list", "missing", "not_json"])
def test_export_evaluation_problems_name_the_flag_and_file(checkpoint, tmp_path, capsys,
                                                           text: str | None, want: str) -> None:
    report = tmp_path / "report.json"
    if text is not None:
        report.write_text(text)
    assert export_cli.main([str(checkpoint), "--out", str(tmp_path / "o"),
                            "--evaluation", str(report)]) == 2
    line = _refused(capsys.readouterr().err)
    assert f"--evaluation {report}: {want}" in line
    assert not (tmp_path / "o").exists()


def test_export_data_of_another_modality_names_both(ben, checkpoint, tmp_path, capsys) -> None:
    """e15: a dataset without the run's modality was a KeyError traceback ('s2')."""
    data, _ = ben
    other = tmp_path / "landsat"
    other.mkdir()
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["modalities"] = {"landsat": manifest["modalities"]["s2"]}
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert export_cli.main([str(checkpoint), "--out", str(tmp_path / "o"),
                            "--data", str(other)]) == 2
    line = _refused(capsys.readouterr().err)
    assert f"--data {other}" in line
    assert "pretrained on modality 's2'" in line and "this dataset has ['landsat']" in line
    assert not (tmp_path / "o").exists()


def test_export_data_that_cannot_be_opened_is_refused(checkpoint, tmp_path, capsys) -> None:
    """e14: an explicit --data was silently ignored when the checkpoint stores its contract;
    without --data the same checkpoint exports (from the config's data.path)."""
    gone = tmp_path / "no_dataset"
    assert export_cli.main([str(checkpoint), "--out", str(tmp_path / "o"),
                            "--data", str(gone)]) == 2
    line = _refused(capsys.readouterr().err)
    assert f"--data {gone}: cannot use it as the pretraining dataset" in line
    assert "no manifest found" in line and not (tmp_path / "o").exists()
    assert export_cli.main([str(checkpoint), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_export_of_a_damaged_checkpoint_file_says_why_like_a_run_folder(checkpoint, tmp_path,
                                                                         capsys) -> None:
    """e07/e03: a checkpoint file given directly relayed torch's advice to load it with
    weights_only=False, or "(KeyError: 101)"; it now gets a run folder's explanation."""
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 4)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    text = tmp_path / "afile.txt"
    text.write_text("hello\n")
    for path in (garbage, truncated, text):
        assert export_cli.main([str(path), "--out", str(tmp_path / "o")]) == 2
        line = _refused(capsys.readouterr().err)
        assert (f"{path}: not a complete torch archive ({path.stat().st_size} bytes: truncated "
                "or corrupt)") in line
        assert TORCH_ADVICE not in line and "KeyError" not in line
    # a complete archive whose pickle is damaged: torch's reason, never its advice
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(checkpoint) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            body = src.read(item)
            dst.writestr(item, b"\xa0" * len(body) if item.filename.endswith("/data.pkl")
                         else body)
    assert export_cli.main([str(damaged), "--out", str(tmp_path / "o")]) == 2
    line = _refused(capsys.readouterr().err)
    assert f"{damaged}: cannot read the checkpoint with torch.load(weights_only=True)" in line
    assert TORCH_ADVICE not in line and "Re-running" not in line


# ---------------------------------------------------------------- loading exports


def test_truncated_safetensors_is_refused_naming_the_file(ben, tmp_path, capsys) -> None:
    """q_exp_trunc_st/f02: a truncated model.safetensors was a SafetensorError traceback in
    eofm-probe and eofm-finetune."""
    data, export = ben
    bad = _copy_export(export, tmp_path / "trunc")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    want = f"{weights}: not a complete safetensors file (truncated or corrupt)"
    assert _probe(bad, data, tmp_path / "report") == 2
    assert want in _refused(capsys.readouterr().err)
    with pytest.raises(ValueError, match="not a complete safetensors file") as e:
        load_encoder(str(bad), drop_path=None)
    assert str(e.value).startswith(f"{weights}: ")


def test_weights_that_do_not_match_the_config_name_the_file(ben, tmp_path, capsys) -> None:
    """q_exp_shape/q_exp_missing/q_exp_extra/f19: the message named the tensors, not the
    file they are in."""
    data, export = ben
    bad = _copy_export(export, tmp_path / "shape")
    weights = bad / "model.safetensors"
    state = load_file(weights)
    del state["norm.bias"]
    state["bogus.weight"] = torch.zeros(2)
    state["cls_token"] = torch.zeros(1, 1, 32)
    save_file(state, weights)
    assert _probe(bad, data, tmp_path / "report") == 2
    line = _refused(capsys.readouterr().err)
    assert f"{weights}: the weights do not match the config's {ARCH}" in line
    assert "missing tensors ['norm.bias']" in line and "unexpected tensors ['bogus.weight']" in line
    assert "cls_token: checkpoint (1, 1, 32) vs model (1, 1, 64)" in line
    with pytest.raises(ValueError, match="the weights do not match") as e:
        load_encoder(str(bad), drop_path=None)
    assert str(e.value).startswith(f"{weights}: ")


def test_config_contract_field_of_the_wrong_type_names_file_and_field(ben, tmp_path,
                                                                      capsys) -> None:
    """q_exp_ctype: eofm_contract.bands a string said "InputContract.bands" only."""
    data, export = ben
    bad = _copy_export(export, tmp_path / "ctype")
    config = json.loads((bad / "config.json").read_text())
    config["eofm_contract"]["bands"] = "B01,B02"
    (bad / "config.json").write_text(json.dumps(config))
    assert _probe(bad, data, tmp_path / "report") == 2
    line = _refused(capsys.readouterr().err)
    assert (f"{bad / 'config.json'}: eofm_contract.bands: expected a list of band names, got "
            "the string 'B01,B02'") in line
    config["eofm_contract"]["bands"] = ["B01"]
    config["eofm_contract"]["patch_size"] = "8"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: eofm_contract\.patch_size: expected an "
                                         r"integer, got str '8'"):
        from_pretrained(bad)


def test_a_file_as_encoder_is_called_a_file(ben, tmp_path, capsys) -> None:
    """q20: a file given as --encoder said "no such folder here"."""
    data, export = ben
    afile = tmp_path / "afile.txt"
    afile.write_text("hello\n")
    assert _probe(afile, data, tmp_path / "report") == 2
    assert f"'{afile}': a file, not an export folder" in _refused(capsys.readouterr().err)
    with pytest.raises(ValueError, match=f"pass its folder, '{export}'"):
        from_pretrained(export / "model.safetensors")


# ---------------------------------------------------------------- eofm-probe flags


@pytest.mark.parametrize(("flags", "said"), [
    (["--device", "bogus"], "--device: expected auto, cpu, cuda or cuda:N, got 'bogus'"),
    (["--batch-size", "0"], "--batch-size: expected a positive number of images, got 0"),
    (["--pool", "lastn", "--lastn", "0"], "--lastn: expected at least 1 block"),
    (["--lastn", "3"], "--lastn: goes with --pool lastn, got --pool cls"),  # was ignored
    (["--seed", "-1"], "--seed: expected a whole number >= 0, got -1"),  # numpy's words
    (["--poll", "5"], "--poll and --timeout go with --watch"),  # was ignored
])
def test_probe_flags_out_of_range_are_argparse_errors(ben, tmp_path, capsys, flags: list[str],
                                                      said: str) -> None:
    """q16 (--device bogus: a RuntimeError traceback), q11 (--batch-size 0: "range() arg 3
    must not be zero"), q14 (--lastn 0: "n: the last-n blocks ...")."""
    data, export = ben
    with pytest.raises(SystemExit) as e:
        _probe(export, data, tmp_path / "report", *flags)
    assert e.value.code == 2
    assert f"eofm-probe: error: {said}" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_probe_lastn_beyond_the_depth_names_the_flag(ben, tmp_path, capsys) -> None:
    """q15: --lastn 99 said "n: the last-n blocks must be in 1..12"."""
    data, export = ben
    assert _probe(export, data, tmp_path / "report", "--pool", "lastn", "--lastn", "99") == 2
    line = _refused(capsys.readouterr().err)
    assert "--lastn: expected 1..2" in line and "got 99" in line


# ---------------------------------------------------------------- eofm-finetune, eofm-pretrain


def test_finetune_config_with_bad_yaml_names_file_and_line(ben, tmp_path, capsys) -> None:
    """f11: a YAML syntax error was a yaml.parser.ParserError traceback."""
    data, export = ben
    config = tmp_path / "ft.yaml"
    config.write_text("task:\n  kind: [classification\ndata:\n  batch_size: 4\n")
    assert finetune_cli.main(["--config", str(config), "--encoder", str(export), "--data",
                              str(data), "--out", str(tmp_path / "o"), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{config}: cannot read the YAML file" in err and "line 3" in err


def test_overrides_may_come_before_flags(ben, tmp_path, capsys) -> None:
    """f06/f08/c19: key=value overrides placed before a flag were "unrecognized arguments"."""
    data, export = ben
    assert finetune_cli.main(["schedule.steps=3", "--encoder", str(export), "--data", str(data),
                              "data.batch_size=8", "--task", "multilabel", "--out",
                              str(tmp_path / "o"), "optim.base_lr=0.01", "--print-config"]) == 0
    shown = capsys.readouterr().out
    assert "steps: 3" in shown and "batch_size: 8" in shown and "base_lr: 0.01" in shown
    config = Path(__file__).resolve().parents[2] / "launch" / "configs" / "quickstart.yaml"
    assert pretrain_cli.main(["schedule.steps=5", "--config", str(config), f"data.path={data}",
                              "--print-config"]) == 0
    shown = capsys.readouterr().out
    assert "steps: 5" in shown and f"path: {data}" in shown


def test_finetune_raw_folder_build_follows_logging_progress(ben, sample_data, tmp_path,
                                                            capfd) -> None:
    """f00/f13: the raw folder's build printed its progress bar with logging.progress=false."""
    _, export = ben
    assert finetune_cli.main(["--encoder", str(export), "--data",
                              str(sample_data / "bigearthnet"), "--task", "multilabel",
                              "--out", str(tmp_path / "o"), "data.modality=s2",
                              "schedule.steps=1", "schedule.warmup_fraction=0",
                              "data.batch_size=2", "data.test_fraction=0.5",
                              "runtime.ckpt_every=0", "logging.progress=false"]) == 0
    err = capfd.readouterr().err
    assert "writer 0" not in err and "item/s" not in err
    assert (tmp_path / "o" / "results.json").is_file()


def test_finetune_config_ranges_match_pretraining() -> None:
    """final_lr_ratio 2, eps 0 and max_minutes -1 trained (round 2 of the audit; pretraining
    refused the first two)."""
    from eofm.finetune.finetune_config import load_config
    from eofm.pretrain.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(None, ["schedule.final_lr_ratio=2", "optim.eps=0", "runtime.max_minutes=-1"],
                    flags={"encoder.path": "e", "data.path": "d", "runtime.out_dir": "o",
                           "task.kind": "classification"})
    assert {"schedule.final_lr_ratio: expected in [0, 1], got 2.0", "optim.eps: expected > 0, "
            "got 0.0", "runtime.max_minutes: expected > 0 or null, got -1.0"} <= set(e.value.problems)
    with pytest.raises(ConfigError) as e:  # runtime.compile_backend: checked as pretraining's
        load_config(None, ["runtime.compile_backend=aot_eagre"],
                    flags={"encoder.path": "e", "data.path": "d", "runtime.out_dir": "o",
                           "task.kind": "classification"})
    [problem] = e.value.problems
    assert problem.startswith("runtime.compile_backend: expected one of [")
    assert problem.endswith("got 'aot_eagre' (did you mean 'aot_eager'?)")


def test_finetune_refuses_settings_it_never_reads(tmp_path, capsys) -> None:
    """runtime.zero_stage, runtime.deepspeed_config, logging.preview_every and
    logging.preview_samples were accepted and ignored (logging.tensorboard and
    logging.sample_keys were already refused); each set to its default stays accepted."""
    config = Path(__file__).resolve().parents[2] / "launch" / "configs"
    base = ["--config", str(config / "finetune_eurosat_cpu.yaml"), "--encoder", "x", "--out",
            str(tmp_path / "o"), "--print-config"]
    unread = ["runtime.zero_stage=3", "runtime.deepspeed_config=launch/deepspeed/zero2.json",
              "logging.preview_every=5", "logging.preview_samples=4", "logging.tensorboard=true",
              "logging.sample_keys=true", "optim.loss_norm=step"]
    assert finetune_cli.main([*base, *unread]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for line in ("runtime.zero_stage: not supported by eofm-finetune (set it to null), got 3",
                 "runtime.deepspeed_config: not supported by eofm-finetune (set it to null), "
                 "got 'launch/deepspeed/zero2.json'",
                 "logging.preview_every: not supported by eofm-finetune (set it to 0), got 5",
                 "logging.preview_samples: not supported by eofm-finetune (set it to 8), got 4",
                 "logging.tensorboard: not supported by eofm-finetune (set it to false), got True",
                 "logging.sample_keys: not supported by eofm-finetune (set it to false), got True",
                 "optim.loss_norm: not supported by eofm-finetune (set it to micro_batch), "
                 "got 'step'"):
        assert f"  - {line}\n" in err, line
    defaults = ["runtime.zero_stage=null", "runtime.deepspeed_config=null",
                "logging.preview_every=0", "logging.preview_samples=8",
                "optim.loss_norm=micro_batch"]
    assert finetune_cli.main([*base, *defaults]) == 0
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- evaluation flags (round 3)


@pytest.fixture(scope="module")
def eurosat(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class-labelled shards: 3 EuroSAT classes x 3 real tiles from ../shared/data."""
    from eofm.data_shards.build import BuildConfig, build

    root = tmp_path_factory.mktemp("eurosat")
    for name in ("AnnualCrop", "Forest", "River"):
        (root / "raw" / name).mkdir(parents=True)
        for tif in sorted((shared_data / "eurosat_ms" / name).glob("*.tif"))[:3]:
            shutil.copy(tif, root / "raw" / name / tif.name)
    build(BuildConfig(str(root / "raw"), str(root / "shards"), progress=False))
    return root / "shards"


def _finetune(export: Path, data: Path, out: Path, *more: str) -> int:
    """A one-step multilabel fine-tune of the test-size export (3 of 6 samples train)."""
    return finetune_cli.main(["--encoder", str(export), "--data", str(data), "--task",
                              "multilabel", "--out", str(out), "schedule.steps=1",
                              "schedule.warmup_fraction=0", "data.batch_size=1",
                              "data.test_fraction=0.5", "encoder.drop_path=0",
                              "logging.progress=false", *more])


def test_probe_run_names_pretrain_data_not_data(ben, checkpoint, tmp_path, capsys) -> None:
    """h2-1: `eofm-probe --run RUN --pretrain-data BAD` blamed --data (eofm-export's flag for
    the pretraining dataset; in eofm-probe --data is the labelled data)."""
    data, _ = ben
    gone = tmp_path / "moved_away"
    assert probe_cli.main(["--run", str(checkpoint.parent), "--pretrain-data", str(gone),
                           "--data", str(data), "--out", str(tmp_path / "curve"), "--folds",
                           "2", "--quiet"]) == 2
    line = _refused(capsys.readouterr().err)
    assert f"--pretrain-data {gone}: cannot use it as the pretraining dataset" in line
    assert f"--data {gone}" not in line
    # a checkpoint without its contract whose data.path is gone: the advice names the flag
    state = torch.load(checkpoint, weights_only=True)
    del state["contract"]
    state["config"]["data"]["path"] = str(gone)
    run = tmp_path / "old_run"
    run.mkdir()
    torch.save(state, run / checkpoint.name)
    assert probe_cli.main(["--run", str(run), "--data", str(data), "--out",
                           str(tmp_path / "curve2"), "--folds", "2", "--quiet"]) == 2
    line = _refused(capsys.readouterr().err)
    assert "Pass --pretrain-data PATH" in line and "Pass --data" not in line


REDACTED = "file://***@/nowhere/s2"  # data.path as a checkpoint stores a credentialed URL


def _with_data_path(checkpoint: Path, path: str, run: Path) -> Path:
    """A copy of ``checkpoint`` in the new run folder ``run``, its data.path set to ``path``."""
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["data"]["path"] = path
    run.mkdir()
    torch.save(state, run / checkpoint.name)
    return run / checkpoint.name


def test_export_names_the_callers_flag_for_the_pretraining_dataset(checkpoint, tmp_path,
                                                                   caplog) -> None:
    """encoder_from_checkpoint(data_flag=...) names the calling command's flag for the
    pretraining dataset in its refusals and in the warning for a redacted data.path (eofm-probe
    --run: --pretrain-data); eofm-export keeps --data."""
    redacted = _with_data_path(checkpoint, REDACTED, tmp_path / "run")
    state = torch.load(redacted, weights_only=True)
    with caplog.at_level("WARNING"):
        export_cli.encoder_from_checkpoint(state, data_flag="--pretrain-data")
    assert f"{REDACTED}: checkpoints keep data.path without its credentials; pass " \
           "--pretrain-data with the full URL" in caplog.text and "--data" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert export_cli.main([str(redacted), "--out", str(tmp_path / "o")]) == 0
    assert "credentials; pass --data with the full URL" in caplog.text
    gone = tmp_path / "gone"
    with pytest.raises(ValueError) as e:
        export_cli.encoder_from_checkpoint(state, data=str(gone), data_flag="--pretrain-data")
    assert str(e.value).startswith(f"--pretrain-data {gone}: cannot use it as the pretraining "
                                   "dataset (")
    old = {k: v for k, v in state.items() if k != "contract"}  # nothing to fall back on
    with pytest.raises(ValueError) as e:
        export_cli.encoder_from_checkpoint(old, data_flag="--pretrain-data")
    assert "pass --pretrain-data with the full URL" in str(e.value)
    assert "Pass --pretrain-data PATH" in str(e.value) and "--data" not in str(e.value)
    with pytest.raises(ValueError, match="Pass --data PATH"):
        export_cli.encoder_from_checkpoint(old)


def test_probe_run_warns_with_pretrain_data_for_a_redacted_data_path(ben, checkpoint, tmp_path,
                                                                     caplog, capsys) -> None:
    """eofm-probe --run on a checkpoint whose data.path was stored redacted probes with the
    checkpoint's contract and warns to pass --pretrain-data (not --data, the labelled data)."""
    data, _ = ben
    run = _with_data_path(checkpoint, REDACTED, tmp_path / "run").parent
    with caplog.at_level("WARNING"):
        assert probe_cli.main(["--run", str(run), "--data", str(data), "--out",
                               str(tmp_path / "curve"), "--folds", "2", "--quiet"]) == 0
    assert f"{REDACTED}: checkpoints keep data.path without its credentials; pass " \
           "--pretrain-data with the full URL" in caplog.text and "pass --data" not in caplog.text
    assert "1 checkpoints" in capsys.readouterr().out


def test_probe_test_data_that_is_the_training_data_is_refused(ben, tmp_path, capsys) -> None:
    """h2-2: --test-data naming --data's dataset ran and reported every method, baselines
    included, at 1.000 as "fixed test set" scores (kNN finds each sample itself). Refused by
    its images (a copy too: test_test_set_overlap.py)."""
    data, export = ben
    assert _probe(export, data, tmp_path / "report", "--test-data", f"{data}/") == 2
    line = _refused(capsys.readouterr().err)
    assert line.startswith(f"eofm-probe: error: --test-data {data}: expected a held-out test "
                           "set of other images, got 6 of its 6 source images also in --data "
                           f"{data} ("), line
    assert "omit --test-data to cross-validate" in line
    assert not (tmp_path / "report").exists()


def test_finetune_task_and_label_kinds_that_differ_name_both(ben, eurosat, tmp_path,
                                                             capsys) -> None:
    """h2-3: regression on class labels said only "expected per-pixel targets ..., got
    class"; a data.test_path of class labels beside multi-labelled data.path advised
    `--task classification` (which data.path cannot serve)."""
    data, export = ben
    assert finetune_cli.main(["--encoder", str(export), "--data", str(eurosat), "--task",
                              "regression", "--out", str(tmp_path / "reg")]) == 2
    line = _refused(capsys.readouterr().err)
    assert (f"data.path {eurosat}: task.kind regression (--task) needs per-pixel targets "
            "(eofm-shard build --seg-dir), the data has class labels") in line
    assert "set task.kind (--task) to classification" in line
    assert _finetune(export, data, tmp_path / "test", f"data.test_path={eurosat}") == 2
    line = _refused(capsys.readouterr().err)
    assert (f"data.test_path {eurosat}: has class labels (one class per sample), data.path "
            f"{data} has multi-labels") in line
    assert "expected a test set labelled like data.path" in line and "--task" not in line
    assert not (tmp_path / "test" / "checkpoints").exists()


def test_finetune_resume_that_changes_the_data_order_is_refused(ben, tmp_path, capsys,
                                                                caplog) -> None:
    """h2-4: a resume with another data.batch_size (or an optim.accum_steps that changes the
    samples an epoch reads) continued silently with other samples at every step; a longer
    schedule stays allowed (with a warning), as for pretraining, and so does a moved copy."""
    data, export = ben
    out = tmp_path / "run"
    assert _finetune(export, data, out, "runtime.ckpt_every=1") == 0
    capsys.readouterr()
    for change, said in (("data.batch_size=2", "data.batch_size: the checkpoint's run "
                          f"({out / 'checkpoints'}) had 1, this one 2; it sets which samples "
                          "every step reads"),
                         ("data.seed=1", "data.seed: the checkpoint's run "
                          f"({out / 'checkpoints'}) had 0, this one 1"),  # and the held-out ones
                         ("data.test_fraction=0.34", "data: the training samples differ from "
                          "the checkpoint's run")):
        assert _finetune(export, data, out, change) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err
        if change.startswith("data.seed"):  # named once, not again as another split
            assert "samples differ" not in err
    assert "batch_size: 1" in (out / "config.yaml").read_text()  # a refused run leaves it
    copy = shutil.copytree(data, tmp_path / "moved")
    caplog.clear()
    assert _finetune(export, copy, out, "schedule.steps=2") == 0
    assert "the schedule differs from the checkpoint's (schedule.steps 1 -> 2)" in caplog.text
    assert "resumed from step 1" in caplog.text


def test_finetune_accum_steps_that_change_the_epoch_are_refused_on_resume() -> None:
    """h2-4: optim.accum_steps 1 -> 2 at data.batch_size 4 over 43 samples: an epoch read 40,
    now 42 (micro-batches of 2): later steps would read other samples; 1 -> 2 over 44 reads
    44 either way and is allowed."""
    saved = {"data": {"seed": 0, "batch_size": 4}, "optim": {"accum_steps": 1}}
    now = {"data": {"seed": 0, "batch_size": 4}, "optim": {"accum_steps": 2}}
    where = Path("out/checkpoints")
    problems = resume_checks.order_problems(saved, now, 43, where)
    assert problems == [
        "optim.accum_steps: the checkpoint's run (out/checkpoints) had 1, this one 2; with "
        "data.batch_size 4 an epoch then read 40 of the 43 training samples, now 42, so later "
        "steps would read other samples: resume with optim.accum_steps=1, or start a new run "
        "in another --out"]
    assert resume_checks.order_problems(saved, now, 44, where) == []


def test_finetune_resume_does_not_report_settings_it_never_reads() -> None:
    """A fine-tuning checkpoint written before optim.loss_norm existed lacks it; eofm-finetune
    never reads it (refused unless its default: NOT_READ), so a resume names no change of it
    ('optim.loss_norm null -> "micro_batch"' on every resume of such a run)."""
    from eofm.finetune.finetune_config import NOT_READ
    from eofm.pretrain.resume_changes import changed_settings

    sections = tuple(f"{s}." for s in resume_checks.FINETUNE_SECTIONS)
    assert {k for k in NOT_READ if k.startswith(sections)} <= resume_checks.NOT_RESUME_CHECKED
    saved = {"task": {"kind": "classification"}, "optim": {"accum_steps": 1}}
    now = {"task": {"kind": "classification"},
           "optim": {"accum_steps": 1, "loss_norm": "micro_batch"}}
    assert changed_settings(saved, now, resume_checks.FINETUNE_SECTIONS,
                            resume_checks.NOT_RESUME_CHECKED) == []


def test_finetune_ignore_value_with_a_class_task_is_refused(ben, tmp_path, capsys) -> None:
    """h2-5: task.ignore_value (unlabelled pixels of dense targets) was accepted and ignored
    for classification and multilabel."""
    data, export = ben
    for task in ("classification", "multilabel"):
        assert finetune_cli.main(["--encoder", str(export), "--data", str(data), "--task",
                                  task, "--out", str(tmp_path / "o"), "task.ignore_value=255",
                                  "--print-config"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert (f"task.ignore_value: expected null with task.kind '{task}' (it marks unlabelled "
                "pixels of segmentation and regression targets") in err and "got 255.0" in err
    assert finetune_cli.main(["--encoder", str(export), "--data", str(data), "--task",
                              "segmentation", "--out", str(tmp_path / "o"),
                              "task.ignore_value=255", "--print-config"]) == 0


def test_finetune_refuses_a_last_n_beyond_the_encoder_before_reading_data(
        ben: tuple[Path, Path], tmp_path, capsys) -> None:
    """encoder.last_n larger than the encoder's depth was refused only once the data had been
    opened (a raw folder is built first); it is refused right after the encoder loads: here
    the data path does not even exist, and the refusal is still the last_n one."""
    _, export = ben
    rc = finetune_cli.main(["--encoder", str(export), "--data", str(tmp_path / "no_such_data"),
                            "--task", "multilabel", "--out", str(tmp_path / "run"),
                            "encoder.freeze=last_n", "encoder.last_n=40"])
    err = capsys.readouterr().err
    assert rc == 2 and "encoder.last_n: expected 1..2 (the encoder's depth), got 40" in err, err
    assert "no_such_data" not in err
