"""Pairing inputs by location and season keeps every input's metadata and never drops a
label or segmentation raster silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from eofm.data_shards.layouts import LayoutError, ModalitySource, SourceItem
from eofm.data_shards.pairing import pair_by_location

S1, S2 = "/in/s1", "/in/s2a"


def _item(root: str, modality: str, season: str, **kw) -> SourceItem:
    meta = {"source": f"{root}/0000200/{season}", "source_metadata": {"from": modality},
            **kw.pop("meta", {})}
    return SourceItem(season, {modality: ModalitySource("rgb", [])}, meta=meta, **kw)


def _pair(s1: dict | None = None, s2: dict | None = None, order: int = 1) -> SourceItem:
    found = [(S1, [_item(S1, "s1", "S1A_20200607T010800_x", **(s1 or {}))]),
             (S2, [_item(S2, "s2", "20200604T054639_T43RCP", **(s2 or {}))])]
    (item,) = pair_by_location(found[::order])
    return item


@pytest.mark.parametrize("order", [1, -1])
def test_each_inputs_metadata_is_kept_per_modality(order: int) -> None:
    """S2's metadata.json (cloud percentage) survives whichever input comes first."""
    meta = _pair({"meta": {"orbit": 7, "product": "GRD"}}, {"meta": {"orbit": 7}}, order).meta
    assert meta["s1_source_metadata"] == {"from": "s1"}
    assert meta["s2_source_metadata"] == {"from": "s2"}
    assert "source_metadata" not in meta  # not one input's in place of the other's
    assert meta["s1_source"] == f"{S1}/0000200/S1A_20200607T010800_x"
    assert meta["s2_source"] == f"{S2}/0000200/20200604T054639_T43RCP"
    assert meta["s2_acquisition_time"] == "20200604T054639"
    assert meta["orbit"] == 7 and meta["s1_product"] == "GRD" and "product" not in meta
    assert (meta["location"], meta["season"]) == ("0000200", 0)


def test_labels_and_seg_carried_by_one_or_agreeing_parts_are_kept(tmp_path: Path) -> None:
    seg = tmp_path / "seg.tif"
    seg.write_bytes(b"same")
    copy = tmp_path / "copy.tif"
    copy.write_bytes(b"same")
    item = _pair({"label": ["Forest"]}, {"label": ["Forest"], "seg": seg})
    assert item.label == ["Forest"] and item.seg == seg
    assert _pair(None, {"label": "River"}).label == "River"
    assert _pair({"seg": copy}, {"seg": seg}).seg == copy  # the same bytes


def test_conflicting_labels_or_seg_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"location 0000200 season 0 \(S1A_20200607T010800_x, "
                                          r"20200604T054639_T43RCP\): labels 'River' vs 'Forest'"):
        _pair({"label": "River"}, {"label": "Forest"})
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    with pytest.raises(LayoutError, match=r"segmentation .*a\.tif vs .*b\.tif"):
        _pair({"seg": a}, {"seg": b})
