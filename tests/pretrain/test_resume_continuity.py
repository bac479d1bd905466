"""What a stopped and resumed pretraining run keeps beyond the training state: the samples its
reconstruction pictures show, whether it asks to be requeued when the stop came on its last
step, the lineage of ``model.init_from`` as the first launch read it, and the requeue status
for a stop that cuts the resume itself short."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eofm.pretrain.config import load_config
from eofm.pretrain.preemption import REQUEUE_EXIT_CODE, REQUEUE_MARKER, PreemptionHandler
from eofm.pretrain.trainer import Trainer


@pytest.fixture(scope="module")
def config(tiny_run_config: Callable[..., Path]) -> Path:
    """The tiny CPU run (144 tiles of 32 px, batch 16), checkpointing every 2 steps."""
    return tiny_run_config({"runtime": {"ckpt_every": 2}, "logging": {"sample_keys": False}},
                           name="continuity")


def _fit(config: Path, out: Path, *overrides: str, stop_before: int | None = None) -> int:
    """One launch of the run in ``out``; with ``stop_before`` a SIGUSR1-like stop is requested
    as step ``stop_before`` (1-based) starts, so the run stops at its end."""
    cfg = load_config(str(config), [f"runtime.out_dir={out}", *overrides])
    with PreemptionHandler() as handler:
        trainer = Trainer(cfg, preempt=handler)
        if stop_before is not None:
            hook = trainer._hook

            def stop_at(name: str, *args: Any) -> None:
                if name == "on_step_start" and args[0] + 1 == stop_before:
                    handler.request_stop(signal.SIGUSR1)
                hook(name, *args)

            trainer._hook = stop_at  # type: ignore[method-assign]
        return trainer.fit()


def test_a_resumed_run_pictures_the_same_samples(config: Path, tmp_path: Path) -> None:
    """The previews keep the first batch's samples; a resumed run kept its own first batch
    (other tiles), so its pictures no longer compared with the earlier ones. Checkpoints now
    carry the samples: the resumed run's picture at step 6 is the uninterrupted run's, byte
    for byte (CPU training is deterministic)."""
    extra = ("schedule.steps=6", "logging.preview_every=3")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _fit(config, whole, *extra) == 0
    assert _fit(config, cut, *extra, stop_before=4) == REQUEUE_EXIT_CODE
    assert _fit(config, cut, *extra) == 0
    for step in (3, 6):
        name = f"step_{step:09d}.png"
        assert (cut / "previews" / name).read_bytes() == (whole / "previews" / name).read_bytes()


def test_a_stop_on_the_last_step_ends_the_run_without_a_requeue(config: Path,
                                                               tmp_path: Path) -> None:
    """A stop (SLURM's warning) that arrives during the last step: the run is finished, so it
    saves its final checkpoint and exits 0 with no REQUEUE marker (it exited 75 and asked to
    be requeued, and the requeued job found nothing to train). A stop one step earlier still
    requeues."""
    out = tmp_path / "last"
    assert _fit(config, out, "schedule.steps=3", stop_before=3) == 0
    assert not (out / REQUEUE_MARKER).exists()
    assert (out / "checkpoints" / "step_000000003.pt").is_file()
    early = tmp_path / "early"
    assert _fit(config, early, "schedule.steps=3", stop_before=2) == REQUEUE_EXIT_CODE
    assert (early / REQUEUE_MARKER).exists()


def test_a_stop_that_cuts_the_resume_short_requeues_the_job(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop during the resume itself (DeepSpeed's universal conversion of a checkpoint of
    another world size raises StopRequested) ended the process with status 75 but no REQUEUE
    marker, so a torchrun job (status 1 for any rank's failure) was not requeued: now it
    leaves the marker, as a stop while the model is built does."""
    from eofm.pretrain import trainer as T
    from eofm.pretrain.preemption import StopRequested

    def stopped(self: Trainer) -> None:
        raise StopRequested("stop requested while converting step_000000002")

    monkeypatch.setattr(T.Trainer, "resume", stopped)
    out = tmp_path / "stopped"
    cfg = load_config(str(config), [f"runtime.out_dir={out}", "schedule.steps=3"])
    assert T.run(cfg) == REQUEUE_EXIT_CODE
    assert (out / REQUEUE_MARKER).exists()
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
