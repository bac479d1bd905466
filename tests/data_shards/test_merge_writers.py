"""``eofm-shard merge`` of writers run apart (``--writer-id``): every part must come from the
same ``--num-writers`` (writer w of N writes items w, w + N, ...; parts of two writer counts
would lose some items and write others twice, and the merged dataset still verified), and the
parts together must hold every planned item exactly once (each part's ``items`` is its
round-robin share). Otherwise the merge is refused naming the part files, and no manifest is
written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from eofm.data_shards.build import PARTS
from eofm.data_shards.cli import main
from eofm.data_shards.manifest import MANIFEST_NAME, load_manifest
from eofm.data_shards.tario import iter_samples

ITEMS = 10  # 2 classes x 5 images of 16 px: one sample each


@pytest.fixture(scope="module")
def source(eurosat_folder: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eurosat_folder(tmp_path_factory.mktemp("writers") / "raw", classes=2, per_class=5,
                          size=16)


def _writer(source: Path, out: Path, wid: int, n: int) -> None:
    assert main(["build", str(source), "--out", str(out), "--quiet",
                 "--num-writers", str(n), "--writer-id", str(wid)]) == 0


@pytest.fixture(scope="module")
def two_writers(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Writers 0 and 1 of ``--num-writers 2``, run apart, not merged (read only: copy it)."""
    out = tmp_path_factory.mktemp("writers") / "ds"
    for wid in (0, 1):
        _writer(source, out, wid, 2)
    assert not (out / MANIFEST_NAME).exists()
    return out


def _keys(out: Path) -> list[str]:
    keys = []
    for tar in sorted(out.glob("shard-*.tar")):
        with open(tar, "rb") as f:
            keys += [raw["__key__"] for raw in iter_samples(f, str(tar))]
    return keys


def test_parts_of_different_num_writers_are_refused(source: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """The review's case: writer 0 of 2 and writer 1 of 3 hold items 0, 2, 4, ... and 1, 4,
    7, ...: merged, items were lost and item 4 written twice, and verify said OK."""
    out = tmp_path / "ds"
    _writer(source, out, 0, 2)
    _writer(source, out, 1, 3)
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eofm-shard merge: error: {out / PARTS}: writer parts of different "
                          "--num-writers"), err
    assert (f"{out / PARTS / 'writer-01.json'}: run with --num-writers 3, but writer-00.json "
            "with --num-writers 2") in err, err
    assert "Traceback" not in err
    assert not (out / MANIFEST_NAME).exists()


def test_parts_that_do_not_hold_every_item_once_are_refused(two_writers: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture
                                                            ) -> None:
    out = tmp_path / "ds"
    shutil.copytree(two_writers, out)
    path = out / PARTS / "writer-01.json"
    good = path.read_text()
    part = json.loads(good)
    assert part["items"] == ITEMS // 2
    part["items"] += 2  # as if it had written two items more than its share
    path.write_text(json.dumps(part))
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eofm-shard merge: error: {out / PARTS}: the writer parts do not "
                          f"hold one plan's {ITEMS + 2} item(s) once each"), err
    assert "writer-01.json: 7 item(s), expected 6" in err, err
    assert "writer-00.json: 5 item(s), expected 6" in err, err
    assert not (out / MANIFEST_NAME).exists()
    # as written, the same parts merge: every source image once
    path.write_text(good)
    assert main(["merge", str(out)]) == 0
    keys = _keys(out)
    assert load_manifest(out).sample_count == len(keys) == len(set(keys)) == ITEMS
