"""A tar member's declared size, as read from a stream (a remote URL or ``pipe:`` shard): a header
declaring more than a member of the dataset can hold (2**45 bytes, 2**80) is a TarError naming
the shard, the member and its offset, raised before anything is allocated, so ``errors="skip"``
skips and counts the shard's samples like any damaged shard (it used to be a bare MemoryError or
OverflowError naming nothing, which no policy caught). The limit comes from the manifest
(:func:`~eofm.data_shards.reader.max_member_bytes`). The size field is read as :func:`tarfile.nti`
reads it: a GNU base-256 number ending in zero bytes used to lose them (8 GiB + 256 read as
33554433, 2**45 as 0), and a negative size sent the buffer reader back over the same header
for ever."""

from __future__ import annotations

import io
import itertools
import json
import os
import shlex
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards import reader, tario
from eofm.data_shards.codec import encode_npy
from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.tario import TarError, iter_members_buffer, iter_samples
from eofm.data_shards.writer import ShardWriter

HOSTILE_SIZES = [2**45 + 1, 2**80 + 1, 2**33 + 256, 5 * 10**9]
SIZES = sorted({0, 1, 7, 8, 511, 512, 513, 1000, 8**7 - 1, 8**7, 8**11 - 1, 8**11, 2**33,
                2**33 + 256, 2**40, 2**45, 2**45 + 1, 2**63, 2**64, 2**80, 2**80 + 1,
                2**88 - 1, *(int(x) for x in np.random.default_rng(0).integers(0, 2**62, 40))})


def _number_fields(n: int) -> list[bytes]:
    """``n`` as the 12-byte size and 8-byte checksum fields tarfile writes (GNU: octal while it
    fits, else base-256), and as the 12-byte octal fields of other writers (space padded)."""
    out = [tarfile.itn(n, 12, tarfile.GNU_FORMAT)]
    if n < 8**7:
        out += [tarfile.itn(n, 8, tarfile.GNU_FORMAT), b"%06o\x00 " % n]
    if n < 8**10:
        out += [b" %010o " % n, b"%011o " % n]
    return out


@pytest.mark.parametrize("n", SIZES)
def test_number_fields_read_as_tarfile_nti_reads_them(n: int) -> None:
    for field in _number_fields(n):
        assert tario._octal(field) == tarfile.nti(field) == n, field


def test_base256_sizes_ending_in_zero_bytes_keep_them() -> None:
    """The reviewer's values: the old reader stripped the trailing zero bytes as padding."""
    for n in (2**33 + 256, 2**45, 2**80):
        field = bytes([0x80]) + n.to_bytes(11, "big")
        assert field.endswith(b"\x00")
        assert tario._octal(field) == tarfile.nti(field) == n


@pytest.mark.parametrize("field", [tarfile.itn(-5, 12, tarfile.GNU_FORMAT),
                                   b"-0001000" + bytes(4), b"+0001000" + bytes(4),
                                   b"0o1000" + bytes(6), b"1_000" + bytes(7), b"12x" + bytes(9)],
                         ids=["base256-negative", "minus", "plus", "0o", "underscore", "letter"])
def test_signed_or_non_octal_numbers_are_refused(field: bytes) -> None:
    with pytest.raises(ValueError):
        tario._octal(field)


def _header(name: str, size_field: bytes) -> bytes:
    """A ustar header for ``name`` whose size field is ``size_field`` (checksum recomputed)."""
    h = bytearray(tarfile.TarInfo(name).tobuf(tarfile.USTAR_FORMAT))
    h[124:136] = size_field
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\x00 " % (sum(h[:148]) + 256 + sum(h[156:]))
    return bytes(h)


def _tar(members: dict[str, bytes]) -> bytes:
    """A GNU tar of ``members`` (end blocks included)."""
    out = b""
    for name, data in members.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        out += info.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)
    return out + bytes(1024)


def test_a_negative_size_is_a_corrupt_header_in_both_readers() -> None:
    """size -512: the buffer reader went back to the same header for ever (yielding it)."""
    data = _header("k.s2.npy", b"-0001000" + bytes(4)) + bytes(2048)
    with pytest.raises(TarError, match=r"x\.tar: corrupt tar header at offset 0: size field: "
                                       r"expected an octal or base-256 number >= 0, got "):
        list(itertools.islice(iter_members_buffer(memoryview(data), "x.tar"), 5))
    with pytest.raises(TarError, match=r"x\.tar: corrupt tar header at offset 0: size field"):
        list(iter_samples(_stream(data), "x.tar"))


