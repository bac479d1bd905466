"""Minimal, fast sequential tar reading for shards: ``(member name, bytes)`` pairs, grouped
into webdataset samples by key. Handles ustar, GNU long names and pax path records; a file
that ends mid-member raises :class:`TarError` naming the source and offset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512


class TarError(ValueError):
    """A tar stream that is truncated or malformed."""


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\x00 ").lstrip(b" ")
    if field and field[0] & 0x80:  # GNU base-256 size
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    return int(field or b"0", 8)


def _read_exact(f: BinaryIO, n: int, source: str, offset: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TarError(f"{source}: truncated tar (wanted {n} bytes at offset {offset}, got "
                       f"{len(data)})")
    return data


def iter_members(f: BinaryIO, source: str = "<stream>") -> Iterator[tuple[str, bytes]]:
    """Regular-file members of a tar stream, in order."""
    offset = 0
    long_name: str | None = None
    while True:
        header = f.read(BLOCK)
        if not header or header == b"\x00" * BLOCK:
            if len(header) not in (0, BLOCK):
                raise TarError(f"{source}: truncated tar header at offset {offset}")
            return
        if len(header) != BLOCK:
            raise TarError(f"{source}: truncated tar header at offset {offset}")
        chk = sum(header[:148]) + 256 + sum(header[156:])
        try:
            if _octal(header[148:156]) != chk:
                raise TarError(f"{source}: bad tar header checksum at offset {offset}")
            size = _octal(header[124:136])
        except ValueError:
            raise TarError(f"{source}: corrupt tar header at offset {offset}") from None
        kind = header[156:157]
        name = header[:100].split(b"\x00", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\x00", 1)[0].decode("utf-8", "replace")
        if prefix and header[257:262] == b"ustar":
            name = prefix + "/" + name
        offset += BLOCK
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        data = _read_exact(f, padded, source, offset)[:size]
        offset += padded
        if kind == b"L":
            long_name = data.rstrip(b"\x00").decode("utf-8", "replace")
            continue
        if kind == b"x":
            for rec in data.decode("utf-8", "replace").split("\n"):
                if " path=" in rec:
                    long_name = rec.split(" path=", 1)[1]
            continue
        if kind not in (b"0", b"\x00", b"7"):
            long_name = None
            continue
        yield (long_name or name), data
        long_name = None


def split_key(name: str) -> tuple[str, str]:
    """webdataset convention: ``dir/key.ext.more`` -> (``dir/key``, ``ext.more``)."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def iter_samples(f: BinaryIO, source: str = "<stream>") -> Iterator[dict[str, bytes | str]]:
    """Group consecutive members sharing a key into samples ``{"__key__": k, ext: bytes}``."""
    current: dict[str, bytes | str] | None = None
    for name, data in iter_members(f, source):
        key, ext = split_key(name)
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key}
        current[ext] = data
    if current is not None:
        yield current
