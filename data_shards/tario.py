"""Minimal, fast sequential tar reading for shards: ``(member name, bytes)`` pairs, grouped
into webdataset samples by key. Handles ustar, GNU long names and pax path records; a file
that ends mid-member or without the end-of-archive blocks (a file cut at a member boundary)
raises :class:`TarError` naming the source and where it ends. An empty input (0 bytes) is a
:class:`TarError` too, from a stream and from a buffer alike: a shard always holds at least
the end-of-archive blocks (as :mod:`tarfile` says, "empty file"), so 0 bytes is a shard that
was never written or lost its content (a failed download), not a shard without samples.

A stream's member is read into memory whole, so the size its header declares is checked
first: more than ``max_member`` bytes (:data:`DEFAULT_MAX_MEMBER` unless the caller knows a
tighter bound, as the reader does from the manifest) is a :class:`TarError` naming the source,
the member and its offset, before anything is allocated (a damaged or hostile header declaring
2**45 bytes was a bare MemoryError). A memory-mapped tar needs no limit: its members are views
of the file, and one that would pass its end is a truncated tar.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
DEFAULT_MAX_MEMBER = 2**30  # bytes a stream's member may declare when the caller gives no limit


class TarError(ValueError):
    """A tar stream that is truncated or malformed."""


def _octal(field: bytes) -> int:
    """A header number field: octal digits padded with NULs or spaces, or GNU base-256 (the
    first byte's 0x80 bit set, then big-endian binary, as :func:`tarfile.nti` reads it);
    ValueError for anything else, negative numbers included (no size or checksum is)."""
    if field and field[0] & 0x80:
        # the flag first: a binary number may end in zero bytes, which are not padding
        if field[0] & 0x40:  # two's complement sign bit (0xFF: tarfile's negative numbers)
            raise ValueError(f"the negative base-256 number 0x{field.hex()}")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.rstrip(b"\x00 ").lstrip(b" ")
    if digits.strip(b"01234567"):  # a sign, '_' or '0o' would pass int(..., 8)
        raise ValueError(repr(bytes(field)))
    return int(digits or b"0", 8)


def _read_exact(f: BinaryIO, n: int, source: str, offset: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TarError(f"{source}: truncated tar (wanted {n} bytes at offset {offset}, got "
                       f"{len(data)})")
    return data


def _ended(source: str, length: int) -> TarError:
    """The error for input that ends (after ``length`` bytes) where a header should start."""
    if length == 0:
        return TarError(f"{source}: empty tar (0 bytes; a shard holds at least the "
                        "end-of-archive blocks)")
    return TarError(f"{source}: truncated tar (ends at offset {length} without the "
                    "end-of-archive blocks)")


def _number(header: bytes, lo: int, hi: int, what: str, source: str, offset: int) -> int:
    """The number in ``header[lo:hi]``, the field ``what``; a TarError naming it if corrupt."""
    try:
        return _octal(header[lo:hi])
    except ValueError as e:
        raise TarError(f"{source}: corrupt tar header at offset {offset}: {what} field: "
                       f"expected an octal or base-256 number >= 0, got {e}") from None


def _header(header: bytes | memoryview, source: str, offset: int) -> tuple[str, int, bytes]:
    """(name, size, typeflag) of one 512-byte header block."""
    header = bytes(header)
    chk = sum(header[:148]) + 256 + sum(header[156:])
    stored = _number(header, 148, 156, "checksum", source, offset)
    if stored != chk:
        raise TarError(f"{source}: bad tar header checksum at offset {offset} (stored {stored}, "
                       f"the header sums to {chk})")
    size = _number(header, 124, 136, "size", source, offset)
    name = header[:100].split(b"\x00", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\x00", 1)[0].decode("utf-8", "replace")
    if prefix and header[257:262] == b"ustar":
        name = prefix + "/" + name
    return name, size, header[156:157]


class _Names:
    """Applies GNU long-name and pax path records to the member that follows them."""

    def __init__(self) -> None:
        self.pending: str | None = None

    def take(self, name: str, kind: bytes, data: bytes | memoryview) -> str | None:
        """The member's effective name, or None for records and non-file members."""
        if kind == b"L":
            self.pending = bytes(data).rstrip(b"\x00").decode("utf-8", "replace")
            return None
        if kind == b"x":
            for rec in bytes(data).decode("utf-8", "replace").split("\n"):
                if " path=" in rec:
                    self.pending = rec.split(" path=", 1)[1]
            return None
        name, self.pending = (self.pending or name), None
        return name if kind in (b"0", b"\x00", b"7") else None


def _oversized(source: str, name: str, offset: int, size: int, max_member: int) -> TarError:
    """The error for a member whose header (at ``offset``) declares more than ``max_member``."""
    return TarError(f"{source}: tar member {name!r} (header at offset {offset}) declares "
                    f"{size} bytes; expected at most {max_member} (the limit for a member of this "
                    "shard): a damaged or hostile shard, the member is not read")


def iter_members(f: BinaryIO, source: str = "<stream>",
                 max_member: int = DEFAULT_MAX_MEMBER) -> Iterator[tuple[str, bytes]]:
    """Regular-file members of a tar stream, in order; a member declaring more than
    ``max_member`` bytes is a :class:`TarError` before any of it is read."""
    offset = 0
    names = _Names()
    while True:
        header = f.read(BLOCK)
        if not header:
            # a stream cut at a member boundary (a dropped connection, a command that died):
            # without this its last sample would come out with members missing
            raise _ended(source, offset)
        if header == b"\x00" * BLOCK:
            return
        if len(header) != BLOCK:
            raise TarError(f"{source}: truncated tar header at offset {offset}")
        name, size, kind = _header(header, source, offset)
        if size > max_member:  # f.read(size) would allocate it all before reading a byte
            raise _oversized(source, names.pending or name, offset, size, max_member)
        offset += BLOCK
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        data = _read_exact(f, padded, source, offset)[:size]
        offset += padded
        if (member := names.take(name, kind, data)) is not None:
            yield member, data


def iter_members_buffer(buf: memoryview, source: str = "<buffer>"
                        ) -> Iterator[tuple[str, memoryview]]:
    """Like :func:`iter_members` over an in-memory or memory-mapped tar: members are
    zero-copy slices of ``buf``. A buffer that ends without the end-of-archive block (a file
    cut at a member boundary) raises :class:`TarError`, as the stream reader does: its last
    sample would otherwise come out with members (e.g. its valid mask) silently missing."""
    offset, n = 0, len(buf)
    names = _Names()
    while True:
        if offset >= n:  # past n when the last member's padding is missing too
            raise _ended(source, n)
        if n - offset < BLOCK:
            raise TarError(f"{source}: truncated tar header at offset {offset}")
        header = buf[offset : offset + BLOCK]
        if header == b"\x00" * BLOCK:
            return
        name, size, kind = _header(header, source, offset)
        offset += BLOCK
        if offset + size > n:
            raise TarError(f"{source}: truncated tar (wanted {size} bytes at offset {offset}, "
                           f"got {n - offset})")
        data = buf[offset : offset + size]
        offset += (size + BLOCK - 1) // BLOCK * BLOCK
        if (member := names.take(name, kind, data)) is not None:
            yield member, data


def split_key(name: str) -> tuple[str, str]:
    """webdataset convention: ``dir/key.ext.more`` -> (``dir/key``, ``ext.more``)."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def iter_samples(f: BinaryIO | memoryview, source: str = "<stream>",
                 max_member: int = DEFAULT_MAX_MEMBER) -> Iterator[dict]:
    """Group consecutive members sharing a key into samples ``{"__key__": k, ext: bytes}``
    (from a stream, whose members may declare at most ``max_member`` bytes each, or zero-copy
    from a memoryview of a whole tar)."""
    current: dict | None = None
    members = (iter_members_buffer(f, source) if isinstance(f, memoryview)
               else iter_members(f, source, max_member))
    for name, data in members:
        key, ext = split_key(name)
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key}
        current[ext] = data
    if current is not None:
        yield current
