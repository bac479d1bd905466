"""webdataset tar shard writer: target-size shards, written under a temporary name and renamed.

A shard is listed (returned by :meth:`ShardWriter.close` / ``finished``) only once its tar is
complete, fsynced and renamed to its final name, with its sha256 computed from the bytes
written. A crash leaves at most a ``*.tar.tmp`` file, which no manifest ever mentions.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from .manifest import ShardInfo
from .outputs import discard_partial, write_failure

TMP_SUFFIX = ".tmp"


class _HashingFile(io.RawIOBase):
    """Write-through file wrapper that hashes and counts bytes."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.nbytes += len(b)
        return self.f.write(b)


class ShardWriter:
    """Write samples (``{"__key__": str, "ext": bytes, ...}``) into numbered tar shards.

    Shards are named ``{prefix}-{index:06d}.tar`` and closed once they reach ``max_bytes`` or
    ``max_samples``. Members are written with fixed mtime/owner so output is deterministic.
    """

    def __init__(
        self,
        directory: str | Path,
        prefix: str = "shard",
        max_bytes: int = 256 * 2**20,
        max_samples: int = 100_000,
        writer_id: int = 0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.writer_id = writer_id
        self.finished: list[ShardInfo] = []
        self._index = 0
        self._tar: tarfile.TarFile | None = None
        self._raw: BinaryIO | None = None
        self._hash: _HashingFile | None = None
        self._count = 0
        self._keys: set[str] = set()

    def _tmp_path(self) -> Path:
        """The temporary file of the shard being written."""
        return self.directory / f"{self.prefix}-{self._index:06d}.tar{TMP_SUFFIX}"

    def _open(self) -> None:
        self._raw = open(self._tmp_path(), "wb")
        self._hash = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hash, mode="w|", format=tarfile.PAX_FORMAT)
        # PAX: plain ustar headers, plus a path record for names over ustar's 100 bytes
        # (long sample keys, e.g. pooled inputs with product names)
        self._count = 0

    def write(self, sample: dict[str, bytes | str]) -> None:
        """Append one sample; its key must be unique and free of dots and slashes."""
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key or "/" in key:
            raise ValueError(f"sample key must be a non-empty string without '.' or '/', got {key!r}")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        self._keys.add(key)
        if self._tar is None:
            self._open()
        assert self._tar is not None and self._hash is not None
        for ext in sorted(k for k in sample if k != "__key__"):
            data = sample[ext]
            if not isinstance(data, bytes):
                raise TypeError(f"{key}.{ext}: expected bytes, got {type(data).__name__}")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            try:
                self._tar.addfile(info, io.BytesIO(data))
            except OSError as e:  # a full disk: name the shard (the caller aborts it)
                raise write_failure(self._tmp_path(), e) from e
        self._count += 1
        if self._hash.nbytes >= self.max_bytes or self._count >= self.max_samples:
            self._finish()

    def _finish(self) -> None:
        if self._tar is None:
            return
        assert self._raw is not None and self._hash is not None
        name = f"{self.prefix}-{self._index:06d}.tar"
        try:
            self._tar.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp_path(), self.directory / name)
        except OSError as e:
            raise write_failure(self.directory / name, e) from e
        self.finished.append(
            ShardInfo(name, self._count, self._hash.nbytes, self._hash.sha.hexdigest(),
                      self.writer_id)
        )
        self._tar = self._raw = self._hash = None
        self._index += 1

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; return every completed shard."""
        self._finish()
        return self.finished

    def abort(self) -> None:
        """Drop the shard being written (its temporary file is removed, also when closing it
        fails again: a full disk)."""
        if self._raw is not None:
            assert self._tar is not None
            with suppress(OSError):  # let tarfile flush into the temporary file we are deleting
                self._tar.close()
            with suppress(OSError):
                self._raw.close()
            discard_partial(self._tmp_path())  # a refused unlink never hides why we abort
        self._tar = self._raw = self._hash = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
