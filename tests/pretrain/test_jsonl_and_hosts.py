"""JSON-lines files after a write cut short by a kill, and the first host of a SLURM node list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eofm.pretrain import distributed as D
from eofm.pretrain.metrics import JsonlLogger
from eofm.pretrain.resume import drop_later_records


def _killed_mid_write(path: Path, steps: int) -> None:
    """Records of steps 1..``steps``, then the next step's record cut before its end."""
    with path.open("w", encoding="utf-8") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "keys": ["a", "b"]}) + "\n")
        f.write(json.dumps({"step": steps + 1, "keys": ["a", "b"]})[:-7])  # no "]}" nor "\n"


@pytest.mark.parametrize(("resumed_at", "dropped"), [(2, 0), (1, 1)])
def test_a_record_cut_mid_write_goes_and_the_replayed_record_gets_its_own_line(
        tmp_path: Path, resumed_at: int, dropped: int) -> None:
    """A kill in the middle of a record's write leaves a last line without its newline; the
    run resumed at a checkpoint writes that step again: the fragment goes (whether or not a
    whole later record went too) and every line of the file is one record."""
    path = tmp_path / "samples.rank0.jsonl"
    _killed_mid_write(path, 2)
    with JsonlLogger(path, enabled=True) as records:
        assert drop_later_records(records, resumed_at) == dropped
        for s in range(resumed_at + 1, 4):  # the steps after the checkpoint, trained again
            records.log({"step": s, "keys": ["c", "d"]})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    got = [json.loads(line) for line in text.splitlines()]  # a fragment would not parse
    assert [r["step"] for r in got] == [1, 2, 3]
    assert [r["keys"] for r in got][resumed_at:] == [["c", "d"]] * (3 - resumed_at)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_whole_last_record_without_its_newline_is_kept_on_a_line_of_its_own(
        tmp_path: Path) -> None:
    """A last line that is a whole record (only the newline missing) of a step the resume
    keeps stays; the next record starts a new line instead of being glued onto it."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}', encoding="utf-8")
    with JsonlLogger(path, enabled=True) as records:
        assert records.drop_after(2) == 0
        records.log({"step": 3, "loss": 0.25})
    got = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(r["step"], r["loss"]) for r in got] == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_lines_that_do_not_parse_inside_the_file_are_still_kept(tmp_path: Path) -> None:
    """Only a last line without a newline counts as a cut write; a bad line that ends in a
    newline is someone else's and stays, as before."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n', encoding="utf-8")
    with JsonlLogger(path, enabled=True) as records:
        assert records.drop_after(1) == 1
    assert path.read_text(encoding="utf-8") == '{"step": 1}\nnot json\n'


@pytest.mark.parametrize(("nodelist", "host"), [
    ("gpu[007-009,12],cpu1", "gpu007"),
    ("rack[1-2]-node[01-04]", "rack1-node01"),
    ("nid[001-004]-ib", "nid001-ib"),
    ("node[1-4].cluster", "node1.cluster"),
    ("a,b", "a"),
    ("node[01-04,07]", "node01"),
    ("node[07,01-04]", "node07"),
    ("host", "host"),
    (" x[1] ", "x1"),
    ("r[3-4]n[2,5],r9n1", "r3n2"),
])
def test_first_host_keeps_the_text_around_every_bracket_group(nodelist: str, host: str) -> None:
    assert D.first_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["", ",a", "gpu[007", "gpu]x", "gpu[a-b]", "gpu[]",
                                      "a[1[2]]"])
def test_first_host_rejects_what_is_no_node_list(nodelist: str) -> None:
    with pytest.raises(ValueError, match=r"SLURM node list.*expected.*got"):
        D.first_host(nodelist)


def test_srun_rendezvous_host_and_a_bad_node_list_names_its_variable() -> None:
    env = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "8", "SLURM_JOB_ID": "7",
           "SLURM_STEP_NODELIST": "nid[001-002]-ib"}
    assert D.detect_env(env).master_addr == "nid001-ib"
    with pytest.raises(ValueError, match=r"SLURM_JOB_NODELIST.*expected.*got \[x\]"):
        D.detect_env({**env, "SLURM_STEP_NODELIST": "", "SLURM_JOB_NODELIST": "gpu[x]"})
