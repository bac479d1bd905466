"""Named label sets: published re-groupings of a dataset's class names.

BigEarthNet ships 43 CORINE Land Cover level-3 names per patch; the benchmark numbers in the
literature (and METHODS.md's evaluation protocol) use the 19-class nomenclature of Sumbul et al.
(2020, "BigEarthNet-MM"), which merges some classes and drops 11 that are hard to tell apart
from a 10-60 m pixel or too rare (road and rail, ports, airports, mines, dumps, construction
sites, green urban areas, sport facilities, bare rock, burnt areas, intertidal flats). A label set
maps every source name to one target name or to None (dropped); :func:`remap_multihot` applies
it to multi-hot vectors by name, never by index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelSet:
    """A re-grouping: ``classes`` (target names, in output order), ``sources`` (the source
    nomenclature) and ``mapping`` (each source name, and each target name for data already
    regrouped, -> a target name, or None when the class is dropped)."""

    name: str
    classes: tuple[str, ...]
    sources: tuple[str, ...]
    mapping: Mapping[str, str | None]
    reference: str


_BEN19 = {
    "Urban fabric": ("Continuous urban fabric", "Discontinuous urban fabric"),
    "Industrial or commercial units": ("Industrial or commercial units",),
    "Arable land": ("Non-irrigated arable land", "Permanently irrigated land", "Rice fields"),
    "Permanent crops": ("Vineyards", "Fruit trees and berry plantations", "Olive groves",
                        "Annual crops associated with permanent crops"),
    "Pastures": ("Pastures",),
    "Complex cultivation patterns": ("Complex cultivation patterns",),
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural "
        "vegetation",),
    "Agro-forestry areas": ("Agro-forestry areas",),
    "Broad-leaved forest": ("Broad-leaved forest",),
    "Coniferous forest": ("Coniferous forest",),
    "Mixed forest": ("Mixed forest",),
    "Natural grassland and sparsely vegetated areas": ("Natural grassland",
                                                       "Sparsely vegetated areas"),
    "Moors, heathland and sclerophyllous vegetation": ("Moors and heathland",
                                                       "Sclerophyllous vegetation"),
    "Transitional woodland, shrub": ("Transitional woodland/shrub",),
    "Beaches, dunes, sands": ("Beaches, dunes, sands",),
    "Inland wetlands": ("Inland marshes", "Peatbogs"),
    "Coastal wetlands": ("Salt marshes", "Salines"),
    "Inland waters": ("Water courses", "Water bodies"),
    "Marine waters": ("Coastal lagoons", "Estuaries", "Sea and ocean"),
}
_BEN19_DROPPED = ("Road and rail networks and associated land", "Port areas", "Airports",
                  "Mineral extraction sites", "Dump sites", "Construction sites",
                  "Green urban areas", "Sport and leisure facilities", "Bare rock",
                  "Burnt areas", "Intertidal flats")


def _ben19() -> LabelSet:
    mapping: dict[str, str | None] = {src: dst for dst, srcs in _BEN19.items() for src in srcs}
    mapping.update(dict.fromkeys(_BEN19_DROPPED))
    sources = tuple(mapping)
    mapping.update({dst: dst for dst in _BEN19})  # data already in the 19-class names
    return LabelSet("bigearthnet19", tuple(_BEN19), sources, mapping,
                    "Sumbul et al. 2020, BigEarthNet-MM (19-class nomenclature of CLC level 3)")


LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (_ben19(),)}


def get_label_set(name: str) -> LabelSet:
    """The label set called ``name``; a clear error naming the known ones otherwise."""
    if name not in LABEL_SETS:
        raise ValueError(f"label set {name!r} is unknown; expected one of {sorted(LABEL_SETS)}")
    return LABEL_SETS[name]


def remap_multihot(classes: Sequence[str], hot: np.ndarray, label_set: LabelSet,
                   source: str = "labels") -> np.ndarray:
    """(N, K) multi-hot over ``classes`` -> (N, len(label_set.classes)) uint8 multi-hot over the
    label set's classes (a target is on when any of its source classes is). ``source`` names
    the data in the error raised for class names the label set does not know."""
    unknown = [c for c in classes if c not in label_set.mapping]
    if unknown:
        raise ValueError(f"{source}: class names {unknown} are not in label set "
                         f"{label_set.name!r} (it maps {len(label_set.mapping)} names: "
                         f"{label_set.reference})")
    hot = np.asarray(hot)
    if hot.ndim != 2 or hot.shape[1] != len(classes):
        raise ValueError(f"{source}: expected multi-hot labels of shape (N, {len(classes)}), "
                         f"got {hot.shape}")
    out = np.zeros((len(hot), len(label_set.classes)), np.uint8)
    index = {c: i for i, c in enumerate(label_set.classes)}
    for k, name in enumerate(classes):
        target = label_set.mapping[name]
        if target is not None:
            out[:, index[target]] |= (hot[:, k] > 0).astype(np.uint8)
    return out


__all__ = ["LABEL_SETS", "LabelSet", "get_label_set", "remap_multihot"]
