"""Remote shards that fail for a moment are re-opened and continue exactly where they stopped;
local shards and failures past ``retries`` follow the ``errors`` policy as before."""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.loader import ShardLoader
from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.remote import check_retry_options, is_remote, redact, retry_delay
from eofm.data_shards.tario import TarError, iter_samples

READER_LOG = "eofm.data_shards.reader"

# Cats shard ``argv[1]`` of SRC, but its first FAILS[name] (or FAILS["*"]) openings fail:
# "partial" writes 3/5 of the bytes then exits 1, "before" exits 1 at once, "mixed" alternates,
# "clean" stops between two members of one sample and exits 0 (a connection closed early).
# Openings are counted with one file per opening in COUNTS (O_EXCL: safe across workers).
FLAKY = '''
import io, os, sys, tarfile
SRC, COUNTS, FAILS, MODE = {src!r}, {counts!r}, {fails!r}, {mode!r}
name = sys.argv[1]
n = 0
while True:
    try:
        os.close(os.open(os.path.join(COUNTS, f"{{name}}.{{n}}"), os.O_CREAT | os.O_EXCL))
        break
    except FileExistsError:
        n += 1
with open(os.path.join(SRC, name), "rb") as f:
    data = memoryview(f.read())
def send(view):
    while view:
        view = view[os.write(1, view):]
try:
    if n < FAILS.get(name, FAILS.get("*", 0)):
        if MODE == "clean":
            m = tarfile.open(fileobj=io.BytesIO(data)).getmembers()
            k = next(k for k in range(len(m) // 2, len(m))
                     if m[k].name.split(".")[0] == m[k - 1].name.split(".")[0])
            send(data[: m[k].offset])
            os._exit(0)
        if MODE == "partial" or (MODE == "mixed" and n % 2 == 0):
            send(data[: len(data) * 3 // 5])
        os._exit(1)
    send(data)
except BrokenPipeError:  # the reader stopped early: exit non-zero, as aws s3 cp does
    os._exit(1)
'''


def flaky(src: Path, tmp: Path, fails: dict[str, int], mode: str = "mixed",
          extra: str = "") -> tuple[str, Path]:
    """(``url_template`` reading ``src``'s shards through a flaky command, its counter folder)."""
    tmp.mkdir(parents=True)
    counts = tmp / "counts"
    counts.mkdir()
    script = tmp / "FLAKY.py"
    script.write_text(FLAKY.format(src=str(src), counts=str(counts), fails=fails, mode=mode))
    cmd = f"pipe:{shlex.quote(sys.executable)} {shlex.quote(str(script))} {{name}}"
    return cmd + (f" {extra}" if extra else ""), counts


def openings(counts: Path, name: str) -> int:
    return len(list(counts.glob(f"{name}.*")))


