"""eofm-probe / eofm-finetune compare the data's nodata with the contract's band by band: the
data's one common value was compared (none when its bands differ, so a stacked S2 + S1
dataset's nodata went unchecked), and a per-band contract must be compared per band."""

from __future__ import annotations

import numpy as np

from eofm.data_shards.manifest import LabelInfo, Manifest, ModalityInfo
from eofm.finetune.datasets import LabelledData
from eofm.finetune.features import apply_contract
from eofm.models import InputContract

BANDS = ["B02", "B03", "B04", "VV", "VH"]
STACKED = [0.0, 0.0, 0.0, None, None]


def _data(nodata: list[float | None], bands: list[str] = BANDS) -> LabelledData:
    """Two in-memory 16 px tiles of ``bands`` with per-band ``nodata``."""
    x = np.ones((2, len(bands), 16, 16), np.float32)
    stats = {b: {"mean": 1.0, "std": 1.0} for b in bands}
    info = ModalityInfo("s2_l2a+s1_grd", bands, "float32", [len(bands), 16, 16], nodata, 10.0,
                        stats)
    m = Manifest(modalities={"s2s1": info}, labels=LabelInfo("class", ["a"]))
    return LabelledData(source="memory", modality="s2s1", manifest=m, labels=np.zeros(2, int),
                        keys=["0", "1"], pixels=lambda i: x[i])


def _contract(nodata, bands: list[str] = BANDS) -> InputContract:
    return InputContract(sensors=("s2_l2a+s1_grd",), bands=bands, nodata=nodata,
                         normalisation="meanstd", stats={b: {"mean": 1.0, "std": 1.0}
                                                         for b in bands},
                         input_size=(16, 16), patch_size=8)


def _nodata_notes(data: LabelledData, contract: InputContract) -> list[str]:
    return [n for n in apply_contract(data, contract).notes if "nodata" in n]


def test_a_stacked_dataset_is_compared_with_a_per_band_contract_band_by_band() -> None:
    assert _nodata_notes(_data(STACKED), _contract(STACKED)) == []
    filled = _data([-9999.0, -9999.0, -9999.0, None, None])  # another S2 fill value
    (note,) = _nodata_notes(filled, _contract(STACKED))
    assert note == ("different nodata for band(s) ['B02', 'B03', 'B04']: the contract expects "
                    "[0.0, 0.0, 0.0], the batch has [-9999.0, -9999.0, -9999.0]")
    # the data's bands in another order: compared by name
    order = ["VH", "B04", "B02", "VV", "B03"]
    assert _nodata_notes(_data([None, 0.0, 0.0, None, 0.0], order), _contract(STACKED)) == []


def test_a_one_number_contract_is_compared_with_each_band_of_the_data() -> None:
    """One band of the data with another fill value was not compared (the data's bands had
    no common value); the message of a whole dataset's other value is unchanged."""
    (note,) = _nodata_notes(_data([0.0, 0.0, -1.0, None, None]), _contract(0.0))
    assert note.startswith("different nodata for band(s) ['B04']")
    (note,) = _nodata_notes(_data([-1.0] * 5), _contract(0.0))
    assert note == "different nodata: the contract expects 0.0, the batch has -1.0"
    assert _nodata_notes(_data(STACKED), _contract(0.0)) == []
