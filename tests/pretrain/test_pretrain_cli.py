"""``eofm-pretrain`` refusals: a message and status 2, never a traceback, and a refused resume
leaves the run's ``config.yaml`` as it was (all in-process, on a tiny dataset of the sample)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eofm.pretrain.cli import main


@pytest.fixture(scope="module")
def config(scene_tiles_32: Path, tmp_path_factory) -> Path:
    """A tiny CPU run of the bundled scene (its 144 tiles of 32 px, built once per session)."""
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(f"""
data:
  path: {scene_tiles_32}
  bands: {{s2: [B02, B03, B04, B08]}}
  shuffle_buffer: 0
  num_workers: 0
  batch_size: 8
model: {{name: vit_test_patch8, img_size: 32}}
objective: {{decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}}
schedule: {{steps: 1, warmup_steps: 0}}
logging: {{progress: false}}
""")
    return cfg


def _written_objective(out: Path) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())["objective"]


def test_a_refused_resume_keeps_the_config_it_tells_the_user_to_resume_with(
        config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["--config", str(config), f"runtime.out_dir={out}"]) == 0
    assert _written_objective(out)["decoder_dim"] == 32
    capsys.readouterr()
    status = main(["--config", str(config), f"runtime.out_dir={out}", "schedule.steps=2",
                   "objective.decoder_dim=48"])  # another decoder: the checkpoint does not fit
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert f"Resume with the config it was written with ({out / 'config.yaml'})" in err
    assert _written_objective(out)["decoder_dim"] == 32  # the file named is still the run's
    assert main(["--config", str(out / "config.yaml"), "schedule.steps=2"]) == 0  # and works
    assert _written_objective(out)["decoder_dim"] == 32
    assert (out / "checkpoints" / "step_000000002.pt").exists()


def test_a_dataset_that_is_not_there_is_a_config_problem_up_front(tmp_path: Path,
                                                                  capsys) -> None:
    """--print-config reports it with the other problems; a relative path says from where."""
    base = ["--config", str(Path(__file__).resolve().parents[2] / "launch" / "configs" /
                            "quickstart.yaml"), "--print-config", "data.build_from=null"]
    assert main([*base, f"data.path={tmp_path / 'none'}", "optim.base_lr=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eofm-pretrain: error: 2 problem(s)") and "optim.base_lr" in err
    assert (f"data.path: {tmp_path / 'none'} does not exist and data.build_from is not set; "
            f"expected a dataset folder written by `eofm-shard build`, or data.build_from="
            f"RAW_INPUT to build it there on first use") in err
    assert main([*base, "data.path=no/such/ds"]) == 2
    assert (f"data.path: no/such/ds does not exist (relative to the working directory "
            f"{Path.cwd()})") in capsys.readouterr().err
    assert main([*base, f"data.path={tmp_path}"]) == 0  # there (what it holds: checked later)
    assert main([*base, "data.path=https://example.org/ds"]) == 0  # a URL: read when training
    (tmp_path / "raw").mkdir()
    assert main([*base[:-1], f"data.path={tmp_path / 'none'}",
                 f"data.build_from={tmp_path / 'raw'}"]) == 0  # would be built


def test_dataset_and_checkpoint_failures_are_messages_not_tracebacks(config: Path,
                                                                     tmp_path: Path,
                                                                     capsys) -> None:
    base = ["--config", str(config), f"runtime.out_dir={tmp_path / 'run'}"]
    (tmp_path / "raw").mkdir()
    assert main([*base, f"data.path={tmp_path / 'built'}",
                 f"data.build_from={tmp_path / 'raw'}"]) == 2  # nothing to build from
    err = capsys.readouterr().err
    assert (f"eofm-pretrain: error: data.build_from: building {tmp_path / 'built'} from "
            f"{tmp_path / 'raw'} failed (eofm-shard exit status") in err
    assert main([*base, f"data.path={tmp_path / 'raw'}", "data.build_from=null"]) == 2
    assert (f"eofm-pretrain: error: {tmp_path / 'raw' / 'manifest.json'}: no manifest found"
            in capsys.readouterr().err)
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step_000000004.pt").write_bytes(b"not a checkpoint")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert (f"eofm-pretrain: error: {ckpts}: none of its 1 checkpoint(s) could be loaded "
            f"(step_000000004.pt: ") in err and "Traceback" not in err
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing resumed, nothing written


def test_input_refusals_found_by_a_hostile_input_audit(config: Path, scene_tiles_32: Path,
                                                       tmp_path: Path, capsys) -> None:
    """Each used to end in a traceback or a misleading message: a file as data.path, a build
    flag eofm-shard does not know, an unreadable config file (with a second, spurious problem),
    a damaged dataset (every sample unreadable, in a DataLoader worker), an init_from export
    that does not load."""
    import shutil

    base = ["--config", str(config), f"runtime.out_dir={tmp_path / 'run'}"]
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    assert main([*base, f"data.path={afile}"]) == 2
    err = capsys.readouterr().err
    assert f"data.path: {afile} is a file; expected a dataset folder" in err
    assert main([*base, f"data.path={tmp_path / 'new'}", f"data.build_from={tmp_path}",
                 "data.build_args=[--tilez, '32']", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert ("data.build_args: eofm-shard build refuses ['--tilez', '32']: unrecognized "
            "arguments: --tilez 32") in err and not (tmp_path / "new").exists()
    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "cannot read the YAML file" in err
    damaged = tmp_path / "damaged"
    shutil.copytree(scene_tiles_32, damaged)
    for shard in damaged.glob("*.tar"):
        shard.write_bytes(b"\0" * shard.stat().st_size)
    assert main([*base, f"data.path={damaged}", "data.num_workers=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"eofm-pretrain: error: {damaged}: skipped ") and "Traceback" not in err
    assert err.endswith("(in DataLoader worker process 0)")
    assert main([*base, f"model.init_from={afile}"]) == 2
    assert capsys.readouterr().err.startswith("eofm-pretrain: error: model.init_from: ")


@pytest.mark.parametrize("img_size", [16, 64])
def test_a_model_size_other_than_the_tiles_is_a_config_problem(config: Path, tmp_path: Path,
                                                                capsys, img_size: int) -> None:
    """model.img_size 16 or 64 on 32 px tiles without a crop was a shape error at the first
    step (round 2 of the hostile-input audit); now refused before it, naming both sizes."""
    out = tmp_path / "run"
    assert main(["--config", str(config), f"runtime.out_dir={out}",
                 f"model.img_size={img_size}"]) == 2
    err = capsys.readouterr().err
    assert (f"model.img_size: mae with model.img_size={img_size} takes samples of {img_size} x "
            f"{img_size} px, but the loader ships the 32 x 32 px tiles of") in err
    assert f"data.crop_size={img_size}" in err and "Traceback" not in err
    assert not (out / "checkpoints").exists()
    assert main(["--config", str(config), f"runtime.out_dir={out}", f"model.img_size={img_size}",
                 f"data.crop_size={img_size}"]) == 0  # a crop of that size: trains


def test_objective_params_are_checked_by_name_and_kind(config: Path, tmp_path: Path,
                                                       capsys) -> None:
    """An unknown MAE parameter was a TypeError from MAE.__init__; a value of the wrong kind
    failed deep in the objective."""
    base = ["--config", str(config), f"runtime.out_dir={tmp_path / 'run'}"]
    assert main([*base, "objective.params.foo=1"]) == 2
    assert "objective.params: unknown key(s) for 'mae': 'foo'" in capsys.readouterr().err
    assert main([*base, "objective.params.min_valid_fraction=half"]) == 2
    assert ("objective.params.min_valid_fraction: expected a number (the default is 0.5), got "
            "'half'") in capsys.readouterr().err
    bad = tmp_path / "base_int.yaml"
    bad.write_text("_base_: 5\n")
    assert main(["--config", str(bad), "--print-config"]) == 2
    assert "_base_: expected a parent YAML file name or a list of them" in capsys.readouterr().err


def test_an_out_dir_inside_the_dataset_is_refused(config: Path, scene_tiles_32: Path,
                                                  capsys) -> None:
    """Checkpoints and metrics written into the dataset folder (round 2 of the audit)."""
    for out in (scene_tiles_32, scene_tiles_32 / "run"):
        assert main(["--config", str(config), f"runtime.out_dir={out}", "--print-config"]) == 2
        assert f"runtime.out_dir: {out} is inside data.path" in capsys.readouterr().err


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`eofm-pretrain --print-config | head` used to end in a BrokenPipeError traceback when
    the reader went away first; now the command stops quietly with 141 (128 + SIGPIPE)."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from eofm.pretrain.cli import main; "
             "sys.exit(main(['--config', 'launch/configs/quickstart.yaml', '--print-config']))"],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
            cwd=Path(__file__).resolve().parents[2])
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_a_broken_pipe_other_than_stdout_is_still_an_error() -> None:
    """Only a write to standard output may end a command quietly: a broken pipe of its own
    work (a ``pipe:`` stream, a worker's connection) keeps its traceback."""
    import sys

    from eofm.data_shards.command import stdout_may_close

    @stdout_may_close
    def work() -> int:
        print("started")
        raise BrokenPipeError("a data stream's pipe")

    before = sys.stdout
    with pytest.raises(BrokenPipeError, match="a data stream's pipe"):
        work()
    assert sys.stdout is before


def _refused_before_any_build(base: list[str], tmp_path: Path, capsys, expected: str) -> None:
    """The run of ``base`` with a data.build_from is refused (status 2, ``expected`` in the
    error) before the build starts and before anything is written."""
    (tmp_path / "raw").mkdir()  # nothing to build from: a build would fail with its own error
    assert main([*base, f"data.path={tmp_path / 'built'}",
                 f"data.build_from={tmp_path / 'raw'}"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "data.build_from" not in err, err
    assert not (tmp_path / "built").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "expected"), [
    ("model.name=vit_tinny", "model.name: unknown model 'vit_tinny' (did you mean "),
    ("objective.params.masking=bogus",
     "objective.params.masking: expected 'independent' or 'consistent', got 'bogus'"),
    ("model.overrides.bogus=1", "model.overrides.bogus: vit_test_patch8 takes no such argument"),
    ("model.img_size=36", "model.img_size: expected multiples of 8 (vit_test_patch8 makes one "
                          "token of each 8 x 8 pixels), e.g. (32, 32), got (36, 36)")])
def test_print_config_refuses_what_the_run_refuses_before_reading_data(
        config: Path, tmp_path: Path, capsys, override: str, expected: str) -> None:
    """--print-config ("checked configuration") printed and exited 0 on a model name the run
    refuses (validate_launch was not run); objective.params values, model.overrides and an
    img_size the patch size does not divide passed it and the launch preflight, and the run
    found them only after building the dataset (data.build_from), one at a time."""
    base = ["--config", str(config), f"runtime.out_dir={tmp_path / 'run'}", override]
    assert main([*base, "--print-config"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and expected in err and f"configuration {config}:" in err
    _refused_before_any_build(base, tmp_path, capsys, expected)


def test_typed_objective_fields_the_objective_does_not_read_are_refused_up_front(
        config: Path, tmp_path: Path, capsys) -> None:
    """SoftCon reads none of objective.mask_ratio, norm_pix_loss, decoder_*: one set for it
    passed --print-config and the launch preflight, and was refused only when the objective
    was built, after the dataset was read or built (under a launcher: status 1 and torchrun's
    traceback instead of 2). The objective's registration names the fields it reads, and the
    up-front check refuses the others."""
    from eofm.pretrain.cli import preflight

    expected = ("objective.mask_ratio: softcon does not use it, got 0.5; remove it (its "
                "settings go in objective.params)")
    base = ["--config", str(config), f"runtime.out_dir={tmp_path / 'run'}",
            "objective={_replace_: true, name: softcon, mask_ratio: 0.5}"]
    assert main([*base, "--print-config"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and expected in err and f"configuration {config}:" in err
    assert "decoder" not in err  # the tiny config's decoder_* went with _replace_
    assert preflight(base) == 2
    assert expected in capsys.readouterr().err
    _refused_before_any_build(base, tmp_path, capsys, expected)
    # the default value of a field it does not read is no setting: accepted
    assert main([*base[:-1], "objective={_replace_: true, name: softcon, mask_ratio: 0.75}",
                 "--print-config"]) == 0
    # the masked autoencoders read every typed field
    assert main([*base[:-1], "objective.mask_ratio=0.5", "--print-config"]) == 0


@pytest.mark.parametrize("strategy", ["deepspeed", "ddp"])
def test_the_launch_preflight_refuses_checkpoints_of_the_other_strategy_kind(
        tmp_path: Path, strategy: str) -> None:
    """A DeepSpeed job over plain .pt checkpoints (or the reverse) passed the preflight: every
    rank started, imported DeepSpeed and built its engine before refusing (status 2 each,
    torchrun 1). The preflight now gives the ranks' refusal before any rank starts."""
    import torch

    from eofm.pretrain.checkpoint import DS_MARKER
    from eofm.pretrain.config import load_config
    from eofm.pretrain.resume_preflight import resume_problems

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    if strategy == "deepspeed":  # plain files of a ddp run
        torch.save({"step": 3}, ckpts / "step_000000003.pt")
        expected = "holds 1 plain checkpoint(s) (step_000000003.pt)"
    else:  # a complete DeepSpeed folder
        (ckpts / "step_000000003").mkdir()
        (ckpts / "step_000000003" / DS_MARKER).write_text("")
        expected = "holds 1 DeepSpeed checkpoint(s) (step_000000003)"
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(str(root / "launch" / "configs" / "quickstart.yaml"),
                      [f"runtime.out_dir={tmp_path / 'run'}", f"runtime.strategy={strategy}",
                       *(["runtime.zero_stage=2"] if strategy == "deepspeed" else [])])
    (problem,) = resume_problems(cfg, 2)
    assert problem.startswith("runtime.strategy: ") and expected in problem, problem
    assert f"this job runs {strategy!r}" in problem
