"""Output paths under hostile conditions: a failed write named clearly, an unwritable folder
found before any work, a file replaced whole or not at all.

A full disk makes ``torch.save`` fail with ``unexpected pos 704 vs 598`` and safetensors with
``I/O error``, neither naming the file; :func:`write_failure` turns such an error into an
``OSError`` that names the path and the free space left there. :func:`unwritable_reason` says,
leaving nothing created, why a folder could not be created or written (the commands ask it
up front, not after minutes of work; every rank of a job at once). :func:`atomic_open` is the
one way a file is written atomically (a temporary name beside it, fsync, rename; the temporary
file removed on any failure).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

__all__ = ["OUT_OF_SPACE", "atomic_open", "discard_partial", "out_of_space",
           "out_of_space_message", "unwritable_reason", "write_failure"]

# a full disk, a cluster's quota, a file-size limit (``ulimit -f``, a filesystem's largest file)
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
FREE_NOTE = "free on its filesystem"  # ends the space-left note of every message here
# errors that a full disk does not cause, and what does
_CAUSES = {errno.EFBIG: "the file-size limit (`ulimit -f`) or the filesystem's largest file",
           errno.EROFS: "the filesystem is mounted read-only",
           errno.EACCES: "no permission to write there", errno.EPERM: "no permission to write there"}


def _free_space(path: Path) -> str:
    """``"N MiB free on its filesystem"`` for the nearest existing folder of ``path``."""
    for folder in (path, *path.parents):
        if folder.is_dir():
            try:
                return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB {FREE_NOTE}"
            except OSError:
                break
    return "free space unknown"


def write_failure(path: str | Path, err: BaseException) -> OSError:
    """An ``OSError`` for a failed write of ``path`` (raise it ``from err``): ``err``'s errno
    when it has one (ENOSPC stays ENOSPC), its text, the path, the free space left there and
    the likely cause (a full disk, unless the error says read-only or permission denied)."""
    path = Path(path)
    code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
    cause = _CAUSES.get(code, "a full disk is the usual cause")
    return OSError(code, f"cannot write {path}: {type(err).__name__}: {err} "
                         f"({_free_space(path.parent)}; {cause})")


def discard_partial(tmp: str | Path) -> None:
    """Remove ``tmp``, the temporary file of a write that just failed, if it is there. Call it
    while handling that failure: an ``OSError`` of the removal itself (a read-only filesystem
    refuses the unlink as it refused the write) is swallowed, so it never replaces the error
    that says why the write failed."""
    with suppress(OSError):
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, encoding: str | None = None,
                fsync: bool = True, tmp_name: str | None = None) -> Iterator[IO[Any]]:
    """Write ``path`` whole or not at all: yields a file open on a temporary name in ``path``'s
    folder; when the block ends the file is flushed, fsynced (unless ``fsync`` is False) and
    renamed onto ``path`` (``os.replace``). On any exception, Ctrl-C included, the temporary
    file is removed (:func:`discard_partial`: a removal that fails too never hides the error),
    ``path`` is left as it was and the original exception is re-raised unchanged (callers that
    want a path-naming ``OSError`` wrap it with :func:`write_failure`).

    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding`` defaulting to UTF-8). ``tmp_name`` is
    the temporary file's name (a caller whose cleanup globs for its own pattern passes it);
    by default ``.{name}.{pid}.tmp``, hidden and unique per process so concurrent writers of
    the same file do not collide. The folder itself is not fsynced."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open {path}: mode expected 'wb' or 'w', got {mode!r}")
    path = Path(path)
    if tmp_name is None:
        tmp_name = f".{path.name}.{os.getpid()}.tmp"
    elif tmp_name in ("", ".", "..", path.name) or Path(tmp_name).name != tmp_name:
        raise ValueError(f"atomic_open {path}: tmp_name expected a plain file name other than "
                         f"{path.name!r}, got {tmp_name!r}")
    tmp = path.with_name(tmp_name)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:  # "wb" with an encoding: open refuses
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a read-only filesystem, Ctrl-C: nothing half-written
        discard_partial(tmp)
        raise


