"""A SIGTERM to ``eofm-shard build --workers 2`` stops its writer processes with it: none is
left writing into ``--out``; the command ends as Ctrl-C does (one line, status 130). A real
subprocess; a wrapper blocks every writer at its first sample after writing a marker file
named by its pid, which the test waits for (no timing guesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HOOK = '''
import os, runpy, sys, time
from pathlib import Path
import eofm.data_shards.build as b

samples = b.iter_samples

def iter_samples(*a, **k):
    """Mark this writer, then block (up to 10 min) before its first sample."""
    Path(os.environ["EOFM_TEST_MARKERS"], str(os.getpid())).write_text("writer\\n")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.05)
    yield from samples(*a, **k)

b.iter_samples = iter_samples  # top level: the spawned writers import this file too
if __name__ == "__main__":
    sys.argv = ["eofm-shard", *sys.argv[1:]]
    runpy.run_module("eofm.data_shards", run_name="__main__")
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_sigterm_stops_the_build_writers_too(sample_data: Path, tmp_path: Path) -> None:
    hook, markers, out = tmp_path / "hook.py", tmp_path / "markers", tmp_path / "out"
    log = tmp_path / "stderr.txt"  # a file, not a pipe: orphaned writers would hold a pipe open
    hook.write_text(HOOK)
    markers.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EOFM_TEST_MARKERS": str(markers)}
    p = subprocess.Popen([sys.executable, str(hook), "build", str(sample_data / "bigearthnet"),
                          "--out", str(out), "--workers", "2", "--quiet"],
                         env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    writers: list[int] = []
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a timing assertion
        while len(list(markers.iterdir())) < 2 and p.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        writers = [int(m.name) for m in markers.iterdir()]
        assert len(writers) == 2, f"the writers never started:\n{log.read_text()}"
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=600)
        err = log.read_text()
        assert p.returncode == 130, f"status {p.returncode}, expected 130:\n{err}"
        assert "eofm-shard build: error: interrupted" in err, err
        assert "Traceback" not in err, err
        # the pool was terminated and joined before the command returned
        assert [w for w in writers if _alive(w)] == [], "writer processes outlived eofm-shard"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for w in writers:  # old code's orphans: do not leave them writing for 10 minutes
            if _alive(w):
                os.kill(w, signal.SIGKILL)
