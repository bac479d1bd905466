"""Bound what a zarr chunk decodes to before decoding it (decompression bombs).

A zarr array's metadata declare its chunk shape and dtype, so a chunk decodes to
``prod(chunk shape) x itemsize`` bytes; its codecs do not check that before they allocate:
numcodecs' zstd allocates the content size written in the frame headers, blosc and lz4 the
size in their own headers, and zlib/gzip/bz2/lzma inflate whatever the stream holds. A chunk
file of a few KB can so make a reader allocate GBs whatever the array declares, and checking
the declared array size (``raster_io.check_decoded_size``) does not stop it.

:func:`guard_array` gives an opened array a codec pipeline (:class:`GuardedPipeline`: zarr's
own, plus one check) that looks at the stored bytes of every chunk it reads, before decoding
them: the size they declare (zstd: the Frame_Content_Size of every frame, RFC 8878; blosc:
``nbytes``; lz4: its size prefix) or, for the stream codecs that declare none (zlib, gzip, bz2,
lzma), the size a decompression stopped just past the bound reaches (these are decoded twice,
the first time no further than the bound) must not exceed the bytes the chunk holds. Over it:
:class:`ChunkTooLarge`; a size that cannot be bounded (a zstd frame without a content size, a
codec chain this module does not know): :class:`ChunkError`; both name the chunk's file.
zarr v2 and v3 arrays are covered, sharded ones too (each inner chunk is checked).
"""

from __future__ import annotations

import asyncio
import bz2
import lzma
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.storage import LocalStore

try:  # zarr >= 3.1 decodes a zarr v2 array's filters and compressor in one codec
    from zarr.codecs._v2 import V2Codec
except ImportError:  # older zarr 3 splits them: its v2 arrays are refused as not bounded
    V2Codec = ()  # type: ignore[assignment,misc]  # isinstance(x, ()) is False

ZSTD_MAGIC = 0xFD2FB528
ZSTD_SKIPPABLE = 0x184D2A50  # skippable frames: magic 0x184D2A50..0x184D2A5F
# numcodecs ids of the compressors this module bounds: from a header, or by a bounded inflation
HEADER_SIZED = ("zstd", "blosc", "lz4")
STREAMS = ("zlib", "gzip", "bz2", "lzma")
COMPRESSORS = HEADER_SIZED + STREAMS
# codecs that, decoded after the compressor, do not grow what it gives them
SIZE_KEEPING = ("shuffle", "crc32", "crc32c", "adler32", "fletcher32", "jenkins_lookup3")
SHARD_SLACK = 1 << 16  # bytes: bound of a compressed shard = 2 x (its chunks + index) + this


class ChunkError(ValueError):
    """A stored zarr chunk whose decoded size cannot be bounded before decoding it."""


class ChunkTooLarge(ChunkError):
    """A stored zarr chunk whose compressed bytes decode to more than the chunk holds."""


def zstd_content_size(data: bytes | memoryview, stop: int | None = None) -> int | None:
    """Decoded bytes of the zstd frames in ``data``: the sum of their Frame_Content_Size
    fields (RFC 8878 3.1.1; skippable frames add none), the sum so far once it exceeds
    ``stop``; None when a frame does not declare its size; a ValueError saying where when
    ``data`` is not a sequence of zstd frames."""
    mv = memoryview(data).cast("B")
    n, pos, total = len(mv), 0, 0
    while pos < n:
        if n - pos < 8:
            raise ValueError(f"{n - pos} stray bytes at offset {pos}, expected a frame")
        (magic,) = struct.unpack_from("<I", mv, pos)
        if magic & 0xFFFFFFF0 == ZSTD_SKIPPABLE:
            pos += 8 + struct.unpack_from("<I", mv, pos + 4)[0]
            continue
        if magic != ZSTD_MAGIC:
            raise ValueError(f"no zstd frame at offset {pos} (magic {magic:#010x})")
        fhd = mv[pos + 4]  # Frame_Header_Descriptor
        if fhd & 0x08:
            raise ValueError(f"frame at offset {pos}: reserved header bit set")
        single = fhd >> 5 & 1
        fcs_len = (single, 2, 4, 8)[fhd >> 6]
        if not fcs_len:
            return None
        p = pos + 5 + (1 - single) + (0, 1, 2, 4)[fhd & 3]  # Window_Descriptor, Dictionary_ID
        if p + fcs_len > n:
            raise ValueError(f"frame at offset {pos}: truncated header")
        total += int.from_bytes(mv[p:p + fcs_len], "little") + (256 if fcs_len == 2 else 0)
        if stop is not None and total > stop:
            return total
        p += fcs_len
        while True:  # blocks: 3-byte header (Last_Block, Block_Type, Block_Size), content
            if p + 3 > n:
                raise ValueError(f"frame at offset {pos}: truncated")
            head = int.from_bytes(mv[p:p + 3], "little")
            kind = head >> 1 & 3
            if kind == 3:
                raise ValueError(f"frame at offset {pos}: reserved block type at offset {p}")
            p += 3 + (1 if kind == 1 else head >> 3)  # RLE blocks store one byte
            if head & 1:
                break
        pos = p + (4 if fhd & 0x04 else 0)  # Content_Checksum
        if pos > n:
            raise ValueError(f"frame at offset {p}: truncated")
    return total


