"""Decompression bombs that declare a small raster: the declared-size check
(``--max-raster-bytes``) passes them, so the decoding itself must be bounded.

A zarr chunk whose zstd frame declares 256 MiB in a (4, 64, 64) uint16 array, the same in a
chunk of an eofm zarr store (:class:`ZarrDataset`), and a .mat whose 64 x 64 uint16 variable
holds a data element of 256 MiB: each was decoded whole before failing ("cannot reshape"),
allocating hundreds of MB from a file of a few KB. They are now refused before decoding,
naming the file (and chunk or variable): the three 256 MiB bombs are read in a child process
whose peak RSS may grow by :data:`RSS_SLACK` at most. Smaller bombs (4 MiB) check every
codec and element kind in this process, and normal files still read as before.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from zstd_like import zstd_frame

from eofm.data_shards.raster_io import RasterError, RasterTooLarge, read_raster

BOMB = 256 * 2**20  # what the bombs decode to
SMALL_BOMB = 4 * 2**20  # for the in-process checks
RSS_SLACK = 48 * 2**20  # peak RSS growth allowed while a bomb is refused
SHAPE = (4, 64, 64)  # uint16: 32768 bytes
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="peak RSS: /proc (Linux)")


def _chunk_file(array_dir: Path) -> Path:
    """The one chunk file of a single-chunk zarr array (v2 or v3)."""
    meta = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}
    return next(p for p in sorted(array_dir.rglob("*")) if p.is_file() and p.name not in meta)


def _zarr_input(path: Path, **kwargs: object) -> np.ndarray:
    """A (4, 64, 64) uint16 zarr array in one chunk at ``path`` (``kwargs``: codecs,
    format); returns its values."""
    x = (np.arange(np.prod(SHAPE)) % 1000).astype(np.uint16).reshape(SHAPE)
    zarr.create_array(str(path), shape=SHAPE, dtype="uint16", **kwargs)[...] = x
    return x


_MEASURE = r"""
import json, sys
kind, good, bomb = sys.argv[1:4]
def peak_rss():  # this process's own peak (ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
def read(path, i):
    if kind == "zarr_dataset":
        from eofm.data_shards.zarr_store import ZarrDataset
        return ZarrDataset(path)[i]
    from eofm.data_shards.raster_io import read_raster
    return read_raster(path)
read(good, 0)  # imports, zarr's event loop, caches: in the baseline
before = peak_rss()
try:
    read(bomb, 0)
    error = None
except Exception as e:
    error = [type(e).__name__, str(e)]
print(json.dumps({"error": error, "grew": peak_rss() - before}))
"""


def _read_in_child(kind: str, good: Path, bomb: Path) -> tuple[list[str] | None, int]:
    """(error type and message, peak RSS growth in bytes) of reading ``bomb`` in a fresh
    process, after reading ``good`` there."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, kind, str(good), str(bomb)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["error"], out["grew"]


# ------------------------------------------------------------ the three bombs, 256 MiB each
@linux_only
def test_zarr_input_chunk_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    good, bomb = tmp_path / "good.zarr", tmp_path / "bomb.zarr"
    _zarr_input(good)
    shutil.copytree(good, bomb)
    chunk = _chunk_file(bomb)
    chunk.write_bytes(zstd_frame(BOMB))
    assert chunk.stat().st_size < 16_384
    error, grew = _read_in_child("raster", good, bomb)
    assert grew < RSS_SLACK, f"peak RSS grew {grew >> 20} MiB reading the bomb"
    assert error is not None and error[0] == "RasterTooLarge", error
    for part in (str(chunk), f"declare {BOMB} decoded bytes", "(4, 64, 64) of uint16",
                 "32768 bytes", "refused before decoding"):
        assert part in error[1], f"{part!r} missing from: {error[1]}"


@linux_only
def test_zarr_store_chunk_bomb_is_refused_by_zarr_dataset(tmp_path: Path, tiny_eurosat) -> None:
    from eofm.data_shards.build import BuildConfig, build

    good, bomb = tmp_path / "good.zarr", tmp_path / "bomb.zarr"
    build(BuildConfig(str(tiny_eurosat(tmp_path / "eurosat")), str(good), format="zarr",
                      progress=False))
    shutil.copytree(good, bomb)
    chunk = bomb / "s2" / "c" / "0" / "0" / "0" / "0"  # sample 0: (1, 13, 8, 8) uint16
    chunk.write_bytes(zstd_frame(BOMB))
    error, grew = _read_in_child("zarr_dataset", good, bomb)
    assert grew < RSS_SLACK, f"peak RSS grew {grew >> 20} MiB reading the bomb"
    assert error is not None and error[0] == "ChunkTooLarge", error
    for part in (str(chunk), f"declare {BOMB} decoded bytes", "(1, 13, 8, 8) of uint16",
                 "1664 bytes"):
        assert part in error[1], f"{part!r} missing from: {error[1]}"


