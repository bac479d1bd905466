"""Test helper: a Sentinel-2 L1C SAFE product in the file layout of baseline 04.00 and later,
made from the bundled scene (whose ``.jp2`` band files are GeoTIFFs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tifffile

L1C_N0400 = "S2A_MSIL1C_20220706T085611_N0400_R007_T33NZA_20220706T093000.SAFE"
GRANULE = "L1C_T33NZA_A036752_20220706T085611"
MTD_L1C_N0400 = ("<n1:Level-1C_User_Product xmlns:n1='x'><General_Info><Product_Info>"
                 "<PROCESSING_BASELINE>04.00</PROCESSING_BASELINE></Product_Info></General_Info>"
                 "<Radiometric_Offset_List><RADIO_ADD_OFFSET band_id='0'>-1000</RADIO_ADD_OFFSET>"
                 "</Radiometric_Offset_List></n1:Level-1C_User_Product>")


def make_l1c_safe(parent: Path, scene: Path) -> Path:
    """``parent/<L1C N0400>.SAFE`` with ``MTD_MSIL1C.xml`` (RADIO_ADD_OFFSET -1000), the 13 bands
    of ``scene`` (``s2_B01.jp2`` ...) in ``GRANULE/*/IMG_DATA`` and, in ``GRANULE/*/QI_DATA``,
    the per-band masks ESA ships since baseline 04.00 (``MSK_DETFOO_Bxx.jp2``,
    ``MSK_QUALIT_Bxx.jp2``, ``MSK_CLASSI_B00.jp2``), zero uint8 rasters. Returns the SAFE."""
    safe = parent / L1C_N0400
    img, qi = safe / "GRANULE" / GRANULE / "IMG_DATA", safe / "GRANULE" / GRANULE / "QI_DATA"
    img.mkdir(parents=True)
    qi.mkdir()
    (safe / "MTD_MSIL1C.xml").write_text(MTD_L1C_N0400)
    shape = (1, 1)
    for f in sorted(scene.glob("s2_B*.jp2")):
        band = f.stem.split("_")[1]
        shutil.copy(f, img / f"T33NZA_20220706T085611_{band}.jp2")
        shape = tifffile.imread(f).shape
        for kind in ("DETFOO", "QUALIT"):
            tifffile.imwrite(qi / f"MSK_{kind}_{band}.jp2", np.zeros(shape, np.uint8))
    tifffile.imwrite(qi / "MSK_CLASSI_B00.jp2", np.zeros(shape, np.uint8))
    return safe


def img_data(safe: Path) -> Path:
    """The ``GRANULE/*/IMG_DATA`` folder of a product made by :func:`make_l1c_safe`."""
    return safe / "GRANULE" / GRANULE / "IMG_DATA"
