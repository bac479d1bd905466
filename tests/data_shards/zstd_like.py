"""Hand-made zstd frames for decompression-bomb tests: tiny files that decode to many bytes."""

from __future__ import annotations

import struct


def zstd_frame(size: int, content_size: bool = True) -> bytes:
    """A zstd frame of RLE blocks of zero bytes decoding to ``size`` bytes, a few bytes per
    128 KiB; with ``content_size`` its header declares ``size`` (as zarr writes frames)."""
    if content_size:  # single segment, 8-byte Frame_Content_Size
        head = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", size)
    else:  # no content size: a 128 KiB window
        head = struct.pack("<IBB", 0xFD2FB528, 0x00, 7 << 3)
    blocks, left = bytearray(), size
    while left:
        n = min(left, 1 << 17)
        left -= n
        blocks += ((n << 3) | (1 << 1) | (left == 0)).to_bytes(3, "little") + b"\x00"
    return head + bytes(blocks)