def _el(order: str, mdtype: int, data: bytes) -> bytes:
    """A v5 .mat data element: tag, data, padding to 8 bytes."""
    return struct.pack(order + "II", mdtype, len(data)) + data + b"\x00" * (-len(data) % 8)


def _mat_header(order: str = "<") -> bytes:
    mark = b"IM" if order == "<" else b"MI"
    return (b"MATLAB 5.0 MAT-file, test".ljust(116, b" ") + b"\x00" * 8
            + struct.pack(order + "H", 0x0100) + mark)


def _mat_var(name: str, dims: tuple[int, ...], mdtype: int, data: bytes, *, mclass: int = 11,
             order: str = "<", complex_part: bytes | None = None, dims_type: int = 5,
             name_count: int | None = None) -> bytes:
    """The body (after its tag) of a numeric miMATRIX variable; ``name_count``: the byte
    count its name element declares, when not its length (the name then not padded)."""
    flags = (mclass | (0x800 if complex_part is not None else 0), 0)
    body = _el(order, 6, struct.pack(order + "II", *flags))
    body += _el(order, dims_type, struct.pack(f"{order}{len(dims)}i", *dims))
    if name_count is None:
        body += _el(order, 1, name.encode())
    else:
        body += struct.pack(order + "II", 1, name_count) + name.encode()
    body += _el(order, mdtype, data)
    if complex_part is not None:
        body += _el(order, mdtype, complex_part)
    return body


def _compressed(body: bytes, order: str = "<", extra_zeros: int = 0,
                declared_extra: int = 0) -> bytes:
    """A miCOMPRESSED element holding the miMATRIX ``body`` (its tag declaring
    ``declared_extra`` more bytes), followed by ``extra_zeros`` zero bytes in the stream."""
    co = zlib.compressobj(1)
    out = [co.compress(struct.pack(order + "II", 14, len(body) + declared_extra) + body)]
    zeros = bytes(min(extra_zeros, 1 << 24))
    for i in range(0, extra_zeros, len(zeros) or 1):
        out.append(co.compress(zeros[: min(len(zeros), extra_zeros - i)]))
    data = b"".join(out) + co.flush()
    return struct.pack(order + "II", 15, len(data)) + data


def _mat_bomb(size: int) -> bytes:
    """A .mat of one compressed 64 x 64 uint16 variable ``x`` whose data element declares
    (and inflates to) ``size`` bytes."""
    head = _mat_var("x", (64, 64), 4, b"")[:-8]  # flags, dims, name: the data tag follows
    body = head + struct.pack("<II", 4, size)
    return _mat_header() + _compressed(body, extra_zeros=size, declared_extra=size)


@linux_only
def test_mat_data_element_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    from scipy.io import savemat

    good, bomb = tmp_path / "good.mat", tmp_path / "bomb.mat"
    savemat(good, {"x": np.ones((64, 64), np.uint16)}, do_compression=True)
    bomb.write_bytes(_mat_bomb(BOMB))
    assert bomb.stat().st_size < 2 * 2**20
    error, grew = _read_in_child("raster", good, bomb)
    assert grew < RSS_SLACK, f"peak RSS grew {grew >> 20} MiB reading the bomb"
    assert error is not None and error[0] == "RasterTooLarge", error
    for part in (str(bomb), "variable 'x'", f"declares {BOMB} bytes", "4096 values of uint16",
                 "8192 bytes", "refused before reading it"):
        assert part in error[1], f"{part!r} missing from: {error[1]}"


# ------------------------------------------------------------ every zarr codec, in process
CODECS = ["v3-zstd", "v3-zstd-crc32c", "v3-blosc", "v3-gzip", "v3-zlib", "v3-lz4", "v3-bz2",
          "v3-lzma", "v3-shuffle-zstd", "v2-zstd", "v2-blosc", "v2-zlib", "v2-gzip", "v2-bz2",
          "v2-lzma", "v2-lz4", "v2-delta-zstd"]