def _stream(data: bytes) -> io.BytesIO:
    """``data`` as a stream (what the reader gets from a URL or ``pipe:`` shard)."""
    return io.BytesIO(data)


def test_a_streamed_member_over_the_limit_is_refused_before_it_is_read() -> None:
    tar = _tar({"a.s2.npy": b"x" * 1000, "a.json": b"{}", "b.s2.npy": b"y" * 1001})
    with pytest.raises(TarError, match=r"^x\.tar: tar member 'b\.s2\.npy' \(header at offset "
                                       r"2560\) declares 1001 bytes; expected at most 1000 "):
        list(iter_samples(_stream(tar), "x.tar", max_member=1000))
    assert [s["__key__"] for s in iter_samples(_stream(tar), "x.tar", max_member=1001)] == [
        "a", "b"]
    # the buffer reader needs no limit: members are views, bounded by the buffer
    assert len(list(iter_samples(memoryview(tar), "x.tar", max_member=10))) == 2


def test_the_default_limit_applies_without_one() -> None:
    limit = 2**30
    info = tarfile.TarInfo("k.s2.npy")
    info.size = limit + 1
    data = info.tobuf(tarfile.GNU_FORMAT) + bytes(4096)
    with pytest.raises(TarError, match=rf"declares {limit + 1} bytes; expected at most {limit} "):
        list(iter_samples(_stream(data), "x.tar"))
    assert limit == tario.DEFAULT_MAX_MEMBER
    info.size = limit  # not over it: read, and here cut short
    with pytest.raises(TarError, match=rf"x\.tar: truncated tar \(wanted {limit} bytes "):
        list(iter_samples(_stream(info.tobuf(tarfile.GNU_FORMAT) + bytes(4096)), "x.tar"))


