"""Pairing SSL4EO-S12 style inputs never joins two seasons: a pair's folders must have been
acquired within ``MAX_SEASON_GAP_DAYS`` of each other (a different season lost in each input
otherwise pairs S1 of September with S2 of June, as counts still agree), and the gap of every
pair is kept in its metadata."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import LayoutError, LayoutOptions, ModalitySource, SourceItem
from eofm.data_shards.pairing import pair_by_location
from eofm.data_shards.pooling import discover_sources

S1, S2 = "/in/s1", "/in/s2a"


def _item(root: str, modality: str, season: str, location: str = "0000200") -> SourceItem:
    return SourceItem(season, {modality: ModalitySource("rgb", [])},
                      meta={"source": f"{root}/{location}/{season}"})


def _found(s1: list[str], s2: list[str]) -> list[tuple[str, list[SourceItem]]]:
    return [(S1, [_item(S1, "s1", s) for s in s1]), (S2, [_item(S2, "s2", s) for s in s2])]


def test_seasons_months_apart_are_refused_naming_both_folders_and_the_gap() -> None:
    """S1 lost June, S2 lost August: one season each, 91 days apart; was paired silently."""
    s1, s2 = "S1A_IW_GRDH_1SDV_20200903T131212_x", "20200604T054639_20200604T054831_T43RCP"
    with pytest.raises(LayoutError, match=(
            rf"location 0000200 season 0: {S1}/0000200/{s1} and {S2}/0000200/{s2} were "
            r"acquired 91\.3 days apart")) as e:
        pair_by_location(_found([s1], [s2]))
    assert "more than 45 days apart" in str(e.value)
    # the other input order names the folders the other way round, and is refused too
    with pytest.raises(LayoutError, match=rf"{S2}/0000200/{s2} and {S1}/0000200/{s1}"):
        pair_by_location(_found([s1], [s2])[::-1])


def test_the_gap_is_kept_and_the_tolerance_can_be_widened() -> None:
    """Seasons days apart pair as before (same keys) and record their gap; a 50-day gap is
    refused by default and paired when the caller allows 60 days; folders without a date in
    their names are paired by name, with no gap to record."""
    items = pair_by_location(_found(["S1A_20200607T010800_a", "S1A_20200903T131212_b"],
                                    ["20200604T054639_c", "20200813T054639_d"]))
    assert items is not None
    assert [(i.key, i.meta["season"]) for i in items] == [("0000200_0", 0), ("0000200_1", 1)]
    # 7 Jun 01:08:00 - 4 Jun 05:46:39 and 3 Sep 13:12:12 - 13 Aug 05:46:39, in days
    assert [i.meta["acquisition_gap_days"] for i in items] == [2.806, 21.309]
    far = _found(["S1A_20200724T000000_a"], ["20200604T000000_b"])
    with pytest.raises(LayoutError, match=r"were acquired 50\.0 days apart"):
        pair_by_location(far)
    (item,) = pair_by_location(far, max_gap_days=60) or []
    assert item.key == "0000200_0" and item.meta["acquisition_gap_days"] == 50.0
    (undated,) = pair_by_location(_found(["spring_a"], ["spring_b"])) or []
    assert "acquisition_gap_days" not in undated.meta


def _ssl4eo(shared_data: Path) -> Path:
    ssl = shared_data / "ssl4eo_s12"
    if not (ssl / "s1").is_dir():
        pytest.skip("ssl4eo_s12/s1 not available")
    return ssl


def test_real_ssl4eo_pairs_keep_their_keys_and_record_days_apart(shared_data: Path) -> None:
    """The untouched SSL4EO-S12 location: keys ``<location>_<season>`` as before, each pair
    3 and 21 days apart (S1 7 Jun / S2 4 Jun, S1 3 Sep / S2 13 Aug)."""
    ssl = _ssl4eo(shared_data)
    _, items = discover_sources([str(ssl / "s1"), str(ssl / "s2a")], None, LayoutOptions())
    assert [i.key for i in items] == ["0000200_0", "0000200_1"]
    gaps = [round(i.meta["acquisition_gap_days"]) for i in items]
    assert gaps == [3, 21]


def test_real_ssl4eo_with_a_different_season_lost_in_each_input_is_refused(
        shared_data: Path, tmp_path: Path) -> None:
    """S1 keeps only September, S2 only June: the build stops naming both folders and the
    gap, and leaves no dataset (it wrote 4 samples pairing the two seasons)."""
    ssl = _ssl4eo(shared_data)
    s1 = shutil.copytree(ssl / "s1", tmp_path / "s1")
    s2 = shutil.copytree(ssl / "s2a", tmp_path / "s2a")
    june_s1 = next((s1 / "0000200").glob("*_20200607T*"))
    august_s2 = next((s2 / "0000200").glob("20200813T*"))
    shutil.rmtree(june_s1)
    shutil.rmtree(august_s2)
    (kept_s1,) = (s1 / "0000200").iterdir()
    (kept_s2,) = (s2 / "0000200").iterdir()
    out = tmp_path / "ds"
    cfg = BuildConfig(str(s1), str(out), more_sources=[str(s2)],
                      ingest=IngestOptions(tile=128, resample="nearest"), progress=False)
    with pytest.raises(LayoutError) as e:
        build(cfg)
    assert f"{kept_s1} and {kept_s2} were acquired 91.3 days apart" in str(e.value)
    assert not out.exists()
