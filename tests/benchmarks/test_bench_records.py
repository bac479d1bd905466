"""Every benchmark record says which benchmark wrote it and where it was measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MACHINE_KEYS = {"hostname", "cpu_model", "cpu_count", "device_name", "torch", "cuda", "python",
                "git_commit", "git_dirty", "utc"}


def _check_provenance(rec: dict, bench: str) -> None:
    import torch

    assert rec["bench"] == bench, rec
    machine = rec["machine"]
    assert set(machine) == MACHINE_KEYS, sorted(machine)
    assert machine["torch"] == torch.__version__ and machine["cuda"] == torch.version.cuda
    assert machine["cpu_count"] == os.cpu_count()
    assert datetime.fromisoformat(machine["utc"]).utcoffset().total_seconds() == 0


def test_emit_adds_bench_and_machine_to_stdout_and_out(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    from table import emit

    out = tmp_path / "r.jsonl"
    emit({"kind": "run", "samples_per_s": 1.5}, out, bench="bench_x")
    emit({"kind": "run", "bench": "quickstart"}, out, bench="bench_x")  # names its own part
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert printed == written and len(written) == 2
    _check_provenance(written[0], "bench_x")
    _check_provenance(written[1], "quickstart")
    assert written[0]["samples_per_s"] == 1.5 and written[0]["kind"] == "run"


def test_tables_leave_out_the_machine_block(capsys: pytest.CaptureFixture) -> None:
    from table import emit, print_table

    rec = emit({"model": "vit_x", "samples_per_s": 2.0}, bench="bench_x")
    capsys.readouterr()
    print_table([rec], [("model", "model"), ("machine", "machine"),
                        ("samples_per_s", "samples/s")])
    text = capsys.readouterr().out
    assert "vit_x" in text and "samples/s" in text
    assert rec["machine"]["hostname"] not in text and "machine" not in text


def test_a_benchmark_run_writes_machine_and_bench_on_every_record() -> None:
    """elastic_replay on a tiny epoch (a few seconds): every JSON line it prints."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "elastic_replay.py"),
                           "--sizes", "2000", "--world", "2", "--workers", "2", "--buffer", "10"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    recs = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert len(recs) == 2, done.stdout
    for rec in recs:
        _check_provenance(rec, "elastic_replay")
        assert rec["epoch_samples"] == 2000


def test_every_benchmark_writes_through_the_shared_writer() -> None:
    """A benchmark that prints its records itself would leave the machine block out."""
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py")
                     if p.name not in ("table.py", "scene_crops.py"))
    assert len(scripts) >= 10, scripts
    missing = [p.name for p in scripts if "Records(" not in p.read_text()]
    assert not missing, f"benchmarks not writing through table.Records: {missing}"