def _hostile_dataset(root: Path, size: int) -> tuple[str, int]:
    """Two shards of 3 samples (3 bands of 4 x 4, manifest shape [3, 4, 4]); in the second,
    sample k4's first member declares ``size`` bytes (nothing after it but 4 KiB of zeros).
    Returns the hostile shard's name and the offset of that member's header."""
    with ShardWriter(root, "shard-00", max_samples=3) as w:
        for i in range(6):
            w.write({"__key__": f"k{i}", "s2.npy": encode_npy(np.full((3, 4, 4), i, np.uint16)),
                     "meta.json": b"{}"})
    shards = [{"name": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256}
              for s in w.finished]
    manifest = {"format": "eofm-shards", "format_version": 1,
                "modalities": {"s2": {"sensor": "s2_l1c", "bands": ["B02", "B03", "B04"],
                                      "dtype": "uint16", "shape": [3, 4, 4],
                                      "nodata": [0.0] * 3, "gsd_m": 10.0}},
                "shards": shards, "extra": {"s2_offset": {}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    shard = root / w.finished[1].name
    with tarfile.open(shard) as tf:
        at = next(m.offset for m in tf.getmembers() if m.name.startswith("k4."))
    info = tarfile.TarInfo("k4.s2.npy")
    info.size = size
    shard.write_bytes(shard.read_bytes()[:at] + info.tobuf(tarfile.GNU_FORMAT) + bytes(4096))
    return shard.name, at


# Reads each dataset through ``pipe:`` with the address space capped at 2 GiB over what the
# imports took: a reader that tries to allocate a member's declared size fails here.
CHILD = r"""
import json, logging, resource, sys
from eofm.data_shards.reader import ShardDataset
records = []
logging.getLogger("eofm.data_shards.reader").addHandler(
    type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30,) * 2)
out = []
for root in sys.argv[1:]:
    records.clear()
    row = {"keys": None, "error": None, "strict": None}
    url = "pipe:AWS_SESSION_TOKEN=t0k cat " + root + "/{name}"
    try:
        row["keys"] = [s["__key__"] for s in ShardDataset(
            root, url_template=url, shuffle_shards=False, retries=0, max_skip_fraction=0.6)]
    except BaseException as e:
        row["error"] = f"{type(e).__name__}: {e}"
    row["warnings"] = list(records)
    try:
        list(ShardDataset(root, url_template=url, retries=0, errors="strict"))
    except BaseException as e:
        row["strict"] = f"{type(e).__name__}: {e}"
    out.append(row)
print(json.dumps(out))
"""


def test_a_streamed_shard_declaring_a_huge_member_is_skipped_by_name_without_allocating(
        tmp_path: Path) -> None:
    roots, hostile = [], []
    for i, size in enumerate(HOSTILE_SIZES):
        roots.append(tmp_path / f"ds{i}")
        hostile.append(_hostile_dataset(roots[-1], size))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", CHILD, *map(str, roots)], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    for size, (name, at), row in zip(HOSTILE_SIZES, hostile, rows, strict=True):
        what = (f"tar member 'k4.s2.npy' (header at offset {at}) declares {size} bytes; "
                "expected at most ")
        assert row["error"] is None, (size, row)  # skipped, not a MemoryError/OverflowError
        # the first shard whole; the second's 3 samples skipped, counted and named
        assert row["keys"] == ["k0", "k1", "k2"], (size, row)
        assert len(row["warnings"]) == 1, (size, row)
        warning = row["warnings"][0]
        assert warning.startswith(f"skipping 3 samples of shard {name}: pipe:"), (size, warning)
        assert what in warning and "t0k" not in warning, (size, warning)  # redacted
        assert row["strict"].startswith("TarError: pipe:"), (size, row)
        assert f"/{name}: {what}" in row["strict"] and "t0k" not in row["strict"], (size, row)


def test_max_member_bytes_bounds_every_member_of_a_built_dataset(ben: Path) -> None:
    m = load_manifest(ben)
    assert m.labels is not None and all(mod.shape for mod in m.modalities.values())
    for shard in m.shards:
        limit = reader.max_member_bytes(m, shard)
        assert limit < tario.DEFAULT_MAX_MEMBER  # tighter than the default
        with tarfile.open(ben / shard.name) as tf:
            assert max(t.size for t in tf.getmembers()) <= limit
    # the whole dataset reads through a stream as from the memory-mapped files
    url = f"pipe:cat {shlex.quote(str(ben))}/{{name}}"
    local = [s["__key__"] for s in ShardDataset(ben, shuffle_shards=False)]
    assert [s["__key__"] for s in ShardDataset(ben, url_template=url, shuffle_shards=False,
                                               errors="strict")] == local
    assert len(local) == m.sample_count


def test_max_member_bytes_from_the_manifest(ben: Path) -> None:
    m = load_manifest(ben)
    shard = m.shards[0]
    s2 = replace(next(iter(m.modalities.values())), dtype="float32", shape=[12, 100, 50],
                 bands=[f"B{i}" for i in range(12)])
    slack = reader.MEMBER_SLACK
    one = replace(m, modalities={"s2": s2}, labels=None)
    assert reader.max_member_bytes(one, shard) == 12 * 100 * 50 * 4 + slack  # the pixels
    # a one-band uint8 modality: a seg raster of any dtype (16 bytes a pixel) is larger
    mask = replace(s2, dtype="uint8", shape=[1, 100, 50], bands=["B1"])
    assert reader.max_member_bytes(replace(one, modalities={"m": mask}), shard) == (
        100 * 50 * 16 + slack)
    # several modalities: the largest of them (a finer grid's seg, a larger array)
    fine = replace(mask, shape=[1, 1000, 1000])
    assert reader.max_member_bytes(replace(one, modalities={"s2": s2, "m": fine}), shard) == (
        1000 * 1000 * 16 + slack)
    many = replace(one, labels=replace(m.labels, classes=[f"c{i}" for i in range(10**6)]))
    assert reader.max_member_bytes(many, shard) == 8 * 10**6 + slack
    # tiles of several sizes: no bound from the shapes; the shard's size, at least the default
    free = replace(one, modalities={"s2": replace(s2, shape=[])})
    assert reader.max_member_bytes(free, shard) == tario.DEFAULT_MAX_MEMBER
    big = replace(shard, bytes=3 * 2**30)
    assert reader.max_member_bytes(free, big) == 3 * 2**30
