"""A checkpoint's input contract compared with the one its dataset gives now: fields eofm
records another way since (per-band nodata and units of stacked inputs, a stacked input's
processing levels in sensor order) are no change of the data, and warn of none."""

from __future__ import annotations

import pytest

from eofm.pretrain.resume import recorded_anew


@pytest.mark.parametrize(("key", "then", "now", "same"), [
    ("nodata", None, [0.0, -32768.0], True),
    ("units", None, ["DN (x 0.0001 = physical)", "dB"], True),
    ("processing_level", "L1 GRD+L2A", "L2A+L1 GRD", True),
    ("processing_level", "L1C", "L2A", False),
    ("processing_level", "L1 GRD+L2A", "L1C+L1 GRD", False),
    ("units", "DN", "dB", False),
    ("units", "DN", ["DN", "dB"], False),
    ("nodata", 0.0, [0.0, 1.0], False),
    ("bands", None, ["B02"], False),
])
def test_recorded_anew(key: str, then: object, now: object, same: bool) -> None:
    assert recorded_anew(key, then, now) is same