def _decompressor(codec: str, lzma_args: tuple[Any, Any] | None) -> Any:
    """A fresh decompressor for one stream of ``codec``, as numcodecs decodes it."""
    if codec == "zlib":
        return zlib.decompressobj(zlib.MAX_WBITS)
    if codec == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if codec == "bz2":
        return bz2.BZ2Decompressor()
    fmt, filters = lzma_args or (lzma.FORMAT_XZ, None)
    return lzma.LZMADecompressor(format=fmt, filters=filters)


def inflated_size(codec: str, data: bytes | memoryview, bound: int,
                  lzma_args: tuple[Any, Any] | None = None) -> int:
    """Bytes the ``codec`` (zlib, gzip, bz2 or lzma) data inflate to, decompressing no further
    than ``bound + 1`` bytes (a result over ``bound``: the data hold more). gzip, bz2 and lzma
    data may hold several streams, as their numcodecs decoders read them; data the decoder
    rejects end the count (it stops there too)."""
    total, rest = 0, data
    try:
        while True:
            d = _decompressor(codec, lzma_args)
            # either max_length output (over the bound) or all the input this stream holds
            total += len(d.decompress(rest, bound + 1 - total))
            if total > bound or codec == "zlib" or not d.eof or not d.unused_data:
                return total
            rest = d.unused_data
    except (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError):
        return total


@dataclass(frozen=True)
class _Plan:
    """How a chunk's stored bytes are bounded: drop ``tail`` trailing checksum bytes, then
    bound what ``codec`` (a numcodecs id; None: nothing compressed here) decodes them to,
    against the chunk's bytes (``kind`` "bytes"), 8 bytes an element (zarr v2 filters,
    "v2-filtered") or 2 x a shard and its index ("shard"); ``lzma``: (format, filters)."""

    codec: str | None = None
    tail: int = 0
    kind: str = "bytes"
    lzma: tuple[Any, Any] | None = None


def _codec_id(codec: object) -> str | None:
    """The numcodecs id of a zarr v3 codec or a numcodecs codec; None when unknown."""
    for cls, name in ((ZstdCodec, "zstd"), (BloscCodec, "blosc"), (GzipCodec, "gzip")):
        if isinstance(codec, cls):
            return name
    name = getattr(codec, "codec_name", None)  # zarr.codecs.numcodecs / numcodecs.zarr3
    if isinstance(name, str) and name.startswith("numcodecs."):
        return name.removeprefix("numcodecs.")
    cid = getattr(codec, "codec_id", None)  # a numcodecs codec (zarr v2 compressor, filter)
    return cid if isinstance(cid, str) else None


def _lzma_args(codec: object) -> tuple[Any, Any]:
    """(format, filters) of an lzma codec, numcodecs' or its zarr v3 wrapper."""
    config = getattr(codec, "codec_config", None)
    if isinstance(config, dict):
        return config.get("format", lzma.FORMAT_XZ), config.get("filters")
    return getattr(codec, "format", lzma.FORMAT_XZ), getattr(codec, "filters", None)


def _chain(pipeline: BatchedCodecPipeline) -> str:
    return " -> ".join(_codec_id(c) or type(c).__name__ for c in pipeline)


