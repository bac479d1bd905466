"""A damaged BigEarthNet folder is refused naming the file and what is wrong, never read
with a patch silently dropped: two S1 patches naming one S2 patch, two patch folders of one
name, an S1 labels file without ``corresponding_s2_patch``, a labels file that is not UTF-8;
macOS AppleDouble ``._*`` files beside the real ones are not labels files."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from eofm.data_shards.build import BuildConfig, make_plan
from eofm.data_shards.layouts import LayoutError, discover

S1_A = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"  # S1 of S2 patch S2_A
S1_B = "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"
S2_A = "S2A_MSIL2A_20170613T101031_87_48"


@pytest.fixture
def ben(sample_data: Path, tmp_path: Path) -> Path:
    """A copy of the bundled BigEarthNet patches (6 S2 patches, each with its S1 patch)."""
    return Path(shutil.copytree(sample_data / "bigearthnet", tmp_path / "ben"))


def _labels(ben: Path, patch: str) -> Path:
    kind = "S1" if patch.startswith("S1") else "S2"
    return ben / f"BigEarthNet-{kind}-Example" / patch / f"{patch}_labels_metadata.json"


def _edit(path: Path, **fields: object) -> None:
    meta = json.loads(path.read_text())
    for k, v in fields.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    path.write_text(json.dumps(meta))


def test_two_s1_patches_naming_one_s2_patch_are_refused(ben: Path) -> None:
    """S1_B's labels say it belongs to S2_A too: one of the two S1 patches was dropped."""
    _edit(_labels(ben, S1_B), corresponding_s2_patch=S2_A,
          labels=json.loads(_labels(ben, S1_A).read_text())["labels"])
    with pytest.raises(LayoutError) as e:
        discover(ben)
    msg = str(e.value)
    assert f"{_labels(ben, S1_A)} and {_labels(ben, S1_B)}: both S1 patches name S2 patch " \
           f"'{S2_A}' in field 'corresponding_s2_patch'" in msg, msg


def test_two_patch_folders_of_one_name_are_refused(ben: Path) -> None:
    """A second copy of an S2 patch folder elsewhere under the input replaced the first."""
    copy = ben / "more" / S2_A
    shutil.copytree(_labels(ben, S2_A).parent, copy)
    with pytest.raises(LayoutError) as e:
        discover(ben)
    msg = str(e.value)
    assert f"{_labels(ben, S2_A)} and {copy / _labels(ben, S2_A).name}: two patch folders " \
           f"named {S2_A}" in msg, msg


def test_an_s1_labels_file_without_its_s2_patch_is_named(ben: Path) -> None:
    """It was taken for an S2 patch: the error blamed missing S2 band files of its folder."""
    js = _labels(ben, S1_A)
    _edit(js, corresponding_s2_patch=None)
    with pytest.raises(LayoutError) as e:
        discover(ben)
    assert str(e.value).startswith(f"{js}: field 'corresponding_s2_patch': expected the S2 "
                                   "patch name, got missing"), str(e.value)


def test_an_s2_patch_without_its_s1_patch_names_the_missing_modality(ben: Path,
                                                                      tmp_path: Path) -> None:
    shutil.rmtree(_labels(ben, S1_A).parent)
    with pytest.raises(ValueError, match=rf"1 item\(s\) lack some modalities \(\['s1', 's2'\]\): "
                                         rf"{S2_A} \(no s1\);"):
        make_plan(BuildConfig(str(ben), str(tmp_path / "ds"), progress=False))


def _appledouble() -> bytes:
    """The start of a macOS AppleDouble file (what tar on macOS writes as ``._<name>``):
    binary, not UTF-8."""
    head = struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 2)
    head += struct.pack(">III", 9, 50, 3752) + struct.pack(">III", 2, 3802, 286)
    return head + b"\x00" * (50 - len(head)) + b"ATTR\xb5\x9c\xff\xfe" + b"\x00" * 64


def test_macos_appledouble_files_are_not_labels_files(ben: Path) -> None:
    """``._<patch>_labels_metadata.json`` beside each labels file (and a ``__MACOSX`` folder
    of them, as a macOS zip has) are skipped: the build reads the 6 patches."""
    for js in sorted(ben.rglob("*_labels_metadata.json")):
        (js.parent / f"._{js.name}").write_bytes(_appledouble())
        mac = ben / "__MACOSX" / js.parent.relative_to(ben) / f"._{js.name}"
        mac.parent.mkdir(parents=True, exist_ok=True)
        mac.write_bytes(_appledouble())
    for tif in sorted(ben.rglob("*.tif")):  # and beside each band file
        (tif.parent / f"._{tif.name}").write_bytes(_appledouble())
    _, items = discover(ben)
    assert len(items) == 6 and all(set(i.modalities) == {"s1", "s2"} for i in items)
    read = [p for i in items for m in i.modalities.values() for p, _ in m.files]
    assert read and not [p for p in read if p.name.startswith("._")]


def test_macos_appledouble_rasters_are_not_images(tmp_path: Path, eurosat_folder) -> None:
    """A EuroSAT-layout folder unpacked from a macOS tar: ``._<image>.tif`` beside each image
    is no raster (it was read as one, and the build failed on it)."""
    src = eurosat_folder(tmp_path / "eurosat", classes=2, per_class=3, size=16)
    for tif in sorted(src.rglob("*.tif")):
        (tif.parent / f"._{tif.name}").write_bytes(_appledouble())
    _, items = discover(src)
    assert len(items) == 6
    assert not [p for i in items for m in i.modalities.values() for p, _ in m.files
                if p.name.startswith("._")]


def test_a_labels_file_that_is_not_utf8_is_named(ben: Path) -> None:
    """It gave "'utf-8' codec can't decode byte ..." without saying which file."""
    js = _labels(ben, S2_A)
    js.write_bytes(_appledouble())
    with pytest.raises(LayoutError) as e:
        discover(ben)
    assert str(e.value).startswith(f"{js}: cannot read the patch's labels file, expected "
                                   "UTF-8 JSON ("), str(e.value)


def test_nan_in_a_paired_s1_band_names_the_s1_patch(ben: Path, tmp_path: Path) -> None:
    """A NaN in an S1 band of a paired item was reported against its S2 partner's folder."""
    import numpy as np
    import tifffile

    from eofm.data_shards.build import build

    vv = ben / "BigEarthNet-S1-Example" / S1_A / f"{S1_A}_VV.tif"
    with tifffile.TiffFile(vv) as t:
        page = t.pages[0]
        data = page.asarray().astype(np.float32)
        extratags = [(tag.code, tag.dtype, tag.count, tag.value) for tag in page.tags.values()
                     if tag.code in (33550, 33922, 34735, 34736, 34737)]  # georeferencing
    data[:4, :4] = np.nan
    tifffile.imwrite(vv, data, extratags=extratags)
    with pytest.raises(Exception, match="NaN") as err:
        build(BuildConfig(str(ben), str(tmp_path / "out"), progress=False))
    assert S1_A in str(err.value) and S2_A not in str(err.value), str(err.value)