def _codec_kwargs(name: str) -> dict:
    """``zarr.create_array`` codec arguments of the array ``name`` in :data:`CODECS`."""
    import numcodecs
    from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec
    from zarr.codecs import numcodecs as znc

    if name.startswith("v2-"):
        codec = name.split("-")[-1]
        filters = [numcodecs.Delta(dtype="u2")] if "delta" in name else None
        return {"zarr_format": 2, "compressors": numcodecs.get_codec({"id": codec}),
                "filters": filters}
    return {"v3-zstd": {}, "v3-zstd-crc32c": {"compressors": [ZstdCodec(), Crc32cCodec()]},
            "v3-blosc": {"compressors": BloscCodec()}, "v3-gzip": {"compressors": GzipCodec()},
            "v3-zlib": {"compressors": znc.Zlib()}, "v3-lz4": {"compressors": znc.LZ4()},
            "v3-bz2": {"compressors": znc.BZ2()}, "v3-lzma": {"compressors": znc.LZMA()},
            "v3-shuffle-zstd": {"compressors": [znc.Shuffle(elementsize=2), znc.Zstd(level=1)]},
            }[name]


def _bomb_bytes(name: str, size: int) -> bytes:
    """A chunk for the array ``name`` of :data:`CODECS` decoding to ``size`` zero bytes."""
    import numcodecs

    zeros = np.zeros(size, np.uint8)
    codec = name.split("-")[-1]
    if codec in ("zstd", "crc32c"):
        frame = zstd_frame(size)
        return frame + struct.pack("<I", 0) if codec == "crc32c" else frame
    return bytes(numcodecs.get_codec({"id": codec}).encode(zeros))


@pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")
@pytest.mark.parametrize("name", CODECS)
def test_every_codec_reads_its_good_chunks_and_refuses_a_bomb(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.zarr"
    x = _zarr_input(path, **_codec_kwargs(name))
    np.testing.assert_array_equal(read_raster(path, channel_axis=0).data, x)
    chunk = _chunk_file(path)
    chunk.write_bytes(_bomb_bytes(name, SMALL_BOMB))
    with pytest.raises(RasterTooLarge, match="refused before decoding") as e:
        read_raster(path, channel_axis=0)
    assert str(chunk) in str(e.value)
    assert "(4, 64, 64) of uint16, 32768 bytes" in str(e.value)


def test_zstd_frames_are_summed_and_a_frame_without_its_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    _zarr_input(path)
    chunk = _chunk_file(path)
    # a small first frame then a big one: numcodecs decodes both
    chunk.write_bytes(zstd_frame(100) + zstd_frame(SMALL_BOMB))
    with pytest.raises(RasterTooLarge, match=f"declare {SMALL_BOMB + 100} decoded bytes"):
        read_raster(path, channel_axis=0)
    chunk.write_bytes(zstd_frame(SMALL_BOMB, content_size=False))  # numcodecs: streamed whole
    with pytest.raises(RasterError, match="does not declare its decoded size") as e:
        read_raster(path, channel_axis=0)
    assert not isinstance(e.value, RasterTooLarge) and str(chunk) in str(e.value)


def test_zstd_content_size_reads_frame_headers_as_rfc_8878_writes_them() -> None:
    import numcodecs

    from eofm.data_shards.chunk_guard import zstd_content_size

    frames = [bytes(numcodecs.Zstd(level=lvl).encode(np.full(n, 7, np.uint8)))
              for lvl, n in ((1, 10), (3, 300), (5, 70_000), (3, 5_000_000))]
    skippable = struct.pack("<II", 0x184D2A53, 3) + b"abc"
    assert zstd_content_size(b"".join(frames) + skippable) == 10 + 300 + 70_000 + 5_000_000
    assert zstd_content_size(frames[3], stop=1000) == 5_000_000  # stops at the first over
    assert zstd_content_size(zstd_frame(10, content_size=False)) is None
    for bad in (b"not zstd", frames[1][:-2], frames[0] + b"\x00"):
        with pytest.raises(ValueError):
            zstd_content_size(bad)


def test_a_bomb_inside_a_shard_names_the_shard_and_the_chunk(tmp_path: Path) -> None:
    google_crc32c = pytest.importorskip("google_crc32c")
    path = tmp_path / "sharded.zarr"
    x = _zarr_input(path, chunks=(2, 32, 32), shards=SHAPE)
    np.testing.assert_array_equal(read_raster(path, channel_axis=0).data, x)
    shard = _chunk_file(path)
    raw = shard.read_bytes()
    index = np.frombuffer(raw[-(16 * 8 + 4):-4], "<u8").reshape(8, 2)  # (offset, size)
    inner = [zstd_frame(SMALL_BOMB)] + [raw[o:o + n] for o, n in index[1:]]
    offsets = np.cumsum([0] + [len(c) for c in inner[:-1]])
    table = np.array([(o, len(c)) for o, c in zip(offsets, inner, strict=True)], "<u8").tobytes()
    shard.write_bytes(b"".join(inner) + table + struct.pack("<I", google_crc32c.value(table)))
    with pytest.raises(RasterTooLarge, match=r"inner chunk \(0, 0, 0\): its zstd frames") as e:
        read_raster(path, channel_axis=0)
    assert str(e.value).startswith(str(shard))


def test_a_chunk_larger_than_the_array_is_checked_against_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"  # 32 KiB declared, decoded a (4, 4096, 4096) chunk at a time
    zarr.create_array(str(path), shape=SHAPE, chunks=(4, 4096, 4096), dtype="uint16")
    with pytest.raises(RasterTooLarge, match=r"one chunk: zarr decodes whole chunks"):
        read_raster(path, max_bytes=2**20)


def test_codecs_that_cannot_be_bounded_are_refused_when_opened(tmp_path: Path) -> None:
    from zarr.codecs import GzipCodec, ZstdCodec

    path = tmp_path / "two.zarr"
    _zarr_input(path, compressors=[ZstdCodec(), GzipCodec()])
    with pytest.raises(RasterError, match=r"zstd -> gzip: the decoded size of their chunks "
                                          r"cannot be bounded before decoding"):
        read_raster(path, channel_axis=0)


# ------------------------------------------------------------ eofm's own zarr store
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_eurosat) -> Path:
    """Four samples as an eofm zarr store (read only: tests that damage it use a copy)."""
    from eofm.data_shards.build import BuildConfig, build

    tmp = tmp_path_factory.mktemp("zarr")
    build(BuildConfig(str(tiny_eurosat(tmp / "eurosat")), str(tmp / "ds.zarr"), format="zarr",
                      progress=False))
    return tmp / "ds.zarr"


