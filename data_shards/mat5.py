"""MATLAB v5 ``.mat`` files read with every size bounded before it is allocated.

scipy's ``whosmat``/``loadmat`` allocate what a data element's own byte count says, not what
the variable's dims say, and inflate a compressed (``miCOMPRESSED``) variable a whole input
block at a time: a 1 MB file holding a 64 x 64 uint16 variable can make them allocate GBs,
whatever ``raster_io.check_decoded_size`` found in its header. Here the file's elements are
walked by hand (a 128-byte header, then tagged elements: ``miMATRIX`` or ``miCOMPRESSED``, a
zlib stream of one ``miMATRIX``), compressed ones inflated no further than what is being read:

- :func:`scan` reads each variable's header (array flags, dims, name) alone, refusing an
  overlong dims or name element (:class:`MatTooLarge`); :func:`headers_only` rebuilds a small
  uncompressed file of those headers, which scipy's ``whosmat`` lists without the data;
- :func:`read_numeric` reads one numeric variable, whose data elements must declare exactly
  ``prod(dims) x`` their type's size (:class:`MatTooLarge` when more, :class:`MatError` when
  less), within ``max_bytes`` (:class:`MatOverLimit`); it gives what
  ``loadmat(path, variable_names=[name])[name]`` gives (the stored dtype, column-major dims,
  complex parts combined as scipy combines them).

Element layout: MATLAB's "MAT-File Format" (v5/v7), as scipy's ``_mio5`` reads it.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED, MI_UTF8 = 1, 5, 6, 14, 15, 16
MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8",
             12: "i8", 13: "u8"}  # numeric data element types
MX_OPAQUE = 17  # its header has no dims
COMPLEX_FLAG = 0x800  # in the array flags word
MAX_DIMS = 32  # scipy's limit (numpy's)
MAX_NAME_BYTES = 4096  # MATLAB names are at most 63 characters
PIECE = 1 << 16  # compressed bytes handed to zlib at a time


class MatError(ValueError):
    """A v5 .mat file whose elements are not what their headers declare."""


class MatTooLarge(MatError):
    """A v5 .mat element declaring more bytes than the variable's header says it holds."""


class MatOverLimit(MatTooLarge):
    """A v5 .mat variable whose stored data take more bytes than the limit allows."""


@dataclass(frozen=True)
class MatVar:
    """One top-level variable: ``offset``/``size`` of its element (tag excluded: the bytes
    after it), ``compressed`` (miCOMPRESSED), its class, array flags and dims (None for an
    opaque class) and ``header``: its array flags, dims and name subelements as stored."""

    name: str
    offset: int
    size: int
    compressed: bool
    mclass: int
    flags: int
    dims: tuple[int, ...] | None
    header: bytes


class _Source:
    """The bytes of one element, read as needed: a file range, or (``compressed``) the zlib
    stream it holds, inflated no further than what is asked for."""

    def __init__(self, f: BinaryIO, offset: int, size: int, compressed: bool) -> None:
        self.f, self.left, self.pending = f, size, b""
        self.d = zlib.decompressobj() if compressed else None
        f.seek(offset)

    def read_into(self, view: memoryview) -> int:
        """Fill ``view`` from the element; the bytes filled (fewer: the element ends)."""
        if self.d is None:
            n = self.f.readinto(view[: min(len(view), self.left)]) or 0
            self.left -= n
            return n
        filled = 0
        while filled < len(view) and not self.d.eof:
            if not self.pending and self.left:
                self.pending = self.f.read(min(PIECE, self.left))
                self.left = self.left - len(self.pending) if self.pending else 0
            try:
                out = self.d.decompress(self.pending, len(view) - filled)
            except zlib.error as e:
                raise MatError(f"compressed variable: {e}") from None
            self.pending = self.d.unconsumed_tail
            view[filled:filled + len(out)] = out
            filled += len(out)
            if not out and not self.pending and not self.left:
                break
        return filled

    def take(self, n: int, what: str) -> bytes:
        """The next ``n`` bytes; a MatError naming ``what`` when the element ends first."""
        buf = bytearray(n)
        if self.read_into(memoryview(buf)) < n:
            raise MatError(f"{what}: the element ends before its {n} bytes")
        return bytes(buf)


