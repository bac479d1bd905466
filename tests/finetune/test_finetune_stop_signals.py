"""A SIGTERM to ``eofm-finetune`` outside its training loop: while it loads the encoder, while
it builds a raw data folder into a temporary dataset, and while it evaluates the held-out
split, the command ends with the requeue status (75) and ``OUT/REQUEUE``, leaves no output
that looks complete, and its rerun completes. Each run is a real subprocess; a small wrapper
blocks it at the phase and writes a marker file the test waits for (no timing guesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HOOK = '''
import os, runpy, sys, time
from pathlib import Path

phase, marker = os.environ["EOFM_TEST_PHASE"], Path(os.environ["EOFM_TEST_MARKER"])

def block():
    """Say the phase began, then wait (up to 10 min) for the stop the test sends."""
    from eofm.pretrain.preemption import active_handler
    marker.write_text("here\\n")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        h = active_handler()
        if h is not None and h.should_stop:  # a phase that only notes the stop goes on
            return
        time.sleep(0.05)

import eofm.finetune.finetuner as ft
if phase == "encoder":
    load = ft.load_encoder
    def load_encoder(*a, **k):
        block()
        return load(*a, **k)
    ft.load_encoder = load_encoder
elif phase == "build":
    import eofm.data_shards.build as b
    samples = b.iter_samples
    def iter_samples(*a, **k):
        block()
        yield from samples(*a, **k)
    b.iter_samples = iter_samples
elif phase == "evaluate":
    evaluate = ft.Finetuner.evaluate
    def evaluate_blocked(self):
        block()
        return evaluate(self)
    ft.Finetuner.evaluate = evaluate_blocked
sys.argv = ["eofm-finetune", *sys.argv[1:]]
runpy.run_module("eofm.finetune.finetune", run_name="__main__")
'''


def _command(hook: Path, data: Path, encoder: Path, out: Path) -> list[str]:
    return [sys.executable, str(hook), "--encoder", str(encoder), "--data", str(data),
            "--task", "multilabel", "--out", str(out), "schedule.steps=2", "schedule.epochs=null",
            "data.batch_size=2", "runtime.ckpt_every=1", "logging.progress=false"]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp), **extra}


def _stop_at(cmd: list[str], env: dict[str, str], marker: Path) -> tuple[int, str]:
    """Run ``cmd``, send SIGTERM once ``marker`` exists; its status and output."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a timing assertion
        while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the phase was never reached:\n{p.communicate()[0]}"
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=600)
        return p.returncode, out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("phase", ["encoder", "build", "evaluate"])
def test_a_stop_outside_training_requeues_and_the_rerun_completes(
        phase: str, sample_data: Path, bigearthnet_export: tuple[Path, Path],
        tmp_path: Path) -> None:
    shards, encoder = bigearthnet_export
    data = sample_data / "bigearthnet" if phase == "build" else shards  # raw: built in TMPDIR
    hook, marker, out, tmp = (tmp_path / "hook.py", tmp_path / "reached", tmp_path / "run",
                              tmp_path / "tmp")
    hook.write_text(HOOK)
    tmp.mkdir()
    cmd = _command(hook, data, encoder, out)
    status, text = _stop_at(cmd, _env(tmp, EOFM_TEST_PHASE=phase,
                                      EOFM_TEST_MARKER=str(marker)), marker)
    assert status == 75, f"status {status}, expected 75 (requeue):\n{text}"
    assert (out / "REQUEUE").is_file(), text
    assert "exiting with status 75" in text, text
    assert "Traceback" not in text, text
    assert not (out / "results.json").exists(), "a stopped run must not look evaluated"
    assert not list(tmp.glob("eofm-labelled-*")), "the raw build's temporary folder was left"
    if phase == "build":  # cut short at once, not after the build
        assert "during the raw data folder's build" in text, text
    if phase == "evaluate":  # the final checkpoint was saved before the evaluation began
        assert any((out / "checkpoints").iterdir())
    done = subprocess.run(cmd, env=_env(tmp, EOFM_TEST_PHASE="none",
                                        EOFM_TEST_MARKER=str(marker)),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "results.json").is_file()
    assert (out / "model" / "config.json").is_file()
    assert not (out / "REQUEUE").exists()