def test_zarr_dataset_refuses_a_bomb_and_still_reads_the_other_samples(
        store: Path, tmp_path: Path) -> None:
    from eofm.data_shards.chunk_guard import ChunkTooLarge
    from eofm.data_shards.zarr_store import ZarrDataset

    bomb = shutil.copytree(store, tmp_path / "bomb.zarr")
    chunk = bomb / "s2_valid" / "c" / "2" / "0" / "0"
    chunk.write_bytes(zstd_frame(SMALL_BOMB))
    good = ZarrDataset(store)
    for ds in (ZarrDataset(bomb), pickle.loads(pickle.dumps(ZarrDataset(bomb)))):  # workers
        with pytest.raises(ChunkTooLarge, match=re.escape(f"{chunk}: its zstd frames declare")):
            ds[2]
        for i in (0, 1, 3):
            np.testing.assert_array_equal(ds[i]["s2"], good[i]["s2"])


def test_zarr_dataset_refuses_chunks_of_more_than_one_sample(store: Path, tmp_path: Path
                                                             ) -> None:
    from eofm.data_shards.zarr_store import ZarrDataset

    bomb = shutil.copytree(store, tmp_path / "big.zarr")
    meta_path = bomb / "s2" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [1, 13, 4096, 4096]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"s2: chunk shape \(1, 13, 4096, 4096\) holds more "
                                         r"than one sample; expected \(1, 13, 8, 8\)"):
        ZarrDataset(bomb, check=False)