def _tag(src: _Source, order: str, what: str) -> tuple[int, int, bytes, bytes | None]:
    """(type, byte count, the tag's 8 bytes, data of a small data element or None)."""
    raw = src.take(8, what)
    mdtype, count = struct.unpack(order + "II", raw)
    if mdtype >> 16:  # small data element: byte count and type in 4 bytes, data in the rest
        count, mdtype = mdtype >> 16, mdtype & 0xFFFF
        if count > 4:
            raise MatError(f"{what}: a small data element of {count} bytes (at most 4)")
        return mdtype, count, raw, raw[4:4 + count]
    return mdtype, count, raw, None


def _element(src: _Source, order: str, limit: int, what: str) -> tuple[int, bytes, bytes]:
    """(type, data, the element's bytes as stored) of the next element of at most ``limit``
    data bytes; a MatError naming ``what`` for a longer one."""
    mdtype, count, raw, small = _tag(src, order, what)
    if small is not None:
        return mdtype, small, raw
    if count > limit:
        raise MatTooLarge(f"{what}: element declares {count} bytes; expected at most {limit}")
    data = src.take(count, what)
    pad = src.take(-count % 8, what)  # elements end on an 8-byte boundary
    return mdtype, data, raw + data + pad


def _header(src: _Source, order: str) -> tuple[int, int, tuple[int, ...] | None, str, bytes]:
    """(class, flags, dims, name, stored bytes) of the matrix header at ``src``, as scipy's
    ``VarReader5.read_header`` reads it."""
    flags_raw = src.take(16, "array flags")  # tag, then flags/class and nzmax
    flags = struct.unpack_from(order + "I", flags_raw, 8)[0]
    mclass, dims, dims_raw = flags & 0xFF, None, b""
    if mclass != MX_OPAQUE:
        mdtype, data, dims_raw = _element(src, order, 4 * MAX_DIMS, "dims")
        if mdtype not in (MI_INT32, MI_UINT32):
            raise MatError(f"dims: element type {mdtype}; expected miINT32 ({MI_INT32})")
        dims = struct.unpack(f"{order}{len(data) // 4}i", data[: len(data) // 4 * 4])
        if any(d < 0 for d in dims):
            raise MatError(f"dims: negative dimension in {dims}")
    mdtype, name, name_raw = _element(src, order, MAX_NAME_BYTES, "name")
    if mdtype not in (MI_INT8, MI_UTF8) or (mdtype == MI_UTF8 and any(b > 127 for b in name)):
        raise MatError(f"name: element type {mdtype} {name[:40]!r}; expected miINT8 "
                       f"({MI_INT8}) or ASCII miUTF8 ({MI_UTF8})")
    return mclass, flags, dims, name.decode("latin1"), flags_raw + dims_raw + name_raw


def _inner_tag(src: _Source, order: str) -> None:
    """Read the miMATRIX tag a compressed element's stream starts with."""
    mdtype, _, _, _ = _tag(src, order, "compressed variable")
    if mdtype != MI_MATRIX:
        raise MatError(f"compressed variable holds element type {mdtype}; expected miMATRIX "
                       f"({MI_MATRIX})")


def scan(path: Path) -> tuple[bytes, str, list[MatVar]]:
    """(the 128-byte file header, byte order ``<`` or ``>``, every variable's header) of the
    v5 .mat file ``path``, each compressed variable inflated only as far as its header; a
    MatError saying where the file is not what its elements declare."""
    size = path.stat().st_size
    out = []
    with open(path, "rb") as f:
        head = f.read(128)
        marks = {b"IM": "<", b"MI": ">"}
        if len(head) < 128 or head[126:128] not in marks:
            raise MatError(f"not a v5 .mat file (endian mark {head[126:128]!r}, expected "
                           "b'IM' or b'MI')")
        order, pos = marks[head[126:128]], 128
        while pos < size:
            f.seek(pos)
            tag = f.read(8)
            if len(tag) < 8:
                raise MatError(f"{len(tag)} stray bytes at offset {pos}")
            mdtype, count = struct.unpack(order + "II", tag)
            if mdtype not in (MI_MATRIX, MI_COMPRESSED) or count == 0:
                raise MatError(f"element at offset {pos}: type {mdtype} of {count} bytes; "
                               f"expected a variable (miMATRIX {MI_MATRIX} or miCOMPRESSED "
                               f"{MI_COMPRESSED}) of some bytes")
            src = _Source(f, pos + 8, count, mdtype == MI_COMPRESSED)
            try:
                if src.d is not None:
                    _inner_tag(src, order)
                mclass, flags, dims, name, raw = _header(src, order)
            except MatError as e:
                raise type(e)(f"variable at offset {pos}: {e}") from None
            out.append(MatVar(name, pos + 8, count, src.d is not None, mclass, flags, dims, raw))
            pos += 8 + count
    return head, order, out


def headers_only(head: bytes, order: str, variables: list[MatVar]) -> bytes:
    """A v5 .mat file of ``variables``' headers alone (each an uncompressed miMATRIX of its
    array flags, dims and name), for scipy's ``whosmat`` to list them."""
    parts = [head[:116], b"\x00" * 8, head[124:128]]  # no subsystem data
    for v in variables:
        parts += [struct.pack(order + "II", MI_MATRIX, len(v.header)), v.header]
    return b"".join(parts)


def _part(src: _Source, order: str, count: int, left: float, what: str) -> np.ndarray:
    """The next data element of ``count`` values, of at most ``left`` bytes, as a 1-D
    array."""
    mdtype, n, _, small = _tag(src, order, what)
    if mdtype not in MI_DTYPES:
        raise MatError(f"{what}: element type {mdtype}; expected a numeric one "
                       f"({', '.join(map(str, MI_DTYPES))})")
    dtype = np.dtype(order + MI_DTYPES[mdtype])
    if n != count * dtype.itemsize:
        error = MatTooLarge if n > count * dtype.itemsize else MatError
        raise error(f"{what}: element declares {n} bytes; expected {count} values of "
                    f"{dtype.name}, {count * dtype.itemsize} bytes")
    if n > left:
        raise MatOverLimit(f"{what}: stores {count} values of {dtype.name}, {n} bytes, more "
                          f"than the {left} bytes left under the limit")
    if small is not None:
        return np.frombuffer(bytearray(small), dtype)
    buf = bytearray(n)
    if src.read_into(memoryview(buf)) < n:
        raise MatError(f"{what}: the element ends before its {n} bytes")
    src.read_into(memoryview(bytearray(-n % 8)))  # padding, when the element holds it
    return np.frombuffer(buf, dtype)


def read_numeric(path: Path, var: MatVar, order: str, max_bytes: int | None) -> np.ndarray:
    """The numeric (or logical) variable ``var`` of :func:`scan`'s ``path`` as ``loadmat``
    gives it, its stored bytes at most ``max_bytes`` (None: no limit)."""
    dims = var.dims or ()
    count = math.prod(dims)
    left = math.inf if max_bytes is None else max_bytes
    with open(path, "rb") as f:
        src = _Source(f, var.offset, var.size, var.compressed)
        if var.compressed:
            _inner_tag(src, order)
        src.take(len(var.header), "header")
        real = _part(src, order, count, left, "real part")
        x = real
        if var.flags & COMPLEX_FLAG:
            imag = _part(src, order, count, left - real.nbytes, "imaginary part")
            x = real.astype("c8" if real.itemsize == 4 else "c16")
            x.imag = imag
        if var.compressed and src.read_into(memoryview(bytearray(1))):
            raise MatError("the compressed variable holds more data than its dims declare")
    return x.reshape(dims[::-1]).T
