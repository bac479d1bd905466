"""Sample encoding: ``.npy`` arrays and ``.json`` metadata as bytes, with a fast cached decoder.

``decode_npy`` parses each distinct ``.npy`` header once (a dataset has a handful of distinct
headers) and then wraps the payload with ``np.frombuffer``: no copy and no ``pickle``, ever.
"""

from __future__ import annotations

import ast
import io
import json
import math
from functools import lru_cache

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
# numpy.load refuses longer headers (max_header_size) for the same reason: a shard's header is
# parsed by ast.literal_eval and kept in the lru_cache below, so a hostile shard with
# megabyte headers would cost CPU and hold memory (256 cached entries)
MAX_HEADER_BYTES = 10000


def encode_npy(x: np.ndarray) -> bytes:
    """``.npy`` bytes of ``x`` (C order, no pickle)."""
    buf = io.BytesIO()
    if not x.flags.c_contiguous:
        x = x.copy(order="C")  # (np.ascontiguousarray would turn a 0-d label into 1-d)
    np.lib.format.write_array(buf, x, allow_pickle=False)
    return buf.getvalue()


@lru_cache(maxsize=256)
def _parse_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """(dtype, shape, fortran order) of a ``.npy`` header; ValueError naming what is wrong
    for any malformed header (a damaged header must read as a bad sample, never as a
    SyntaxError/TypeError escaping the callers' error handling)."""
    shown = header[:80]
    try:
        d = ast.literal_eval(header.decode("latin1"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(f"not a valid .npy header: expected a Python dict literal, got "
                         f"{shown!r} ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or {"descr", "shape", "fortran_order"} - d.keys():
        raise ValueError(f"not a valid .npy header: expected a dict with keys descr, shape, "
                         f"fortran_order, got {shown!r}")
    try:
        dtype = np.dtype(d["descr"])
    except (TypeError, ValueError, SyntaxError, MemoryError) as e:
        raise ValueError(f"not a valid .npy header: descr {d['descr']!r} is not a dtype "
                         f"({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise ValueError("refusing .npy with object dtype (would need pickle)")
    if dtype.itemsize == 0:
        raise ValueError(f"not a valid .npy header: descr {d['descr']!r} is a dtype of "
                         "0 bytes per element")
    shape = d["shape"]
    if not isinstance(shape, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ValueError(f"not a valid .npy header: shape expected a tuple of non-negative "
                         f"ints, got {shape!r}")
    if not isinstance(d["fortran_order"], bool):
        raise ValueError(f"not a valid .npy header: fortran_order expected a bool, got "
                         f"{d['fortran_order']!r}")
    return dtype, shape, d["fortran_order"]


def decode_npy(data: bytes | memoryview) -> np.ndarray:
    """Array from ``.npy`` bytes without copying the payload; raises ValueError if malformed."""
    mv = memoryview(data)
    if len(mv) < 10 or bytes(mv[:6]) != NPY_MAGIC:
        raise ValueError("not a .npy payload (bad magic)")
    major = mv[6]
    if major == 1:
        hlen = int.from_bytes(mv[8:10], "little")
        start = 10
    elif major in (2, 3):
        hlen = int.from_bytes(mv[8:12], "little")
        start = 12
    else:
        raise ValueError(f"unsupported .npy version {major}")
    if hlen > MAX_HEADER_BYTES:  # parsed with ast.literal_eval and cached: keep it small
        raise ValueError(f".npy header of {hlen} bytes; expected at most {MAX_HEADER_BYTES} "
                         "(numpy's own limit)")
    dtype, shape, fortran = _parse_header(bytes(mv[start : start + hlen]))
    offset = start + hlen
    n = math.prod(shape)  # Python ints: a huge shape cannot wrap around (np.prod on int64 can)
    if len(mv) - offset != n * dtype.itemsize:
        raise ValueError(
            f".npy payload has {len(mv) - offset} bytes, header says {n * dtype.itemsize} "
            f"({dtype} {shape})"
        )
    arr = np.frombuffer(mv, dtype=dtype, count=n, offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


def encode_json(obj: object) -> bytes:
    """Compact, key-sorted JSON bytes (deterministic)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode_json(data: bytes | memoryview) -> object:
    """Object from JSON bytes."""
    return json.loads(bytes(data))