def out_of_space(err: BaseException) -> OSError | None:
    """The full-disk or over-quota ``OSError`` (:data:`OUT_OF_SPACE`) that ``err`` is or was
    raised from (its ``__cause__``/``__context__`` chain), else None."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in OUT_OF_SPACE:
            return e
        e = e.__cause__ or e.__context__
    return None


def out_of_space_message(err: BaseException, out: str | Path) -> str:
    """One line for a command that stopped because ``out``'s disk or quota is full: ``err``'s
    own text (which names the file when the write went through :func:`write_failure`), the
    output folder and the space left there, unless the text already says it."""
    text = str(err)
    cause = out_of_space(err)
    if cause is not None and cause.errno == errno.EFBIG:  # not the disk: the file-size limit
        return (f"{text} (while writing under {out}: a file reached the largest size this "
                "process may write (`ulimit -f`) or the filesystem allows; raise the limit or "
                "write to another filesystem, then run the command again)")
    if FREE_NOTE in text:  # write_failure's message: it says the file and the space already
        return text
    return (f"{text} (while writing under {out}: {_free_space(Path(out))}; free some space or "
            "raise the quota, then run the command again)")


_MAKE_ATTEMPTS = 5  # tries of unwritable_reason while other processes remove their trial folders


def _gone(folder: Path) -> FileNotFoundError:
    """The error for ``folder`` found and then removed by another process: tried again."""
    return FileNotFoundError(errno.ENOENT, "removed by another process meanwhile", str(folder))


def _folder_reason(folder: Path, path: Path) -> str | None:
    """Why existing ``folder`` (``path`` itself or a parent of it) cannot hold ``path``: it is
    not a folder, or not writable (``os.access`` also reports a read-only filesystem to
    root); None when it can. Raises ``FileNotFoundError`` when ``folder`` is not there any
    more (another process removed it after it was found)."""
    if not folder.is_dir():
        if not os.path.lexists(folder):
            raise _gone(folder)
        return (f"{folder} is not a folder" if folder == path else
                f"{folder} is a file, so {path} cannot be created under it")
    if not os.access(folder, os.W_OK | os.X_OK):
        if not os.path.lexists(folder):
            raise _gone(folder)
        return (f"{folder} is not writable" if folder == path else
                f"{path} cannot be created: {folder} is not writable")
    return None


def _existing_reason(path: Path) -> tuple[str | None, Path | None]:
    """:func:`_folder_reason` of ``path``'s nearest existing folder (``path`` itself when it
    exists), and that folder; ``(reason, None)`` when nothing along ``path`` exists."""
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            return _folder_reason(folder, path), folder
    return f"{path}: no existing parent folder", None


def _try_making(path: Path, existing: Path) -> str | None:
    """Make the folders from ``existing`` (which exists) down to ``path``, one at a time,
    then remove again those this call made (deepest first), never one another process made
    meanwhile: the other ranks of a job check the same new ``runtime.out_dir`` at the same
    moment. A folder found made already (``FileExistsError``) is no refusal when it is a
    writable folder (:func:`_folder_reason` otherwise). Raises ``FileNotFoundError`` when a
    parent vanished under it (another process removed its own trial folder meanwhile; also
    what ``/proc`` answers): the caller tries again, and reports it when it persists."""
    missing = [*[p for p in path.parents if existing in p.parents][::-1], path]
    made: list[Path] = []
    try:
        for folder in missing:
            try:
                folder.mkdir()
            except FileExistsError:
                if reason := _folder_reason(folder, path):
                    return reason
                continue  # another process made it: it is not this call's to remove
            except FileNotFoundError:  # a parent gone; /proc says so too: tried again
                raise
            except OSError as e:
                return f"{path} cannot be created ({e.strerror or e})"
            made.append(folder)
    finally:
        for folder in reversed(made):  # a folder another process made something in stays
            with suppress(OSError):
                folder.rmdir()
    return None


def unwritable_reason(path: str | Path, try_making: bool = False) -> str | None:
    """Why folder ``path`` could not be created or written into, or None when it can.

    The folder itself when it exists, else its nearest existing parent, must be a writable
    folder (``os.access`` also reports a read-only filesystem to root). ``try_making``: a
    folder that does not exist yet is also made, then removed again, since ``os.access``
    says yes to root where making it fails (``/proc``, some network mounts); that failure
    is then the reason.

    Safe when several processes (the ranks of a job) check the same new folder at once: a
    folder another process made or removed meanwhile is no refusal (the check is made
    again), and only the folders this call made are removed, never another's (so nothing
    is left behind, unless another process made its own folder inside one of them). The
    callers make ``path`` for real later (``mkdir(exist_ok=True)``), not relying on this."""
    path = Path(path)
    for attempt in range(_MAKE_ATTEMPTS):
        try:
            reason, existing = _existing_reason(path)
            if reason or existing is None or not try_making or existing == path:
                return reason
            return _try_making(path, existing)
        except FileNotFoundError as e:  # a folder another process made, removed again
            if attempt == _MAKE_ATTEMPTS - 1:  # not a race: the reason (e.g. /proc)
                return f"{path} cannot be created ({e.strerror or e})"
    return None  # not reached: the last attempt returns
