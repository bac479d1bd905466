"""Minimal PNG writing (8-bit grey or RGB), written atomically; no imaging dependency.

Used wherever a person would rather look than read: ``eofm-shard preview`` contact sheets,
the probe's confusion matrix, pretraining's reconstruction previews.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .outputs import atomic_open


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``(H, W)`` grey or ``(H, W, 3)`` RGB ``uint8`` image."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] != 3) or 0 in image.shape[:2]:
        raise ValueError(f"image: expected a non-empty (H, W) or (H, W, 3) uint8 array, got "
                         f"{image.dtype} {image.shape}")
    h, w = image.shape[:2]
    rows = np.ascontiguousarray(image).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    color = 2 if image.ndim == 3 else 0
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write ``image`` (see :func:`encode_png`) to ``path`` via a temporary name and rename
    (:func:`.outputs.atomic_open`: a failed write leaves ``path`` as it was, nothing behind)."""
    path = Path(path)
    data = encode_png(image)
    if path.is_dir():  # else the rename below fails, after the temporary file is written
        raise IsADirectoryError(f"{path}: is a folder; expected a .png file name to write")
    with atomic_open(path, "wb") as f:  # a full disk, Ctrl-C: nothing half-written stays
        f.write(data)


def read_png(path: str | Path) -> np.ndarray:
    """Read back a PNG written by :func:`write_png` (8-bit grey/RGB, no interlace; for tests
    and tools, not a general decoder)."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if tag == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    if hdr is None or hdr[2] != 8 or hdr[3] not in (0, 2) or hdr[6] != 0:
        raise ValueError(f"{path}: expected an 8-bit grey or RGB PNG without interlace, got "
                         f"header {hdr}")
    w, h, ch = hdr[0], hdr[1], 3 if hdr[3] == 2 else 1
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * ch)
    if rows[:, 0].any():
        raise ValueError(f"{path}: uses PNG row filters, which this reader does not undo")
    img = rows[:, 1:].reshape(h, w, ch)
    return img[..., 0] if ch == 1 else img