def _plan(pipeline: BatchedCodecPipeline) -> _Plan:
    """How :class:`GuardedPipeline` bounds the chunks of ``pipeline``'s codecs; a ChunkError
    saying why when it cannot."""
    ab, outer = pipeline.array_bytes_codec, pipeline.bytes_bytes_codecs
    unbounded = (f"codecs {_chain(pipeline)}: the decoded size of their chunks cannot be "
                 f"bounded before decoding (expected one compressor at most, of "
                 f"{', '.join(COMPRESSORS)}; outside it a crc32c checksum at most, inside it "
                 f"only {', '.join(SIZE_KEEPING)}), got ")
    if isinstance(ab, V2Codec):  # zarr v2: a numcodecs compressor after numcodecs filters
        packed = [_codec_id(f) for f in ab.filters or () if _codec_id(f) in COMPRESSORS]
        comp = ab.compressor
        cid = None if comp is None else _codec_id(comp)
        if packed:
            raise ChunkError(unbounded + f"the compressor {packed[0]} among the filters")
        if comp is not None and cid not in COMPRESSORS:
            raise ChunkError(unbounded + f"the compressor {cid or type(comp).__name__}")
        return _Plan(cid, 0, "v2-filtered" if ab.filters else "bytes",
                     _lzma_args(ab.compressor) if cid == "lzma" else None)
    if not isinstance(ab, BytesCodec | ShardingCodec):
        raise ChunkError(unbounded + f"the array-to-bytes codec {type(ab).__name__}")
    found: object = None
    tail = 0
    for codec in reversed(outer):  # decoding order: the outermost first
        cid = _codec_id(codec)
        if found is None and isinstance(codec, Crc32cCodec):
            tail += 4  # its checksum is the last 4 bytes
        elif found is None and cid in COMPRESSORS:
            found = codec
        elif found is None or not (isinstance(codec, Crc32cCodec) or cid in SIZE_KEEPING):
            raise ChunkError(unbounded + f"{cid or type(codec).__name__} "
                             + ("inside the compressor" if found is not None
                                else "outside the compressor"))
    cid = None if found is None else _codec_id(found)
    return _Plan(cid, tail, "shard" if isinstance(ab, ShardingCodec) else "bytes",
                 _lzma_args(found) if cid == "lzma" else None)


def _bound(pipeline: BatchedCodecPipeline, plan: _Plan, spec: Any) -> tuple[int, str]:
    """(bytes a chunk of ``spec`` may decode to, what the metadata declare) for ``plan``."""
    for codec in pipeline.array_array_codecs:  # transpose, astype, ...: what the bytes hold
        spec = codec.resolve_metadata(spec)
    dtype = spec.dtype.to_native_dtype() if hasattr(spec.dtype, "to_native_dtype") \
        else np.dtype(spec.dtype)
    shape = tuple(int(d) for d in spec.shape)
    if dtype.itemsize == 0 or dtype.hasobject:
        raise ChunkError(f"variable-length dtype {dtype}: the decoded size of compressed "
                         "chunks cannot be bounded from the metadata; expected a fixed-size "
                         "(numeric) dtype")
    n = math.prod(shape) * dtype.itemsize
    holds = f"shape {shape} of {dtype}, {n} bytes"
    if plan.kind == "v2-filtered":
        n = math.prod(shape) * max(dtype.itemsize, 8)
        holds += f" (at most {n} bytes before its filters)"
    elif plan.kind == "shard":
        n = 2 * pipeline.array_bytes_codec.compute_encoded_size(n, spec) + SHARD_SLACK
        holds += f" (a shard and its index: at most {n} bytes compressed)"
    return n, holds


def _label(getter: Any) -> str:
    """The chunk a byte getter reads: its file for a local store, else its key or address."""
    store, path = getattr(getter, "store", None), getattr(getter, "path", None)
    if isinstance(store, LocalStore) and isinstance(path, str):
        return str(Path(store.root) / path)
    coords = getattr(getter, "chunk_coords", None)
    if coords is not None:  # zarr's sharding codec: a chunk inside a shard
        return f"inner chunk {tuple(coords)}"
    return str(getter)


def _declared_size(plan: _Plan, mv: memoryview, bound: int) -> tuple[int | None, str]:
    """(decoded bytes the ``plan.codec`` data ``mv`` declare, or None, and how that was
    found); stream codecs are inflated as far as ``bound + 1``; a ValueError when ``mv`` is
    not such data."""
    codec = str(plan.codec)
    if codec == "zstd":
        return zstd_content_size(mv, stop=bound), "its zstd frames declare"
    if codec in ("blosc", "lz4"):
        at, need = (4, 16) if codec == "blosc" else (0, 4)  # blosc: nbytes; lz4: size prefix
        if len(mv) < need:
            raise ValueError(f"{len(mv)} bytes, shorter than its {need}-byte header")
        return struct.unpack_from("<I", mv, at)[0], f"its {codec} header declares"
    return inflated_size(codec, mv, bound, plan.lzma), f"its {codec} data inflate to at least"


def check_chunk(data: Any, plan: _Plan, bound: int, holds: str, label: str) -> None:
    """Refuse the stored bytes ``data`` of chunk ``label`` when they decode (``plan``) to more
    than ``bound`` bytes (:class:`ChunkTooLarge`) or do not say how much (:class:`ChunkError`);
    ``holds``: what the metadata declare, for the message."""
    mv = memoryview(data).cast("B")
    mv = mv[: len(mv) - plan.tail] if plan.tail else mv
    try:
        size, said = _declared_size(plan, mv, bound)
    except ValueError as e:
        raise ChunkError(f"{label}: not valid {plan.codec} data ({e}); expected a chunk of "
                         f"{holds}") from None
    if size is None:
        raise ChunkError(f"{label}: a zstd frame does not declare its decoded size (no "
                         "Frame_Content_Size), so it cannot be bounded before decoding; "
                         "expected frames that declare it (as zarr and numcodecs write them), "
                         f"for a chunk of {holds}")
    if size > bound:
        raise ChunkTooLarge(f"{label}: {said} {size} decoded bytes, but the array's metadata "
                            f"give its chunks {holds}; refused before decoding (a "
                            "decompression bomb, or a damaged chunk)")


