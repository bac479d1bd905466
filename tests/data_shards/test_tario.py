"""The hand-rolled tar readers: a cut file reports where it really ends, and empty input is
the same error from a stream and from a buffer."""

from __future__ import annotations

import io
import tarfile

import pytest

from eofm.data_shards.tario import TarError, iter_samples


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _both(data: bytes) -> list[list[dict]]:
    """Samples read by the stream reader and by the buffer reader."""
    out = []
    for src in (io.BytesIO(data), memoryview(data)):
        out.append([{k: bytes(v) if k != "__key__" else v for k, v in s.items()}
                    for s in iter_samples(src, "x.tar")])
    return out


def test_whole_tar_reads_alike() -> None:
    stream, buf = _both(_tar({"a.s2.npy": b"12345", "a.json": b"{}", "b.s2.npy": b"6"}))
    assert stream == buf == [{"__key__": "a", "s2.npy": b"12345", "json": b"{}"},
                             {"__key__": "b", "s2.npy": b"6"}]


def test_cut_in_the_last_members_padding_reports_the_real_length() -> None:
    """Cut after the last member's 5 data bytes: the end is 512 + 5, not the padded 1024."""
    data = _tar({"a.s2.npy": b"12345"})[: 512 + 5]
    with pytest.raises(TarError, match=r"x\.tar: truncated tar \(ends at offset 517 without "):
        list(iter_samples(memoryview(data), "x.tar"))
    with pytest.raises(TarError, match=r"x\.tar: truncated tar"):
        list(iter_samples(io.BytesIO(data), "x.tar"))


@pytest.mark.parametrize("src", [io.BytesIO(b""), memoryview(b"")], ids=["stream", "buffer"])
def test_empty_input_is_an_empty_tar_error_in_both_readers(src) -> None:
    with pytest.raises(TarError, match=r"x\.tar: empty tar \(0 bytes; a shard holds at least "
                                       r"the end-of-archive blocks\)"):
        list(iter_samples(src, "x.tar"))
