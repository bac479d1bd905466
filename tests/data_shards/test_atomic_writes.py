"""Every atomic writer (:func:`eofm.data_shards.outputs.atomic_open` and the writers built on
it) keeps the old file byte-identical when the write fails midway, leaves no temporary file
behind, and raises the original error, also when removing the temporary file fails too (a
read-only filesystem refuses the unlink as it refused the write) and on Ctrl-C."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

OLD = b"the previous version, which must survive\n"


def _fails_after_writing(err: BaseException, file_arg: int) -> Callable[..., None]:
    """A stand-in for a serializer that writes part of its output to its ``file_arg``-th
    argument, then fails with ``err``."""

    def partial(*args: Any, **kwargs: Any) -> None:
        f = args[file_arg]
        f.write(b"half" if "b" in getattr(f, "mode", "wb") else "half")
        raise err

    return partial


@dataclass(frozen=True)
class Writer:
    """One atomic writer: ``write(target, monkeypatch, err)`` makes it fail midway with
    ``err`` while writing ``target`` (a file named ``target_name``); ``tmp_name`` is the name of
    its temporary file; ``wraps``: an ``Exception`` comes back as a path-naming ``OSError``
    raised from it."""

    target_name: str
    tmp_name: str
    write: Callable[[Path, pytest.MonkeyPatch, BaseException], None]
    wraps: bool = False


def _atomic_open(target: Path, monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    from eofm.data_shards.outputs import atomic_open

    with atomic_open(target, "wb") as f:
        f.write(b"half of the new")
        raise err


def _png(target: Path, monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    from eofm.data_shards.png import write_png

    def fsync(fd: int) -> None:  # the bytes are written; making them durable fails
        raise err

    monkeypatch.setattr(os, "fsync", fsync)
    write_png(target, np.zeros((4, 5, 3), np.uint8))


def _band_stats(target: Path, monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    from eofm.data_shards import stats

    st = stats.BandStats.create(["B02", "B03"], "uint16", [0, 0])
    monkeypatch.setattr(stats.np, "savez_compressed", _fails_after_writing(err, 0))
    st.save(target)


def _resolved_config(target: Path, monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    from eofm.pretrain import config

    cfg = config.load_config(None, ["data.path=/data/ds"])
    monkeypatch.setattr(config.yaml, "safe_dump", _fails_after_writing(err, 1))
    assert config.save_resolved(cfg, target.parent) == target


def _checkpoint(target: Path, monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    from eofm.pretrain import checkpoint

    monkeypatch.setattr(checkpoint.torch, "save", _fails_after_writing(err, 1))
    checkpoint._atomic_save({"step": 1}, target)


PID = os.getpid()
WRITERS = {
    "atomic_open": Writer("target.bin", f".target.bin.{PID}.tmp", _atomic_open),
    "png": Writer("x.png", f".x.png.{PID}.tmp", _png),
    # the names the cleanup globs rely on: a build's ".parts/writer-*", a checkpoint manager's
    # "step_*.pt.tmp"
    "band_stats": Writer("writer-00.s2.npz", "writer-00.s2.npz.tmp", _band_stats),
    "resolved_config": Writer("config.yaml", f".config.yaml.{PID}.tmp", _resolved_config),
    "checkpoint": Writer("step_000000001.pt", "step_000000001.pt.tmp", _checkpoint, wraps=True),
}
ERRORS = {"read_only": lambda: OSError(errno.EROFS, "Read-only file system"),
          "ctrl_c": KeyboardInterrupt}


@pytest.mark.parametrize("unlink_refused", [False, True], ids=["unlink_ok", "unlink_refused"])
@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_failed_write_keeps_the_old_file_and_its_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, error: str,
        unlink_refused: bool) -> None:
    w = WRITERS[name]
    target = tmp_path / w.target_name
    target.write_bytes(OLD)
    err = ERRORS[error]()
    unlinks: list[Path] = []
    if unlink_refused:
        def refused(self: Path, missing_ok: bool = False) -> None:
            unlinks.append(self)
            raise PermissionError(errno.EACCES, "Permission denied", str(self))

        monkeypatch.setattr(Path, "unlink", refused)

    with pytest.raises(BaseException) as info:
        w.write(target, monkeypatch, err)
    monkeypatch.undo()

    got = info.value
    if w.wraps and isinstance(err, Exception):  # an OSError naming the file, from the error
        assert type(got) is OSError and got.__cause__ is err, repr(got)
        assert got.errno == errno.EROFS and str(target) in str(got)
    else:  # the very error, not the refused unlink's PermissionError
        assert got is err, repr(got)
    assert target.read_bytes() == OLD
    left = sorted(p.name for p in tmp_path.iterdir())
    if unlink_refused:  # the removal was tried on the temporary file, which alone is left
        assert [p.name for p in unlinks] == [w.tmp_name] and unlinks[0].parent == tmp_path
        assert left == sorted([w.target_name, w.tmp_name])
    else:
        assert left == [w.target_name]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_write_that_succeeds_replaces_the_file(tmp_path: Path, name: str) -> None:
    """The control: the same writers, not broken, replace the old file and leave nothing."""
    from eofm.data_shards.png import read_png, write_png
    from eofm.data_shards.stats import BandStats
    from eofm.pretrain.checkpoint import CheckpointManager, _atomic_save
    from eofm.pretrain.config import load_config, save_resolved

    target = tmp_path / WRITERS[name].target_name
    target.write_bytes(OLD)
    if name == "atomic_open":
        from eofm.data_shards.outputs import atomic_open

        with atomic_open(target, "w") as f:
            assert Path(f.name).name == WRITERS[name].tmp_name
            f.write("ünïcode\n")
        assert target.read_bytes() == "ünïcode\n".encode()
    elif name == "png":
        write_png(target, np.full((2, 3), 7, np.uint8))
        assert read_png(target).tolist() == [[7, 7, 7], [7, 7, 7]]
    elif name == "band_stats":
        BandStats.create(["B02"], "uint16", [0]).save(target)
        assert BandStats.load(target).bands == ["B02"]
    elif name == "resolved_config":
        cfg = load_config(None, ["data.path=/data/ds"])
        save_resolved(cfg, tmp_path)
        assert load_config(target) == cfg
    else:
        _atomic_save({"step": 1}, target)
        assert CheckpointManager.load(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("kwargs, problem", [
    ({"mode": "ab"}, "mode expected 'wb' or 'w', got 'ab'"),
    ({"mode": "r+b"}, "mode expected 'wb' or 'w', got 'r+b'"),
    ({"tmp_name": "sub/x.tmp"}, "tmp_name expected a plain file name other than 'a.bin', "
                                "got 'sub/x.tmp'"),
    ({"tmp_name": "a.bin"}, "tmp_name expected a plain file name other than 'a.bin', "
                            "got 'a.bin'"),
    ({"tmp_name": ""}, "tmp_name expected a plain file name"),
], ids=["append", "update", "in_a_subfolder", "the_target", "empty"])
def test_atomic_open_refuses_bad_arguments(tmp_path: Path, kwargs: dict[str, str],
                                           problem: str) -> None:
    from eofm.data_shards.outputs import atomic_open

    target = tmp_path / "a.bin"
    target.write_bytes(OLD)
    with (pytest.raises(ValueError, match=re.escape(f"atomic_open {target}: {problem}")),
          atomic_open(target, **kwargs)):
        pass
    assert target.read_bytes() == OLD and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_open_without_fsync_skips_it(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from eofm.data_shards.outputs import atomic_open

    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    with atomic_open(tmp_path / "a.bin", fsync=False) as f:
        f.write(b"x")
    assert synced == [] and (tmp_path / "a.bin").read_bytes() == b"x"
    with atomic_open(tmp_path / "a.bin") as f:
        f.write(b"y")
    assert len(synced) == 1 and (tmp_path / "a.bin").read_bytes() == b"y"


def test_a_shard_abort_survives_a_refused_unlink(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ShardWriter.abort runs while an error is being handled: a read-only filesystem that
    also refuses to remove the partial shard must not replace that error."""
    from eofm.data_shards.writer import ShardWriter

    w = ShardWriter(tmp_path, max_samples=10)
    w.write({"__key__": "k0", "bin": b"x" * 100})
    unlinks: list[Path] = []

    def refused(self: Path, missing_ok: bool = False) -> None:
        unlinks.append(self)
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refused)
    w.abort()  # no PermissionError
    monkeypatch.undo()
    assert [p.name for p in unlinks] == ["shard-000000.tar.tmp"] and w.finished == []
