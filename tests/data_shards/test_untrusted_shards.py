"""Shards, manifests and URLs from elsewhere: nothing in them may run code, escape the dataset
folder, leak credentials into messages or make the reader parse megabytes of header."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.codec import decode_npy, encode_npy
from eofm.data_shards.manifest import ManifestError, load_manifest
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.remote import redact
from eofm.data_shards.writer import ShardWriter

BANDS = ["B02", "B03", "B04"]


class _Boom:
    """Unpickling it creates ``path``: the proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def _dataset(root: Path, extra: dict[str, bytes] | None = None, names: list[str] | None = None
             ) -> Path:
    """A one-shard, two-sample S2 dataset at ``root`` (shard names replaced by ``names``)."""
    root.mkdir(parents=True, exist_ok=True)
    with ShardWriter(root, "shard-00") as w:
        for i in range(2):
            x = np.full((3, 4, 4), i + 1, np.uint16)
            w.write({"__key__": f"k{i}", "s2.npy": encode_npy(x), **(extra or {})})
    shards = [{"name": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256,
               "writer": 0} for s in w.finished]
    for s, n in zip(shards, names or [], strict=False):
        s["name"] = n
    manifest = {"format": "eofm-shards", "format_version": 1,
                "modalities": {"s2": {"sensor": "s2_l1c", "bands": BANDS, "dtype": "uint16",
                                      "shape": [3, 4, 4], "nodata": [0.0] * 3, "gsd_m": 10.0}},
                "shards": shards, "extra": {"s2_offset": {}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize("name", [
    "../outside.tar", "/etc/passwd", "sub/shard.tar", "x.tar;touch${IFS}PWNED",
    "$(touch PWNED).tar", "-rf.tar", "a" * 300, "", "..tar"])
def test_manifest_refuses_shard_names_that_are_not_plain_file_names(tmp_path: Path,
                                                                     name: str) -> None:
    root = _dataset(tmp_path / "ds", names=[name])
    with pytest.raises(ManifestError, match=r"shards\[0\]\.name: expected a plain file name"):
        load_manifest(root)


def test_a_shard_name_cannot_inject_into_a_pipe_template(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """url_template ``pipe:`` commands run in a shell (webdataset's gopen, shell=True): the
    shard name comes from the manifest, i.e. from whoever wrote the dataset."""
    root = _dataset(tmp_path / "ds")
    shard = root / "shard-00-000000.tar"
    _dataset(tmp_path / "ds", names=[f"{shard.name};touch${{IFS}}PWNED"])
    monkeypatch.chdir(tmp_path)
    try:
        ds = ShardDataset(root, rank=0, world_size=1, shuffle_shards=False, errors="strict",
                          url_template=f"pipe:cat {root}/{{name}}", retries=0)
        list(ds)
    except ManifestError:
        pass
    assert not (tmp_path / "PWNED").exists(), "the manifest's shard name ran a shell command"


def test_pickle_members_are_never_unpickled(tmp_path: Path) -> None:
    """webdataset's default decoders unpickle ``.pyd``/``.pickle`` members; ours never look."""
    canary = tmp_path / "UNPICKLED"
    evil = pickle.dumps(_Boom(str(canary)))
    root = _dataset(tmp_path / "ds", extra={"x.pyd": evil, "x.pickle": evil, "pth": evil,
                                            "meta.pyd": evil})
    got = list(ShardDataset(root, rank=0, world_size=1, shuffle_shards=False, errors="strict",
                            with_meta=True))
    assert len(got) == 2 and not canary.exists()
    assert all(set(s) <= {"__key__", "s2", "s2_valid", "__worker__", "__pos__"} for s in got)


def test_object_dtype_npy_is_refused() -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object dtype"):
        decode_npy(buf.getvalue())


def test_npy_header_size_is_bounded() -> None:
    """A shard member with a megabyte ``.npy`` header is refused before ast.literal_eval (and
    the header cache) sees it, as numpy.load refuses it."""
    header = ("{'descr': '<u1', 'fortran_order': False, 'shape': (1,), 'pad': '"
              + "x" * 1_000_000 + "'}").encode("latin1")
    data = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header + b"\x00"
    with pytest.raises(ValueError, match=r"\.npy header of \d+ bytes; expected at most 10000"):
        decode_npy(data)


def test_a_huge_shape_claim_allocates_nothing() -> None:
    header = b"{'descr': '<u2', 'fortran_order': False, 'shape': (1000000, 1000000), }"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 8
    with pytest.raises(ValueError, match="header says 2000000000000"):
        decode_npy(data)


TOKEN = "hf_" + "AbCdEfGh1234567890XyZ" * 2  # hf_ + 42 (real ones: hf_ + 34)


@pytest.mark.parametrize("text", [
    # webdataset 1.0's error for a failed hf:// read quotes curl's arguments
    f"(['curl', '--connect-timeout', '30', '-f', '-s', '-L', '-H', 'Authorization:Bearer "
    f"{TOKEN}', 'https://huggingface.co/datasets/o/d/resolve/main/x.tar'], {{}}): exit 22 (read)",
    f"pipe:curl -H 'Authorization: Bearer {TOKEN}' https://host/x.tar",
    f"pipe:curl -H 'authorization: token {TOKEN}' https://host/x.tar",
    f"pipe:curl -H 'Authorization: Basic {TOKEN}' https://host/x.tar",
    f"HF_TOKEN={TOKEN} python -m x",
    f"token {TOKEN} rejected",
])
def test_redact_removes_authorisation_headers_and_hf_tokens(text: str) -> None:
    assert TOKEN not in redact(text)
    assert TOKEN[3:] not in redact(text)


def test_redact_keeps_ordinary_words() -> None:
    text = "pipe:aws s3 cp s3://bucket/ds/shard-00-000000.tar - (hf_hub_download, authorised)"
    assert redact(text) == text


def test_a_remote_manifest_error_does_not_quote_the_token(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """load_manifest of a remote URL: the opener's error (webdataset's quotes an HF token
    header) reaches the user redacted, and so does the URL's own user:password."""
    import webdataset as wds

    def failing(url: str, mode: str = "rb", **kw: object) -> None:
        raise OSError(f"(['curl', '-H', 'Authorization:Bearer {TOKEN}', '{url}'], {{}}): "
                      "exit 22 (read)")

    monkeypatch.setattr(wds, "gopen", failing)
    with pytest.raises(OSError) as err:
        load_manifest("https://alice:s3cr3tpass@host/ds")
    assert TOKEN not in str(err.value) and "s3cr3tpass" not in str(err.value)
    assert "cannot read the manifest" in str(err.value)


def test_remote_manifest_messages_do_not_quote_url_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import webdataset as wds

    monkeypatch.setattr(wds, "gopen", lambda url, mode="rb", **kw: io.BytesIO(b"not json"))
    with pytest.raises(ManifestError) as err:
        load_manifest("https://alice:s3cr3tpass@host/ds")
    assert "s3cr3tpass" not in str(err.value) and "not valid JSON" in str(err.value)


def test_plain_dataset_still_reads(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    got = list(ShardDataset(root, rank=0, world_size=1, shuffle_shards=False, errors="strict"))
    assert [int(s["s2"][0, 0, 0]) for s in got] == [1, 2]