# ------------------------------------------------------------ .mat, in process
def test_mat_bombs_in_every_element_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "name.mat"  # a name element of SMALL_BOMB bytes: whosmat allocated it
    body = _mat_var("x", (64, 64), 4, bytes(8192), name_count=SMALL_BOMB)
    path.write_bytes(_mat_header() + _compressed(body, extra_zeros=SMALL_BOMB))
    with pytest.raises(RasterTooLarge, match=f"name: element declares {SMALL_BOMB} bytes; "
                                             "expected at most 4096"):
        read_raster(path)
    imag = _mat_var("x", (64, 64), 4, bytes(8192), complex_part=b"")[:-8]
    path = tmp_path / "imag.mat"
    path.write_bytes(_mat_header() + _compressed(imag + struct.pack("<II", 4, SMALL_BOMB),
                                                 extra_zeros=SMALL_BOMB))
    with pytest.raises(RasterTooLarge, match=f"imaginary part: element declares {SMALL_BOMB}"):
        read_raster(path)
    path = tmp_path / "raw.mat"  # uncompressed, its data element declaring more than it holds
    body = _mat_var("x", (64, 64), 4, bytes(8192))
    body = body[:-8200] + struct.pack("<II", 4, 2**31) + bytes(8192)
    path.write_bytes(_mat_header() + struct.pack("<II", 14, len(body)) + body)
    with pytest.raises(RasterTooLarge, match=r"real part: element declares 2147483648 bytes"):
        read_raster(path)
    path = tmp_path / "tail.mat"  # right sizes, then more data in the compressed stream
    path.write_bytes(_mat_header() + _compressed(_mat_var("x", (64, 64), 4, bytes(8192)),
                                                 extra_zeros=SMALL_BOMB))
    with pytest.raises(RasterError, match="holds more data than its dims declare") as e:
        read_raster(path)
    assert not isinstance(e.value, RasterTooLarge)


def test_mat_stored_bytes_obey_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "wide.mat"  # uint8 class (4096 bytes declared) stored as doubles
    body = _mat_var("x", (64, 64), 9, bytes(8 * 4096), mclass=9)
    path.write_bytes(_mat_header() + _compressed(body))
    assert read_raster(path, max_bytes=8 * 4096).data.dtype == np.float64  # as loadmat
    with pytest.raises(RasterTooLarge, match=r"32768 bytes, more than the 8192 bytes left"):
        read_raster(path, max_bytes=8192)


@pytest.mark.parametrize("compress", [False, True])
def test_mat_variables_read_as_loadmat_reads_them(tmp_path: Path, compress: bool) -> None:
    from scipy.io import loadmat, savemat

    from eofm.data_shards import mat5

    rng = np.random.default_rng(0)
    for dtype in ("f8", "f4", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "c8", "c16",
                  "bool"):
        for shape in ((5, 7), (3, 5, 7), (1, 1), (2,), (0, 3), (4, 3, 2, 2)):
            x = rng.normal(size=shape) * 100 + (1j if dtype[0] == "c" else 0)
            path = tmp_path / f"{dtype}.mat"
            savemat(path, {"s": {"f": 1}, "t": "text", "a": x.astype(dtype),
                           "c": np.array([1, "b"], dtype=object)}, do_compression=compress)
            _, order, found = mat5.scan(path)
            var = next(v for v in found if v.name == "a")
            got = mat5.read_numeric(path, var, order, None)
            want = loadmat(path, variable_names=["a"])["a"]
            assert (got.dtype, got.shape, got.strides) == (want.dtype, want.shape, want.strides)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("order", ["<", ">"])
def test_mat_files_by_other_writers_read_as_loadmat_reads_them(tmp_path: Path, order: str
                                                               ) -> None:
    """Big-endian files, a double variable stored as uint8 (MATLAB's smaller storage types)
    and a last element without its padding."""
    from scipy.io import loadmat, whosmat

    x = np.arange(15, dtype=np.uint8).reshape(3, 5)
    body = _mat_var("img", (3, 5), 2, x.T.tobytes(), mclass=6, order=order)[:-1]
    path = tmp_path / "other.mat"
    path.write_bytes(_mat_header(order) + _compressed(body, order)
                     + struct.pack(order + "II", 14, len(body)) + body.replace(b"img", b"two"))
    assert [v[0] for v in whosmat(path)] == ["img", "two"]
    for key in ("img", "two"):
        got = read_raster(path, key=key).data
        np.testing.assert_array_equal(got, loadmat(path)[key][None])


def test_mat_headers_for_whosmat_list_what_the_file_does(tmp_path: Path) -> None:
    from scipy.io import savemat, whosmat

    from eofm.data_shards import mat5

    path = tmp_path / "many.mat"
    savemat(path, {"a": np.zeros((3, 4, 5), "u2"), "s": {"f": np.ones(3)}, "t": "abc",
                   "c": np.array([1, "b"], dtype=object), "z": np.eye(3) > 0},
            do_compression=True)
    head, order, found = mat5.scan(path)
    assert whosmat(io.BytesIO(mat5.headers_only(head, order, found))) == whosmat(path)
