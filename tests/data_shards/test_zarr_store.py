"""A zarr store's integrity: every chunk is written (all-zero ones too) and recorded so, so a
chunk file lost since (an interrupted copy or rsync), which zarr reads as zeros, is refused by
:class:`ZarrDataset` and named by ``verify``; the group attribute ``keys`` is checked (a store
without it was a ``KeyError: 'keys'`` traceback)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.checks import verify
from eofm.data_shards.zarr_store import ZarrDataset

COMPLETE_ATTR = "complete_chunks"  # the group attribute: every chunk was written


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_eurosat) -> Path:
    """Four labelled samples (two of class 0, whose label chunks are all zero) as a zarr store
    (read only: tests that damage it work on a copy)."""
    tmp = tmp_path_factory.mktemp("zarr")
    out = tmp / "ds.zarr"
    build(BuildConfig(str(tiny_eurosat(tmp / "eurosat")), str(out), format="zarr", progress=False))
    return out


def _copy(src: Path, dst: Path) -> Path:
    """A copy of the store ``src`` at ``dst``, to damage."""
    shutil.copytree(src, dst)
    return dst


def _edit_attrs(store: Path, **changes: object) -> None:
    """Set (or with ``None`` delete) group attributes in ``store``'s zarr.json."""
    meta = json.loads((store / "zarr.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta["attributes"].pop(k, None)
        else:
            meta["attributes"][k] = v
    (store / "zarr.json").write_text(json.dumps(meta))


def test_every_chunk_is_written_even_all_zero_ones(store: Path) -> None:
    group = zarr.open_group(str(store), mode="r")
    labels = ZarrDataset(store).arrays["labels"]
    assert sorted(int(x) for x in labels[:]) == [0, 0, 1, 1]  # class 0: an all-zero chunk
    for name in ("s2", "s2_valid", "labels"):
        assert group[name].nchunks_initialized == group[name].nchunks == 4, name
    assert group.attrs.get(COMPLETE_ATTR) is True


def test_a_lost_chunk_is_refused_not_read_as_zeros(store: Path, tmp_path: Path) -> None:
    z = _copy(store, tmp_path / "lost.zarr")
    row0 = int(np.flatnonzero(ZarrDataset(z).arrays["labels"][:] == 0)[0])
    (z / "s2" / "c" / "3" / "0" / "0" / "0").unlink()
    (z / "labels" / "c" / str(row0)).unlink(missing_ok=True)  # never written before the fix
    with pytest.raises(ValueError, match=rf"lost\.zarr/labels: 1 of 4 chunk files missing "
                                         rf"\(rows {row0}; files labels/c/{row0}\).*copy the "
                                         r"store again, or rebuild it"):
        ZarrDataset(z)
    problems = {Path(p.where).name: p.what for p in verify(z)}
    assert set(problems) == {"s2", "labels"}
    assert problems["s2"].startswith("1 of 4 chunk files missing (rows 3; files s2/c/3/0/0/0)")


def test_a_store_built_before_is_read_with_a_note_from_verify(
        store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without the attribute a lost chunk cannot be told from an all-zero one: such a store is
    not refused, but verify says so."""
    z = _copy(store, tmp_path / "old.zarr")
    _edit_attrs(z, **{COMPLETE_ATTR: None})
    (z / "s2" / "c" / "1" / "0" / "0" / "0").unlink()
    assert not ZarrDataset(z)[1]["s2"].any()  # zeros, as before: nothing says it was lost
    with caplog.at_level(logging.WARNING, logger="eofm.data_shards.checks"):
        assert verify(z) == []
    assert "built before eofm stored every zarr chunk" in caplog.text
    assert "cannot be detected; rebuild it" in caplog.text


@pytest.mark.parametrize(("keys", "match"), [
    (None, r"old\.zarr/zarr\.json: the group attribute 'keys' \(the sample keys, one per row\) "
           r"is missing; expected a list of strings"),
    ("k0", r"zarr\.json: the group attribute 'keys' .*expected a list of strings, got str"),
    ([0, 1, 2, 3], r"expected a list of strings, got a list holding int"),
])
def test_keys_attribute_that_is_missing_or_not_strings_is_named(
        store: Path, tmp_path: Path, keys: object, match: str) -> None:
    z = _copy(store, tmp_path / "old.zarr")
    meta = json.loads((z / "zarr.json").read_text())
    if keys is None:
        del meta["attributes"]["keys"]
    else:
        meta["attributes"]["keys"] = keys
    (z / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        ZarrDataset(z)
    with pytest.raises(ValueError, match=match):
        verify(z)


def test_keys_of_another_count_than_the_rows_are_named(store: Path, tmp_path: Path) -> None:
    z = _copy(store, tmp_path / "short.zarr")
    keys = ZarrDataset(z).keys
    _edit_attrs(z, keys=keys[:3])
    with pytest.raises(ValueError, match=r"short\.zarr/s2: 4 rows, but the group attribute "
                                         r"'keys' lists 3 samples"):
        ZarrDataset(z)
    assert {Path(p.where).name: p.what for p in verify(z)}["s2"] == (
        "4 rows, but the group attribute 'keys' lists 3 samples (expected one row per key)")


# ---- bands: checked as ShardDataset checks them --------------------------------------------

BAD_BANDS = [
    ({"S2": ["B04", "B03"]}, r"bands: modalities \['S2'\] are not read .*the dataset has "
                             r"\['s2'\]"),
    ({"s2": ["B04", "B4"]}, r"modality s2: bands \['B04'\] requested more than once \(names "
                            r"and aliases of one band count as one; got \['B04', 'B4'\]\)"),
    ({"s2": []}, r"bands\['s2'\]: expected at least one band name, got an empty list"),
    ({"s2": "B04"}, r"bands\['s2'\]: expected a list of band names, got the string 'B04'"),
    (["B04"], r"bands: expected a mapping of modality -> band names.*write \{'s2': \['B04'\]\}"),
    ({"s2": ["B04", "B13"]}, r"sensor 's2_l1c': unknown band\(s\) 'B13'"),
]


@pytest.mark.parametrize(("bands", "match"), BAD_BANDS)
def test_bands_that_shard_dataset_refuses_are_refused(store: Path, bands: object,
                                                      match: str) -> None:
    """Before, a modality the store lacks (wrong case) was ignored and every band read, a band
    named twice (B04 and B4) read twice, and an empty list read all bands."""
    with pytest.raises(ValueError, match=match):
        ZarrDataset(store, bands=bands)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bands", "match"), BAD_BANDS)
def test_bands_are_refused_with_the_same_message_as_shard_dataset(
        store: Path, tmp_path_factory: pytest.TempPathFactory, tiny_eurosat,
        bands: object, match: str) -> None:
    from eofm.data_shards.reader import ShardDataset

    shards = tmp_path_factory.getbasetemp() / "bands_shards"
    if not shards.exists():
        src = tiny_eurosat(tmp_path_factory.mktemp("bands_src") / "eurosat")
        build(BuildConfig(str(src), str(shards), progress=False))
    errors = []
    for open_ in (lambda: ZarrDataset(store, bands=bands),  # type: ignore[arg-type]
                  lambda: ShardDataset(shards, bands=bands, rank=0, world_size=1)):
        with pytest.raises(ValueError) as e:
            open_()
        errors.append(str(e.value))
    assert errors[0].replace(str(store), "DS") == errors[1].replace(str(shards), "DS")


def test_good_bands_select_and_order_in_any_spelling(store: Path) -> None:
    full = ZarrDataset(store)
    have = full.manifest.modalities["s2"].bands
    got = ZarrDataset(store, bands={"s2": ["B4", "b03"]})[0]["s2"]
    assert got.shape[0] == 2
    np.testing.assert_array_equal(got, full[0]["s2"][[have.index("B04"), have.index("B03")]])
    assert ZarrDataset(store, bands={"s2": None})[0]["s2"].shape[0] == len(have)
