"""save_pretrained makes the export durable before it takes the folder's place: each file and the
new folder are fsynced before the renames, the parent folder after them, and only then is a
previous export removed (a crash after the rename could leave an export whose files never
reached the disk, with the previous one already gone). Checkpoints, manifests and shards did
this already; the export did not fsync at all."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from eofm.models import create_model, save_pretrained
from eofm.models.hub import EXPORT_FILES

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vit_test_patch8", bands=["B02", "B03"], img_size=32)


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _record(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The fsyncs (of which inode), renames and folder removals save_pretrained makes, in order."""
    events: list[tuple] = []
    fsync, rename, rmtree = os.fsync, os.rename, shutil.rmtree

    def synced(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", (st.st_dev, st.st_ino)))
        fsync(fd)

    def renamed(src, dst, *a, **kw) -> None:
        rename(src, dst, *a, **kw)
        events.append(("rename", Path(src), Path(dst)))

    def removed(path, *a, **kw) -> None:
        events.append(("rmtree", Path(path)))
        rmtree(path, *a, **kw)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "rename", renamed)
    monkeypatch.setattr(shutil, "rmtree", removed)
    return events


@pytest.mark.parametrize("replacing", [False, True])
def test_the_files_and_folder_are_synced_before_the_rename_and_the_parent_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replacing: bool) -> None:
    out = tmp_path / "export"
    enc = _encoder()
    if replacing:
        save_pretrained(enc, out)
    events = _record(monkeypatch)
    pictures = {"reconstructions.png": (PNG, "a picture")}
    save_pretrained(enc, out, pictures=pictures)
    into_place = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == out)
    first_rename = next(i for i, e in enumerate(events) if e[0] == "rename")
    synced_at = {e[1]: i for i, e in reversed(list(enumerate(events))) if e[0] == "fsync"}
    for name in (*EXPORT_FILES, *pictures):  # an inode keeps its number through the rename
        assert synced_at.get(_inode(out / name), len(events)) < first_rename, name
    assert synced_at.get(_inode(out), len(events)) < first_rename, "the new folder"
    parent = [i for i, e in enumerate(events) if e == ("fsync", _inode(tmp_path))]
    assert parent and parent[-1] > into_place, "the parent folder, after the rename"
    old = [i for i, e in enumerate(events) if e[0] == "rmtree" and e[1].name.endswith(".old")]
    assert len(old) == int(replacing)
    assert all(i > parent[-1] for i in old), "the previous export removed only once all is synced"


def test_a_file_that_cannot_be_synced_fails_the_export_and_keeps_the_previous_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync's EIO is a write that did not reach the disk: the export fails, naming its folder,
    and the export already there stays, untouched; no temporary folder is left."""
    out = tmp_path / "export"
    save_pretrained(_encoder(), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match=rf"cannot write the export {out}: .*Input/output error"):
        save_pretrained(_encoder(), out, card={"title": "new"})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
