"""How every command ends (eofm.data_shards.command): one line and a status, never a traceback
for a refused input or a full disk; a bug keeps its traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from eofm.data_shards.command import OUT_OF_SPACE_STATUS, REFUSED, run_command


def _raise(e: BaseException):
    def work() -> int:
        raise e
    return work


def test_statuses_and_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_command("eofm-x", lambda: 0, out=tmp_path) == 0
    assert run_command("eofm-x", _raise(ValueError("data.path: expected a folder, got a file")),
                       out=tmp_path) == REFUSED
    assert capsys.readouterr().err == "eofm-x: error: data.path: expected a folder, got a file\n"
    full = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    wrapped = RuntimeError("the background checkpoint write of step 4 failed")
    wrapped.__cause__ = full
    for e in (full, wrapped):
        assert run_command("eofm-x", _raise(e), out=tmp_path / "run") == OUT_OF_SPACE_STATUS
        err = capsys.readouterr().err
        assert err.startswith("eofm-x: error: ") and err.count("\n") == 1
        assert f"while writing under {tmp_path / 'run'}" in err and "MiB free" in err
    with pytest.raises(OSError):  # an OSError that is not a full disk is not a refusal here
        run_command("eofm-x", _raise(OSError(errno.EIO, "I/O error")), out=tmp_path)
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_command("eofm-x", _raise(KeyError("x")), out=tmp_path)


def test_an_error_from_a_dataloader_worker_is_one_line(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """The DataLoader re-raises a worker's error with the worker's traceback as its text; the
    command prints the original message and the worker instead."""
    from torch.utils.data import DataLoader, IterableDataset

    from eofm.data_shards.reader import TooManySkipped

    class Damaged(IterableDataset):
        def __iter__(self):
            raise TooManySkipped("ds: skipped 64 of 64 samples (100.0%) > max_skip_fraction 1.0%")

    def work() -> int:
        list(DataLoader(Damaged(), num_workers=1))
        return 0

    assert run_command("eofm-x", work, out=tmp_path, refused=(TooManySkipped,)) == REFUSED
    assert capsys.readouterr().err == ("eofm-x: error: ds: skipped 64 of 64 samples (100.0%) > "
                                       "max_skip_fraction 1.0% (in DataLoader worker process 0)\n")


_FSIZE_SCRIPT = """
import resource, sys
from eofm.data_shards.command import run_command
from eofm.data_shards.outputs import atomic_open
resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 1024, 20 * 1024))

def work() -> int:
    with atomic_open(sys.argv[1] + "/big.bin") as f:
        f.write(b"x" * 200_000)
    return 0

sys.exit(run_command("eofm-x", work, out=sys.argv[1]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE is POSIX")
def test_a_file_size_limit_is_a_status_1_that_says_which_limit(tmp_path: Path) -> None:
    """`ulimit -f` (EFBIG) stopped a write with status 2 and a bare "[Errno 27] File too
    large": it is a limit on what may be written, as a full disk is (status 1), and the line
    says which limit to raise; nothing half-written stays."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _FSIZE_SCRIPT, str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == OUT_OF_SPACE_STATUS, r.stderr
    assert "File too large" in r.stderr and "ulimit -f" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []
