"""Python API entry points of eofm.data_shards refuse arguments of the wrong kind at the entry
point, naming the argument, what was expected and what came (``ShardDataset``,
``ShardLoader``); the reader decides on too many unreadable samples as soon as that is certain;
and a dataset of 0 samples is named by its manifest path."""

from __future__ import annotations

import itertools
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from eofm.data_shards.loader import ShardLoader
from eofm.data_shards.manifest import ManifestError, load_manifest
from eofm.data_shards.reader import ShardDataset, TooManySkipped

# ---- ShardDataset ---------------------------------------------------------------------------


@pytest.mark.parametrize("modalities", ["s2", "landsat"])
def test_a_single_modality_string_is_not_split_into_characters(ben: Path,
                                                               modalities: str) -> None:
    with pytest.raises(ValueError, match=rf"modalities: expected a list of modality names, got "
                                         rf"the string '{modalities}'; write \['{modalities}'\]"):
        ShardDataset(ben, modalities=modalities)


def test_modalities_must_be_names(ben: Path) -> None:
    with pytest.raises(ValueError, match=r"modalities: expected a list of modality names "
                                         r"\(strings\), got the list \[5\]"):
        ShardDataset(ben, modalities=[5])  # type: ignore[list-item]


def test_bands_as_a_plain_list_asks_for_the_mapping(ben: Path) -> None:
    with pytest.raises(ValueError, match=r"bands: expected a mapping of modality -> band names, "
                                         r"such as \{'s2': .*got the list \['B02', 'B03'\]$"):
        ShardDataset(ben, bands=["B02", "B03"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got the list \['B02'\]; write \{'s2': \['B02'\]\}"):
        ShardDataset(ben, modalities=["s2"], bands=["B02"])  # type: ignore[arg-type]


@pytest.mark.parametrize(("bands", "pattern"), [
    ({"s2": "B02"}, r"bands\['s2'\]: expected a list of band names, got the string 'B02'; "
                    r"write \['B02'\]"),
    ({"s2": []}, r"bands\['s2'\]: expected at least one band name, got an empty list"),
    ({"s2": [2]}, r"bands\['s2'\]: expected a list of band names \(strings\), got the list \[2\]"),
    ({"s1": ["VV"]}, r"bands: modalities \['s1'\] are not read \(modalities read: \['s2'\]"),
    ({"s3": ["B02"]}, r"bands: modalities \['s3'\] are not read .*the dataset has \['s1', 's2'\]"),
    ({"s2": ["B04", "b4", "B03"]}, r"modality s2: bands \['B04'\] requested more than once "
                                   r"\(names and aliases of one band count as one; got "
                                   r"\['B04', 'b4', 'B03'\]\)"),
])
def test_bands_entries_are_checked(ben: Path, bands: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ShardDataset(ben, modalities=["s2"], bands=bands)


def test_good_modalities_and_bands_still_read(ben: Path) -> None:
    ds = ShardDataset(ben, modalities=("s2",), bands={"s2": ("B04", "B03")}, rank=0,
                      world_size=1)
    assert ds.bands == {"s2": ["B04", "B03"]}
    assert next(iter(ds))["s2"].shape[0] == 2


def test_numpy_and_iterable_arguments_read_as_before(ben: Path) -> None:
    """What worked before the argument checks still does: dict keys and NumPy arrays of
    names, NumPy numbers for counts and fractions (a review found them refused)."""
    import numpy as np

    m = load_manifest(ben)
    ds = ShardDataset(ben, modalities=m.modalities.keys(),
                      bands={"s2": np.array(["B04", "B03"])}, rank=np.int64(0),
                      world_size=np.int64(1), shuffle_buffer=np.int64(0),
                      max_skip_fraction=np.float32(0.05))
    assert ds.bands["s2"] == ["B04", "B03"] and type(ds.bands["s2"][0]) is str
    assert type(ds.max_skip_fraction) is float and type(ds.shuffle_buffer) is int
    loader = ShardLoader(ShardDataset(ben, modalities=["s2"]), batch_size=np.int64(2),
                         num_workers=np.int64(0))
    assert (loader.batch_size, loader.num_workers) == (2, 0)
    assert len(next(iter(loader))["__key__"]) == 2


@pytest.mark.parametrize(("rank", "world_size", "pattern"), [
    (0, 0, r"world_size: expected an int >= 1 \(the number of ranks\), got the int 0"),
    (0, 2.0, r"world_size: expected an int >= 1 .*got the float 2\.0"),
    (2, 2, r"rank: expected an int in \[0, world_size=2\), got the int 2"),
    (-1, 2, r"rank: expected an int in \[0, world_size=2\), got the int -1"),
    ("0", 2, r"rank: expected an int in \[0, world_size=2\), got the str '0'"),
    (1, None, r"rank, world_size: expected both .* or neither .*got rank=1, world_size=None"),
    (None, 4, r"rank, world_size: expected both .*got rank=None, world_size=4"),
])
def test_rank_and_world_size_are_checked(ben: Path, rank: object, world_size: object,
                                         pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ShardDataset(ben, rank=rank, world_size=world_size)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"shuffle_buffer": -1}, r"shuffle_buffer: expected an int >= 0 .*got the int -1"),
    ({"max_skip_fraction": 1.5}, r"max_skip_fraction: expected a number in \[0, 1\], got the "
                                 r"float 1\.5"),
    ({"max_skip_fraction": "0.1"}, r"max_skip_fraction: .*got the str '0\.1'"),
])
def test_other_reader_options_are_checked(ben: Path, kw: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ShardDataset(ben, **kw)


def test_dataset_must_be_a_path(ben: Path) -> None:
    with pytest.raises(TypeError, match=r"dataset: expected a dataset folder or URL \(a str or "
                                        r"Path\), got the NoneType None"):
        ShardDataset(None)  # type: ignore[arg-type]
    assert len(ShardDataset(str(ben), rank=0, world_size=1)) == len(ShardDataset(ben))


# ---- ShardLoader ----------------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [str, Path])
def test_loader_names_a_path_given_for_the_dataset(ben: Path, as_path: type) -> None:
    with pytest.raises(TypeError, match=rf"dataset: expected a ShardDataset, got the "
                                        rf"{as_path(ben).__class__.__name__} .*open it first: "
                                        rf"ShardLoader\(ShardDataset\('{ben}'\), batch_size="):
        ShardLoader(as_path(ben), batch_size=2)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"batch_size": 2.5}, r"batch_size: expected an int >= 1 .*got the float 2\.5"),
    ({"batch_size": 0}, r"batch_size: expected an int >= 1 .*got the int 0"),
    ({"batch_size": "2"}, r"batch_size: expected an int >= 1 .*got the str '2'"),
    ({"batch_size": True}, r"batch_size: expected an int >= 1 .*got the bool True"),
    ({"batch_size": 2, "num_workers": -1}, r"num_workers: expected an int >= 0 .*got the int -1"),
    ({"batch_size": 2, "num_workers": 1.5}, r"num_workers: .*got the float 1\.5"),
    ({"batch_size": 2, "num_workers": 1, "prefetch_factor": 0},
     r"prefetch_factor: expected None or an int >= 1 .*got the int 0"),
])
def test_loader_numbers_are_checked_before_any_worker_starts(ben: Path, kw: dict,
                                                             pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ShardLoader(ShardDataset(ben), **kw)


# ---- too many unreadable samples ------------------------------------------------------------


def _damage(src: Path, out: Path, percent: int = 58) -> tuple[int, int]:
    """Copy ``src`` to ``out`` and break the ``.npy`` magic of the s2 array of ``percent`` %
    of the samples (rounded down), spread evenly over every shard; (broken, total)."""
    shutil.copytree(src, out)
    broken = total = 0
    for shard in load_manifest(out).shards:
        path = out / shard.name
        data = bytearray(path.read_bytes())
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                if not m.name.endswith(".s2.npy"):
                    continue
                if (total + 1) * percent // 100 > total * percent // 100:
                    assert data[m.offset_data:m.offset_data + 6] == b"\x93NUMPY"
                    data[m.offset_data:m.offset_data + 6] = b"XXXXXX"
                    broken += 1
                total += 1
        path.write_bytes(bytes(data))
    return broken, total


@pytest.fixture
def damaged(ben: Path, tmp_path: Path) -> Path:
    """``ben`` with 58% of its samples unreadable (a bad s2.npy each)."""
    broken, total = _damage(ben, tmp_path / "damaged")
    assert (broken, total) == (31, 54)
    return tmp_path / "damaged"


def test_a_short_run_fails_once_the_skips_decide_the_epoch(damaged: Path) -> None:
    """58% unreadable with a 1% limit: one skip of 54 samples already passes it, so a run that
    stops after a few samples fails instead of only warning."""
    ds = ShardDataset(damaged, shuffle_shards=False, rank=0, world_size=1)
    with pytest.raises(TooManySkipped, match=r"skipped 1 of 54 samples \(at least 1\.9%, "
                                             r"whatever the \d+ not read yet hold\) > "
                                             r"max_skip_fraction 1\.0%"):
        list(itertools.islice(ds, 3))
    loader = ShardLoader(ShardDataset(damaged, rank=0, world_size=1), batch_size=4)
    with pytest.raises(TooManySkipped, match=r"skipped 1 of 54 samples"):
        list(itertools.islice(loader, 2))


def test_the_early_decision_waits_until_the_limit_cannot_hold(damaged: Path) -> None:
    """With a 50% limit, 31 of 54 unreadable is certain to pass it once 28 are skipped (28/54
    > 50%): the run fails there, before its end; with a 60% limit the whole epoch reads."""
    ds = ShardDataset(damaged, shuffle_shards=False, max_skip_fraction=0.5)
    with pytest.raises(TooManySkipped, match=r"skipped 28 of 54 samples \(at least 51\.9%, "
                                             r"whatever the [1-9]\d* not read yet hold\)"):
        list(ds)
    got = list(ShardDataset(damaged, shuffle_shards=False, max_skip_fraction=0.6))
    assert len(got) == 54 - 31


# ---- a dataset of 0 samples -----------------------------------------------------------------


def test_an_empty_dataset_is_named_by_its_manifest(ben: Path, tmp_path: Path) -> None:
    """A manifest of 0 samples as older versions wrote it (no shards, null statistics) is
    refused where it is read, naming its path, not later as bands without statistics."""
    d = json.loads((ben / "manifest.json").read_text())
    d["shards"], d["sample_count"] = [], 0
    for m in d["modalities"].values():
        m["stats"] = {b: dict.fromkeys(st) for b, st in m["stats"].items()}
    out = tmp_path / "empty"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(d))
    pattern = (rf"{out / 'manifest.json'}: the dataset holds no samples \(sample_count 0 in 0 "
               rf"shards\), so it has no pixels to read and no band statistics;.*rebuild it")
    with pytest.raises(ManifestError, match=pattern):
        load_manifest(out)
    with pytest.raises(ManifestError, match=pattern):
        ShardDataset(out)
