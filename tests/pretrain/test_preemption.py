"""Preemption: signals only raise a flag, handlers are restored, SIGTERM ends in save + requeue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from eofm.pretrain.preemption import (
    REQUEUE_EXIT_CODE,
    REQUEUE_MARKER,
    PreemptionHandler,
    StopRequested,
    clear_requeue_marker,
    marks_requeue,
    write_requeue_marker,
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_sets_flag_and_handlers_are_restored(sig: int) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    with PreemptionHandler() as h:
        assert not h.should_stop and h.received is None
        os.kill(os.getpid(), sig)
        assert h.should_stop and h.received == sig
        assert signal.Signals(sig).name in h.describe()
        os.kill(os.getpid(), signal.SIGTERM)  # a later signal keeps the first one
        assert h.received == sig
    assert {s: signal.getsignal(s) for s in before} == before


def test_first_ctrl_c_stops_second_raises() -> None:
    with PreemptionHandler() as h:
        os.kill(os.getpid(), signal.SIGINT)
        assert h.should_stop and h.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes; never reached


def test_request_stop_and_markers(tmp_path: Path) -> None:
    h = PreemptionHandler()
    h.request_stop()
    assert h.should_stop and h.describe() == "stop requested"
    assert REQUEUE_EXIT_CODE == 75 and not clear_requeue_marker(tmp_path)
    assert write_requeue_marker(tmp_path) == tmp_path / REQUEUE_MARKER
    assert clear_requeue_marker(tmp_path) and not (tmp_path / REQUEUE_MARKER).exists()


@pytest.mark.parametrize(("rank", "local_rank", "writes"),
                         [(0, 0, True), (1, 1, False), (4, 0, True), (5, 1, False)])
def test_every_nodes_first_rank_writes_the_requeue_marker(rank: int, local_rank: int,
                                                           writes: bool) -> None:
    """Each node's launcher reads the marker after its own torchrun exits; a node other than
    rank 0's must not depend on seeing rank 0's file on the shared folder in time (NFS caches
    what a client sees), so its first rank (rank 4 of 8 on the second of two 4-GPU nodes) writes
    it too, and only one rank per node."""
    assert marks_requeue(rank, local_rank) is writes


def _long_phase(signals: list[int], seconds: float = 5.0) -> str:
    """Stands in for a dataset build: signals itself, then runs for ``seconds``."""
    for sig in signals:
        os.kill(os.getpid(), sig)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"


def test_a_stop_signal_cuts_short_only_the_phase_named_interruptible() -> None:
    """Within ``interrupting(fn)``, the first stop signal raises StopRequested (a SystemExit
    with the requeue status) while ``fn`` runs, and only then: the code around it (a
    collective other ranks wait in) sees only the flag. Later signals only keep the flag; a
    second Ctrl-C still raises KeyboardInterrupt."""
    with PreemptionHandler() as h, h.interrupting(_long_phase, "the build"):
        os.kill(os.getpid(), signal.SIGUSR1)  # outside _long_phase: the flag only
        assert h.should_stop
    with PreemptionHandler() as h, h.interrupting(_long_phase, "the build"):
        with pytest.raises(StopRequested) as stop:
            _long_phase([signal.SIGTERM])
        # raised inside the phase (its frame is on the traceback) at once: before its wait began
        waited = [("deadline" in e.locals) for e in stop.traceback if e.name == "_long_phase"]
        assert waited == [False] and h.received == signal.SIGTERM
        assert stop.value.code == REQUEUE_EXIT_CODE and isinstance(stop.value, SystemExit)
        assert str(stop.value) == "received SIGTERM during the build"
        assert _long_phase([signal.SIGUSR1], 0.1) == "finished"  # one raise per stop
    with PreemptionHandler() as h, h.interrupting(_long_phase, "the build"):
        with pytest.raises(StopRequested):
            _long_phase([signal.SIGINT])
        with pytest.raises(KeyboardInterrupt):
            _long_phase([signal.SIGINT])
    with PreemptionHandler() as h:
        assert _long_phase([signal.SIGUSR1], 0.1) == "finished"  # not named: the flag only
        assert h.should_stop


LOOP = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from eofm.pretrain.checkpoint import CheckpointManager
    from eofm.pretrain.preemption import REQUEUE_EXIT_CODE, PreemptionHandler, write_requeue_marker
    out = Path(sys.argv[1])
    mgr = CheckpointManager(out, rank=0)
    with PreemptionHandler() as h:
        step = 0
        while True:
            step += 1
            time.sleep(0.01)  # a training step
            if step == 3:
                (out / "running").write_text("")
            if h.should_stop:
                mgr.save({"step": step}, step)
                write_requeue_marker(out)
                sys.exit(REQUEUE_EXIT_CODE)
""")


def test_sigterm_saves_and_exits_for_requeue(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", LOOP, str(tmp_path)])
    deadline = time.monotonic() + 60
    while not (tmp_path / "running").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == REQUEUE_EXIT_CODE
    assert (tmp_path / REQUEUE_MARKER).exists()
    [ckpt] = tmp_path.glob("step_*.pt")
    assert torch.load(ckpt, weights_only=True)["step"] >= 3