def epoch(ds: ShardDataset, workers: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [(k, s2, s1) for b in ShardLoader(ds, batch_size=4, num_workers=workers)
            for k, s2, s1 in zip(b["__key__"], b["s2"].numpy(), b["s1"].numpy(), strict=True)]


def assert_same_epoch(got: list, want: list) -> None:
    assert [k for k, *_ in got] == [k for k, *_ in want]  # same samples, same order
    for (_, *a), (_, *b) in zip(got, want, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(("buffer", "workers"), [(0, 0), (10, 2)])
def test_retried_reads_give_exactly_the_local_epoch(ben: Path, tmp_path: Path, buffer: int,
                                                    workers: int) -> None:
    url, counts = flaky(ben, tmp_path / "f", {"*": 2})
    kw = {"shuffle_buffer": buffer, "seed": 7}
    want = epoch(ShardDataset(ben, **kw), workers)
    got = epoch(ShardDataset(ben, url_template=url, retries=3, retry_wait=0, **kw), workers)
    assert len(want) == 54
    assert_same_epoch(got, want)
    for shard in load_manifest(ben).shards:  # every shard failed twice, then was read
        assert openings(counts, shard.name) >= 3


def test_a_stream_cut_cleanly_inside_a_sample_is_retried(ben: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A command that exits 0 after half a sample (members missing, no end-of-archive blocks)
    is a failed read: the half sample is never yielded, and the retry gives the whole epoch."""
    url, counts = flaky(ben, tmp_path / "f", {"*": 1}, mode="clean")
    caplog.set_level(logging.WARNING, logger=READER_LOG)
    want = epoch(ShardDataset(ben, seed=2), 0)
    assert_same_epoch(epoch(ShardDataset(ben, seed=2, url_template=url, retry_wait=0), 0), want)
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 8 and all("without the end-of-archive blocks" in m for m in retries)
    assert all(openings(counts, s.name) == 2 for s in load_manifest(ben).shards)


def test_retry_warning_names_the_shard_and_the_attempt(ben: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    name = load_manifest(ben).shards[0].name
    url, counts = flaky(ben, tmp_path / "f", {name: 2}, mode="partial")
    caplog.set_level(logging.WARNING, logger=READER_LOG)
    got = [s["__key__"] for s in ShardDataset(ben, url_template=url, shuffle_shards=False,
                                              retries=3, retry_wait=0)]
    assert got == [s["__key__"] for s in ShardDataset(ben, shuffle_shards=False)]
    retries = [r.getMessage() for r in caplog.records if "re-opening" in r.getMessage()]
    assert len(retries) == 2 and openings(counts, name) == 3
    for attempt, msg in enumerate(retries, start=1):
        assert f"FLAKY.py {name} failed" in msg and f"attempt {attempt} of 4" in msg
    assert not any("skipping" in r.getMessage() for r in caplog.records)


def test_credentials_in_urls_are_not_logged(ben: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    secrets = ["s3cret", "abc123", "tok456", "AKIAXYZ"]
    url, _ = flaky(ben, tmp_path / "f", {"*": 1}, mode="before",
                   extra="'https://alice:s3cret@example.com/b?X-Amz-Signature=abc123"
                         "&X-Amz-Security-Token=tok456' AWS_SECRET_ACCESS_KEY=AKIAXYZ")
    caplog.set_level(logging.DEBUG, logger=READER_LOG)
    assert len(list(ShardDataset(ben, url_template=url, retries=1, retry_wait=0))) == 54
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "re-opening" in text and "https://***@example.com" in text
    assert not [s for s in secrets if s in text]
    strict, _ = flaky(ben, tmp_path / "g", {"*": 99}, mode="before",
                      extra="'https://alice:s3cret@example.com/b?X-Amz-Signature=abc123'")
    with pytest.raises((OSError, TarError)) as err:  # nor put in the error a job dies with
        list(ShardDataset(ben, url_template=strict, retries=0, errors="strict"))
    assert "***" in str(err.value) and not [s for s in secrets if s in str(err.value)]


def test_redact() -> None:
    assert redact("https://bob:pw@host/ds/{name}") == "https://***@host/ds/{name}"
    assert redact("https://ghp_TOKEN@host/x") == "https://***@host/x"
    assert redact("s3://b/x.tar?X-Amz-Credential=AK%2F1&X-Amz-Date=20240101&sig=zz") == (
        "s3://b/x.tar?X-Amz-Credential=***&X-Amz-Date=20240101&sig=***")
    assert redact("pipe:aws s3 cp s3://bucket/ds/x.tar -") == "pipe:aws s3 cp s3://bucket/ds/x.tar -"
    assert redact("pipe:AWS_SESSION_TOKEN=t0k curl -s 'https://h/x?access_token=q'") == (
        "pipe:AWS_SESSION_TOKEN=*** curl -s 'https://h/x?access_token=***'")


def test_retry_options() -> None:
    assert [retry_delay(1.0, a) for a in range(6)] == [1, 2, 4, 8, 16, 30]
    assert retry_delay(0.0, 3) == 0 and retry_delay(0.5, 10_000) == 30
    assert is_remote("pipe:cat x") and is_remote("s3://b/x") and is_remote("https://h/x")
    assert not is_remote("/data/x.tar") and not is_remote("file:///data/x.tar")
    check_retry_options(0, 0)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match=rf"retries: expected an integer >= 0, got {bad!r}"):
            check_retry_options(bad, 1.0)
    for bad in (-0.1, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="retry_wait: expected a finite number of seconds"):
            check_retry_options(3, bad)


def test_dataset_validates_retry_options(ben: Path) -> None:
    with pytest.raises(ValueError, match="retries: expected an integer >= 0, got -2"):
        ShardDataset(ben, retries=-2)
    with pytest.raises(ValueError, match=r"retry_wait: .* got -1"):
        ShardDataset(ben, retry_wait=-1)


def test_failures_beyond_retries_follow_the_errors_policy(ben: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    shard = load_manifest(ben).shards[0].name
    with open(ben / shard, "rb") as f:
        lost = {s["__key__"] for s in iter_samples(f)}
    assert len(lost) == 7
    local = [s["__key__"] for s in ShardDataset(ben)]

    url, counts = flaky(ben, tmp_path / "skip", {shard: 99}, mode="before")
    with pytest.raises(RuntimeError, match=r"skipped 7 of 54 samples .* > max_skip_fraction"):
        list(ShardDataset(ben, url_template=url, retries=2, retry_wait=0))
    assert openings(counts, shard) == 3  # the first try and 2 retries, then given up

    caplog.set_level(logging.WARNING, logger=READER_LOG)
    got = [s["__key__"] for s in ShardDataset(ben, url_template=url, retries=2, retry_wait=0,
                                              max_skip_fraction=0.2)]
    assert got == [k for k in local if k not in lost]
    assert any(f"skipping 7 samples of shard {shard} after 3 attempts" in r.getMessage()
               for r in caplog.records)

    url, counts = flaky(ben, tmp_path / "strict", {shard: 99}, mode="partial")
    with pytest.raises((OSError, TarError)):
        list(ShardDataset(ben, url_template=url, retries=1, retry_wait=0, errors="strict"))
    assert openings(counts, shard) == 2


@pytest.mark.parametrize("prefix", ["", "file://"])
def test_a_corrupt_local_shard_is_not_retried(ben: Path, tmp_path: Path, prefix: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    ds_dir = tmp_path / "ds"
    shutil.copytree(ben, ds_dir)
    shard = ds_dir / load_manifest(ds_dir).shards[1].name
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    location = f"{prefix}{ds_dir}"
    caplog.set_level(logging.WARNING, logger=READER_LOG)

    def keys(**kw) -> list[str]:
        return [s["__key__"] for s in ShardDataset(location, shuffle_shards=False,
                                                   max_skip_fraction=0.5, **kw)]

    before = keys(retries=0)
    assert 47 <= len(before) < 54
    caplog.clear()
    assert keys(retries=3, retry_wait=0) == before
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and f"of shard {shard.name}: " in messages[0]
    assert "truncated" in messages[0] and "attempt" not in messages[0]
    with pytest.raises(ValueError, match="truncated"):
        list(ShardDataset(location, errors="strict", retries=3, retry_wait=0))


def test_a_command_stopped_early_by_the_reader_loses_nothing(ben: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    """The flaky command exits 1 when the reader closes the stream early (a rank's part ends
    mid-shard, or the consumer stops): that is neither retried nor counted, even strict."""
    url, counts = flaky(ben, tmp_path / "f", {})
    caplog.set_level(logging.WARNING, logger=READER_LOG)
    opened = 1  # by the stopped consumer below
    for rank in range(0, 27, 4):  # 2 samples per rank: most parts end mid-shard
        kw = {"rank": rank, "world_size": 27, "errors": "strict"}
        local = ShardDataset(ben, **kw)
        got = [s["__key__"] for s in ShardDataset(ben, url_template=url, **kw)]
        assert got == [s["__key__"] for s in local]
        opened += len({g.shard for g in local.segments(0, 1)})
    it = iter(ShardDataset(ben, url_template=url, errors="strict"))
    next(it)
    it.close()  # stops the command mid-write
    assert caplog.records == []
    assert sum(openings(counts, s.name) for s in load_manifest(ben).shards) == opened


class _ClientHiccup(Exception):
    """Stands for a network client's own error that is not an OSError (aiohttp, botocore)."""


def test_network_client_errors_are_retried_and_other_errors_are_not(
        ben: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eofm.data_shards import reader as R
    from eofm.data_shards.remote import transient_errors

    assert OSError in transient_errors() and EOFError in transient_errors()
    monkeypatch.setattr(R, "transient_errors", lambda: (OSError, EOFError, _ClientHiccup))
    real_open, calls = R._open, {"n": 0}

    def flaky_open(url: str):
        calls["n"] += 1
        if calls["n"] == 1:
            raise _ClientHiccup("server disconnected")
        return real_open(url)

    local = [s["__key__"] for s in ShardDataset(ben)]
    monkeypatch.setattr(R, "_open", flaky_open)
    url = f"pipe:cat {shlex.quote(str(ben))}/{{name}}"
    assert [s["__key__"] for s in ShardDataset(ben, url_template=url, retry_wait=0)] == local
    assert calls["n"] > 1  # the hiccup was met, and read past

    def broken_open(url: str):
        raise KeyError("a bug, not the network")

    monkeypatch.setattr(R, "_open", broken_open)
    with pytest.raises(KeyError, match="a bug"):  # not retried, not skipped
        list(ShardDataset(ben, url_template=url, retry_wait=0))
