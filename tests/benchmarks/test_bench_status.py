"""Benchmark exit statuses (1 after an error record, 77 when nothing was measured for want of
data) and bench_pretrain's quickstart part (its rate, a failed trainer's message)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

SKIP_STATUS = 77  # table.SKIPPED
FAKE_ERROR = "Traceback (most recent call last):\nValueError: unknown model 'vit_nope'\n"
# (script, argv after the script name) of a small run of each benchmark that spawns workers
RUNS = {
    "bench_selectivemae": ["--model", "vit_test_patch8", "--img-size", "32", "--batch-size", "2",
                           "--steps", "1"],
    "bench_satmaepp": ["--model", "vit_test_patch8", "--img-size", "16", "--scales", "2",
                       "--batch-size", "2", "--steps", "1"],
    "bench_softcon": ["--model", "vit_test_patch8", "--img-size", "32", "--batch-size", "2",
                      "--steps", "1"],
    "bench_pretrain": ["--device", "cuda", "--quick"],  # the model cases only (no quickstart)
}


def _records(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def _failing_worker(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run for a worker that crashed (as a model the registry lacks would)."""
    if kwargs.get("check"):
        raise subprocess.CalledProcessError(1, cmd, "", FAKE_ERROR)
    return subprocess.CompletedProcess(cmd, 1, "", FAKE_ERROR)


def _patch_run(monkeypatch: pytest.MonkeyPatch, mod: Any, run: Any) -> None:
    """``mod``'s own ``subprocess.run`` is ``run`` (subprocess itself, which other code such as
    table.machine's git calls uses, is left alone)."""
    monkeypatch.setattr(mod, "subprocess", SimpleNamespace(run=run))


def _main(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``name``'s main() as its command line would run it (sys.argv)."""
    mod = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    return mod.main()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_failed_measurement_exits_1(name: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    import scene_crops
    import torch

    mod = importlib.import_module(name)
    _patch_run(monkeypatch, mod, _failing_worker)
    if hasattr(mod, "SCENE") and name != "bench_pretrain":
        monkeypatch.setattr(mod, "SCENE", tmp_path)  # present; its crops come from the fake
        monkeypatch.setattr(scene_crops, "scene_crops",
                            lambda scene, bands, size, n: torch.zeros(n, len(bands), size, size))
    out = tmp_path / "out.jsonl"
    status = _main(name, [*RUNS[name], "--out", str(out)], monkeypatch)
    printed = _records(capsys.readouterr().out)
    errors = [r for r in printed if r.get("kind") == "error"]
    assert errors and all("unknown model 'vit_nope'" in r["error"] for r in errors), printed
    assert status == 1, f"{name}: exit status {status!r} after {len(errors)} error records"
    assert _records(out.read_text()) == printed
    assert all("machine" in r and r["bench"] for r in printed), printed


@pytest.mark.parametrize("name", ["bench_satmaepp", "bench_selectivemae", "bench_softcon"])
def test_absent_data_is_a_skip_not_a_success(name: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    mod = importlib.import_module(name)
    monkeypatch.setattr(mod, "SCENE", tmp_path / "no_scene")
    _patch_run(monkeypatch, mod, _failing_worker)  # never reached
    out = tmp_path / "out.jsonl"
    status = _main(name, [*RUNS[name], "--out", str(out)], monkeypatch)
    captured = capsys.readouterr()
    assert status == SKIP_STATUS, f"{name}: exit status {status!r} without its data"
    (rec,) = _records(captured.out)
    assert rec["kind"] == "skip" and "no_scene" in rec["reason"] and "machine" in rec
    assert _records(out.read_text()) == [rec]
    assert "skipped" in captured.err


# ------------------------------------------------------------------ bench_pretrain quickstart
WINDOWS = [  # the trainer's metrics.jsonl windows: batch 32, steps 10/20/30 and a last one of 5
    {"step": 10, "loss": 1.0, "step_time": 1.0, "samples_per_s": 32.0, "data_wait_share": 0.5},
    {"step": 20, "loss": 0.9, "step_time": 0.5, "samples_per_s": 64.0, "data_wait_share": 0.1},
    {"step": 30, "loss": 0.8, "step_time": 2.0, "samples_per_s": 16.0, "data_wait_share": 0.2},
    {"step": 35, "loss": 0.7, "step_time": 0.25, "samples_per_s": 128.0, "data_wait_share": 0.0},
]
# past the first window: 5 + 20 + 1.25 = 26.25 s for 320 + 320 + 160 samples over 25 steps
RATE, STEP_TIME, WAIT = 800 / 26.25, 26.25 / 25, (0.1 * 5 + 0.2 * 20) / 26.25


def test_steady_rates_pool_the_windows() -> None:
    from bench_pretrain import steady_rates

    got = steady_rates([{"step": 0, "keys": []}, *WINDOWS])  # a record of another kind too
    assert got["samples_per_s"] == pytest.approx(RATE)
    assert got["step_time_s"] == pytest.approx(STEP_TIME)
    assert got["samples_per_s"] == pytest.approx(32 / got["step_time_s"])  # batch / step time
    assert got["data_wait_share"] == pytest.approx(WAIT)
    assert (got["windows"], got["steps"]) == (3, 25)
    with pytest.raises(ValueError, match=r"metrics.jsonl.*samples_per_s.*got 1 records"):
        steady_rates([{"step": 1}])


def _trainer(code: int, stderr: str = "") -> Any:
    """A stand-in for the quickstart trainer's subprocess: writes WINDOWS as its metrics."""
    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        if code == 0:
            out = Path(next(a for a in cmd if a.startswith("runtime.out_dir=")).split("=", 1)[1])
            out.mkdir(parents=True)
            rows = [{**w, "peak_mem_mb": 100.0} for w in WINDOWS]
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif kwargs.get("check"):
            raise subprocess.CalledProcessError(code, cmd, b"", stderr.encode())
        return subprocess.CompletedProcess(cmd, code, "", stderr)
    return run


def test_quickstart_rate_agrees_with_its_step_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench_pretrain

    _patch_run(monkeypatch, bench_pretrain, _trainer(0))
    rec = bench_pretrain.run_quickstart(35)
    assert rec["samples_per_s"] == pytest.approx(RATE, abs=0.01)
    assert rec["step_time_s"] == pytest.approx(STEP_TIME, abs=1e-4)
    assert rec["data_wait_share"] == pytest.approx(WAIT, abs=1e-4)


def test_a_failed_quickstart_trainer_shows_its_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench_pretrain

    err = "".join(f"log line {i}\n" for i in range(40)) + \
        "eofm.pretrain.config.ConfigError: schedule.steps: expected > 0, got 0\n"
    _patch_run(monkeypatch, bench_pretrain, _trainer(2, err))
    with pytest.raises(SystemExit) as exc:
        bench_pretrain.run_quickstart(0)
    msg = str(exc.value.code)
    assert "status 2" in msg and "schedule.steps: expected > 0, got 0" in msg
    assert "log line 39" in msg and "log line 5\n" not in msg  # the tail, not all of it
