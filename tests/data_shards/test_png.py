"""The PNG writer: exact round trip for grey and RGB, atomic write, bad input refused."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.png import encode_png, read_png, write_png


@pytest.mark.parametrize("shape", [(7, 5), (4, 9, 3), (1, 1, 3)])
def test_round_trip_is_exact(tmp_path: Path, shape: tuple[int, ...]) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    write_png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_png(tmp_path / "a.png"), img)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary left behind


def test_header_and_checksums_are_valid_png() -> None:
    data = encode_png(np.zeros((3, 2, 3), np.uint8))
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    n = int.from_bytes(data[8:12], "big")
    crc = int.from_bytes(data[16 + n:20 + n], "big")
    assert crc == zlib.crc32(data[12:16 + n]) & 0xFFFFFFFF
    assert int.from_bytes(data[16:20], "big") == 2 and int.from_bytes(data[20:24], "big") == 3


@pytest.mark.parametrize("bad", [np.zeros((2, 2), np.float32), np.zeros((2, 2, 4), np.uint8),
                                 np.zeros((0, 3), np.uint8), np.zeros(5, np.uint8)])
def test_bad_images_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"image: expected a non-empty \(H, W\) or \(H, W, 3\) "
                                         r"uint8 array, got"):
        encode_png(bad)