@dataclass(frozen=True)
class _CheckedGetter:
    """A chunk's byte getter that checks the bytes it reads (:func:`check_chunk`)."""

    inner: Any
    pipeline: BatchedCodecPipeline
    plan: _Plan
    spec: Any

    async def get(self, prototype: Any, byte_range: Any = None) -> Any:
        """The bytes ``inner`` gives; a whole chunk's checked before they are returned."""
        buf = await self.inner.get(prototype, byte_range)
        if buf is not None and byte_range is None:
            bound, holds = _bound(self.pipeline, self.plan, self.spec)
            args = (buf.as_numpy_array(), self.plan, bound, holds, _label(self.inner))
            if self.plan.codec in STREAMS:  # a decompression: off zarr's event loop
                await asyncio.to_thread(check_chunk, *args)
            else:
                check_chunk(*args)
        return buf


@dataclass(frozen=True)
class GuardedPipeline(BatchedCodecPipeline):
    """zarr's batched codec pipeline, checking each chunk's stored bytes before decoding them
    (module doc); sharding codecs read their inner chunks through one too."""

    @classmethod
    def from_codecs(cls, codecs: Any, *, batch_size: int | None = None) -> GuardedPipeline:
        """The pipeline of ``codecs``, a sharding codec replaced by a guarded one."""
        codecs = [_GuardedSharding.of(c) if type(c) is ShardingCodec else c for c in codecs]
        return super().from_codecs(codecs, batch_size=batch_size)

    async def read_batch(self, batch_info: Any, out: Any, drop_axes: tuple[int, ...] = ()
                         ) -> None:
        """zarr's ``read_batch``, each chunk's bytes checked as they are read."""
        plan = _plan(self)
        if plan.codec is not None:
            batch_info = [(_CheckedGetter(getter, self, plan, spec), spec, *rest)
                          for getter, spec, *rest in batch_info]
        await super().read_batch(batch_info, out, drop_axes)


class _GuardedSharding(ShardingCodec):
    """zarr's sharding codec, reading the chunks inside a shard through a GuardedPipeline."""

    @classmethod
    def of(cls, codec: ShardingCodec) -> _GuardedSharding:
        """The guarded twin of ``codec``."""
        return cls(chunk_shape=codec.chunk_shape, codecs=codec.codecs,
                   index_codecs=codec.index_codecs, index_location=codec.index_location)

    @property
    def codec_pipeline(self) -> GuardedPipeline:
        """The inner chunks' pipeline, guarded."""
        return GuardedPipeline.from_codecs(self.codecs)

    async def _decode_partial_single(self, byte_getter: Any, selection: Any, shard_spec: Any
                                     ) -> Any:
        try:
            return await super()._decode_partial_single(byte_getter, selection, shard_spec)
        except ChunkError as e:  # name the shard's file before the chunk inside it
            raise type(e)(f"{_label(byte_getter)}, {e}") from None


def _check_chain(pipeline: BatchedCodecPipeline) -> None:
    """ChunkError unless every level of ``pipeline`` (shards' inner chunks too) is bounded."""
    _plan(pipeline)
    if isinstance(pipeline.array_bytes_codec, ShardingCodec):
        _check_chain(pipeline.array_bytes_codec.codec_pipeline)


def guard_array(arr: zarr.Array) -> zarr.Array:
    """``arr`` (an array opened for reading), every chunk it reads from now on checked before
    decoding (module doc); a ChunkError naming the array when its codecs cannot be bounded."""
    current = arr.async_array.codec_pipeline
    if not isinstance(current, BatchedCodecPipeline):
        raise ChunkError(f"{_label(arr.store_path)}: zarr's codec pipeline is "
                         f"{type(current).__name__} (codec_pipeline.path in zarr's config); "
                         "expected its default BatchedCodecPipeline, which this guard extends")
    pipeline = GuardedPipeline.from_codecs(list(current), batch_size=current.batch_size)
    try:
        _check_chain(pipeline)
    except ChunkError as e:
        raise ChunkError(f"{_label(arr.store_path)}: {e}") from None
    # zarr sets this field the same way (AsyncArray is a frozen dataclass)
    object.__setattr__(arr.async_array, "codec_pipeline", pipeline)
    return arr
