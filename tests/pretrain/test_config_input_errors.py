"""Configuration inputs that used to end in a traceback or a misleading message: a YAML file
that is not UTF-8 text (or a ``_base_`` parent that is not), a file that is a lone value, an
interpolation that cannot be resolved, and a ``data.path`` that is, lies inside or holds the
raw input it would be built from."""

from __future__ import annotations

from pathlib import Path

import pytest

from eofm.pretrain.cli import main
from eofm.pretrain.config import ConfigError, deepspeed_json_problems, load_config

OK = ["data.path=/data/ds"]
NOT_UTF8 = b"\xff\xfe garbage\n"


def _problems(path: Path | None, overrides: list[str], **kwargs: bool) -> tuple[str, list[str]]:
    """The message and problems of the ConfigError that loading ``path`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, **kwargs)
    return str(info.value), info.value.problems


def test_a_config_file_that_is_not_utf8_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    """Not a UnicodeDecodeError traceback: one problem naming the file, the config's own or a
    ``_base_`` parent's; the CLI says so with status 2."""
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(NOT_UTF8)
    message, problems = _problems(binary, OK)
    assert message.startswith(f"1 problem(s) in the configuration {binary}:")
    assert problems == [f"{binary}: cannot read the YAML file ('utf-8' codec can't decode byte "
                        "0xff in position 0: invalid start byte)"]
    child = tmp_path / "child.yaml"
    child.write_text("_base_: binary.yaml\nschedule: {steps: 2}\n")
    assert _problems(child, OK)[1] == problems  # the parent named, not the child
    assert main(["--config", str(binary), "--print-config", *OK]) == 2
    err = capsys.readouterr().err
    assert f"{binary}: cannot read the YAML file ('utf-8' codec" in err
    assert "Traceback" not in err and "UnicodeDecodeError" not in err


def test_a_deepspeed_json_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    """The other user file the configuration reads (a guard: it was already refused)."""
    ds = tmp_path / "ds.json"
    ds.write_bytes(NOT_UTF8)
    cfg = load_config(None, [*OK, "runtime.strategy=deepspeed", "runtime.zero_stage=2",
                             f"runtime.deepspeed_config={ds}"], check=False)
    problems = deepspeed_json_problems(cfg)
    assert len(problems) == 1
    assert problems[0].startswith(f"runtime.deepspeed_config: {ds}: expected a DeepSpeed JSON "
                                  "file, cannot read it (")


@pytest.mark.parametrize(("text", "got"), [("hello\n", "the value 'hello'"),
                                           ("42\n", "the value '42'"),
                                           ("''\n", "the value ''"),
                                           ("- a\n- b\n", "a list")])
def test_a_file_that_is_not_a_mapping_is_refused_as_such(tmp_path: Path, text: str,
                                                         got: str) -> None:
    """A lone string is not the mapping ``{hello: null}`` ("hello: unknown key"); a lone
    number is not "Invalid loaded object type"."""
    path = tmp_path / "lone.yaml"
    path.write_text(text)
    assert _problems(path, OK)[1] == [f"{path}: expected a mapping at the top level, got {got}"]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n", "null\n"])
def test_an_empty_file_is_still_an_empty_configuration(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert load_config(path, OK).data.path == "/data/ds"


def test_an_unresolvable_interpolation_is_one_line_naming_the_file_and_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file as the source, the key, and only the first line of OmegaConf's message (not
    its ``full_key`` / ``reference_type`` / ``object_type`` lines)."""
    monkeypatch.delenv("EOFM_TEST_UNSET_VAR", raising=False)
    path = tmp_path / "env.yaml"
    path.write_text("data:\n  path: /data/ds\nruntime:\n  out_dir: ${oc.env:EOFM_TEST_UNSET_VAR}/x\n")
    message, problems = _problems(path, [])
    assert message.startswith(f"1 problem(s) in the configuration {path}:")
    assert problems == ["runtime.out_dir: cannot resolve the configuration: KeyError raised "
                        "while resolving interpolation: \"Environment variable "
                        "'EOFM_TEST_UNSET_VAR' not found\""]
    monkeypatch.setenv("EOFM_TEST_BATCH", "many")  # resolves, but not to an integer
    message, problems = _problems(None, [*OK, "data.batch_size=${oc.env:EOFM_TEST_BATCH}"])
    assert message.startswith("1 problem(s) in the configuration:")
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith("data.batch_size: cannot resolve the configuration: ")
    assert "'many'" in problems[0]


@pytest.mark.parametrize(("overrides", "relation"), [
    (["data.path=raw", "data.build_from=raw"], "raw is data.build_from raw"),
    (["data.path=raw/ds", "data.build_from=raw"], "raw/ds is inside data.build_from raw"),
    (["data.path=link/ds", "data.build_from=raw"],  # link: a symlink to raw
     "link/ds is inside data.build_from raw"),
    (["data.path=raw/s1/ds", "data.build_from=first", "data.build_more=[raw/s1]"],
     "raw/s1/ds is inside data.build_more[0] raw/s1"),
])
def test_a_data_path_that_overlaps_a_raw_input_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str],
        relation: str) -> None:
    """The build would write the dataset into its raw input (as eofm-shard build refuses):
    one problem naming both keys and paths, relative ones with the working directory they are
    relative to. A data.path holding its raw input is built as eofm-shard build builds it."""
    (tmp_path / "raw" / "s1").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "raw")
    monkeypatch.chdir(tmp_path)
    problems = _problems(None, overrides, check_paths=True)[1]
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"data.path: {relation} (relative to the working directory "
                                  f"{tmp_path}); the build would write the dataset into that "
                                  "raw input"), problems
    load_config(None, ["data.path=raw", "data.build_from=raw/s1"], check_paths=True)  # holds


def test_a_data_path_apart_from_its_raw_inputs_passes(tmp_path: Path, capsys) -> None:
    """Siblings, a URL input and a URL data.path pass; the CLI refuses an overlap with status
    2 before any build (nothing written)."""
    raw, ds = tmp_path / "raw", tmp_path / "ds"
    raw.mkdir()
    for overrides in ([f"data.path={ds}", f"data.build_from={raw}"],
                      [f"data.path={raw}2", f"data.build_from={raw}"],  # a prefix, not inside
                      [f"data.path={ds}", "data.build_from=https://example.org/raw",
                       f"data.build_more=[{raw}]"],
                      ["data.path=https://example.org/ds", f"data.build_from={raw}"]):
        load_config(None, overrides, check_paths=True)
    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(f"runtime: {{out_dir: {run}}}\n")
    assert main(["--config", str(config), f"data.path={raw / 'ds'}",
                 f"data.build_from={raw}"]) == 2
    err = capsys.readouterr().err
    assert (f"data.path: {raw / 'ds'} is inside data.build_from {raw}; the build would write "
            "the dataset into that raw input: choose a data.path outside it") in err
    assert not (raw / "ds").exists() and not run.exists()
