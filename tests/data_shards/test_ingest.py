"""Band planning at ingest: --bands keys and the band names a modality's files hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestError, IngestOptions
from eofm.data_shards.layouts import LayoutOptions


def _three_band_classes(root: Path) -> Path:
    for cls in ("Forest", "River"):
        (root / cls).mkdir(parents=True)
        tifffile.imwrite(root / cls / "a.tif", np.full((8, 8, 3), 7, np.uint16),
                         photometric="minisblack", planarconfig="contig")
    return root


def test_bands_for_a_modality_the_input_lacks_is_refused(tmp_path: Path) -> None:
    """`--bands S2=...` or `--bands s1=VV` on S2-only data used to be ignored (every band
    written, exit 0); now refused naming the key and the input's modalities, with a hint when
    only the case differs."""
    src = _three_band_classes(tmp_path / "src")
    opts = LayoutOptions(sensor="s2_l2a", file_bands=["B04", "B03", "B02"])
    for bands, why in (({"S2": ["B04"]}, r"'S2' is not in the input; its modalities are s2 "
                                         r"\(modality names are case-sensitive: 'S2' -> 's2'\)"),
                       ({"s2": ["B04"], "s1": ["VV"]}, r"'s1' is not in the input; its "
                                                       r"modalities are s2$")):
        with pytest.raises(IngestError, match=rf"^--bands: modality {why}"):
            build(BuildConfig(str(src), str(tmp_path / "o"), layout="multiband", progress=False,
                              layout_options=opts, ingest=IngestOptions(bands=bands)))
    assert not (tmp_path / "o").exists()
    build(BuildConfig(str(src), str(tmp_path / "ok"), layout="multiband", progress=False,
                      layout_options=opts, ingest=IngestOptions(bands={"s2": ["b3"]})))


def test_no_band_of_the_sensor_in_the_files_is_named(tmp_path: Path) -> None:
    """EuroSAT folders built as --sensor rgb without --file-bands: the files are taken to hold
    B01..B8A, none an RGB band; refused by name instead of "min() arg is an empty sequence".
    With --file-bands R,G,B the modality is called rgb (it was "s2" whatever the sensor)."""
    src = _three_band_classes(tmp_path / "src")
    for p in src.rglob("*.tif"):
        tifffile.imwrite(p, np.full((8, 8, 3), 7, np.uint8), photometric="minisblack",
                         planarconfig="contig")
    with pytest.raises(IngestError, match=r"none of sensor rgb's bands \(R, G, B\) is in the "
                                          r"input .*'B01'.*--file-bands"):
        build(BuildConfig(str(src), str(tmp_path / "o"), layout="eurosat", progress=False,
                          layout_options=LayoutOptions(sensor="rgb")))
    m = build(BuildConfig(str(src), str(tmp_path / "ok"), layout="eurosat", progress=False,
                          layout_options=LayoutOptions(sensor="rgb", file_bands=["R", "G", "B"])))
    assert list(m.modalities) == ["rgb"] and m.labels.classes == ["Forest", "River"]
