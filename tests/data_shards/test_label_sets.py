"""Label sets regroup multi-labels by name: BigEarthNet's 43 CORINE names -> its 19 classes."""

from __future__ import annotations

import numpy as np
import pytest

from eofm.data_shards.label_sets import get_label_set, remap_multihot

BEN19 = get_label_set("bigearthnet19")


def test_every_one_of_the_43_names_has_a_place() -> None:
    sources = set(BEN19.sources)
    assert len(BEN19.classes) == 19 and len(sources) == len(BEN19.sources) == 43
    dropped = {k for k in sources if BEN19.mapping[k] is None}
    assert len(dropped) == 11 and "Airports" in dropped and "Bare rock" in dropped
    assert {BEN19.mapping[k] for k in sources} - {None} == set(BEN19.classes)  # none left empty


def test_merges_by_name_keeps_union_and_drops() -> None:
    classes = ["Water bodies", "Peatbogs", "Inland marshes", "Airports", "Pastures"]
    hot = np.array([[1, 1, 0, 0, 0],   # inland waters + inland wetlands
                    [0, 1, 1, 0, 1],   # two sources of one target: one 1
                    [0, 0, 0, 1, 0]],  # only a dropped class: no label left
                   np.uint8)
    out = remap_multihot(classes, hot, BEN19)
    on = [sorted(BEN19.classes[j] for j in np.flatnonzero(row)) for row in out]
    assert on == [["Inland waters", "Inland wetlands"], ["Inland wetlands", "Pastures"], []]
    assert out.dtype == np.uint8 and out.max() == 1


def test_names_already_in_the_19_classes_pass_through() -> None:
    hot = np.eye(19, dtype=np.uint8)
    np.testing.assert_array_equal(remap_multihot(list(BEN19.classes), hot, BEN19), hot)


def test_unknown_names_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"ben: class names \['Forest'\] are not in label set "
                                         r"'bigearthnet19'"):
        remap_multihot(["Pastures", "Forest"], np.zeros((2, 2)), BEN19, source="ben")
    with pytest.raises(ValueError, match=r"expected multi-hot labels of shape \(N, 1\), got "
                                         r"\(2, 3\)"):
        remap_multihot(["Pastures"], np.zeros((2, 3)), BEN19)
    with pytest.raises(ValueError, match=r"label set 'ben43' is unknown; expected one of "
                                         r"\['bigearthnet19'\]"):
        get_label_set("ben43")
