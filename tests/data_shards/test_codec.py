"""``decode_npy`` on hostile headers: every malformed payload is a ValueError naming it."""

from __future__ import annotations

import numpy as np
import pytest

from eofm.data_shards.codec import decode_npy, encode_npy


def _npy(header: str, payload: bytes = b"") -> bytes:
    h = header.encode()
    h += b" " * (117 - len(h)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + payload


def test_round_trip() -> None:
    x = np.arange(12, dtype=np.uint16).reshape(3, 4)
    np.testing.assert_array_equal(decode_npy(encode_npy(x)), x)


@pytest.mark.parametrize(("shape", "nbytes"), [
    ("(4611686018427387904, 4)", 2**62 * 4 * 4), ("(4611686018427387904, 8)", 2**62 * 8 * 4),
    ("(99999999999999999999999,)", 99999999999999999999999 * 4)])
def test_huge_shape_is_a_size_mismatch_not_an_overflow(shape: str, nbytes: int) -> None:
    """(2**62, 4) int32 is 2**66 bytes: int64 products wrap (to 0 here), Python ints do not."""
    header = f"{{'descr': '<i4', 'fortran_order': False, 'shape': {shape}, }}"
    with pytest.raises(ValueError, match=rf"\.npy payload has 0 bytes, header says {nbytes} "):
        decode_npy(_npy(header))


@pytest.mark.parametrize("descr", ["{}", "'<V0'"])
def test_zero_byte_dtype_is_refused(descr: str) -> None:
    with pytest.raises(ValueError, match=r"is a dtype of 0 bytes per element"):
        decode_npy(_npy(f"{{'descr': {descr}, 'fortran_order': False, 'shape': (3,), }}"))
