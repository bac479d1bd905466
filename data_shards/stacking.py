"""Stack paired modalities into one input: ``eofm-shard build --stack s2,s1``.

Sentinel-1 and Sentinel-2 tiles of the same place (BigEarthNet pairs, SSL4EO-S12) become one
modality whose bands are the parts' bands in the order given (``B01 .. B12, VV, VH``), so one
encoder pretrains on radar and optical together and every later step (statistics, the input
contract, ``eofm-probe``, ``eofm-shard preview``) sees an ordinary modality. Its sensor is the
registry's composite of the parts (``s2_l2a+s1_grd``, :func:`.sensors.stack_sensor`): each band
keeps its own physics, names must be distinct. Pixels are float32 (integer parts convert
exactly up to 2**24), each band keeps its part's nodata value, and a pixel is valid where every
part's is. The parts must already share one grid, as paired modalities do at ingest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from .ingest import ModalityPlan, TileSample
from .sensors import STACK, get_sensor, stack_sensor
from .stats import BandStats

DTYPE = "float32"


def stacked_stats_for(sensor_id: str, bands: list[str], nodata: list[float | None]
                      ) -> BandStats | None:
    """Empty statistics for a stacked modality (build and ``eofm-shard stats`` alike), its
    bands split back to their part sensors by name, each histogrammed as its part's; None when
    ``sensor_id`` is not a stack."""
    if STACK not in sensor_id or get_sensor(sensor_id).modality != "stack":
        return None
    parts = [get_sensor(p) for p in sensor_id.split(STACK)]
    specs = []
    for part in parts:
        idx = [i for i, b in enumerate(bands) if b in part.band_names]
        ranges = [r for i in idx if (r := part.band(bands[i]).hist_range) is not None]
        specs.append(([bands[i] for i in idx], part.dtype, [nodata[i] for i in idx],
                      (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None))
    return BandStats.create_stacked(specs)


@dataclass(frozen=True)
class Stack:
    """Modalities ``parts`` (in band order) written as the one modality ``name``."""

    parts: tuple[str, ...]
    name: str

    @classmethod
    def parse(cls, text: str) -> Stack:
        """``"s2,s1"`` (named ``s2s1``) or ``"s2,s1=optsar"``."""
        spec, _, name = text.partition("=")
        parts = tuple(p.strip() for p in spec.split(",") if p.strip())
        if len(parts) < 2 or len(set(parts)) != len(parts):
            raise ValueError(f"--stack: expected two or more distinct modalities such as "
                             f"'s2,s1' (or 's2,s1=NAME'), got {text!r}")
        name = name.strip() or "".join(parts)
        if not name.replace("_", "").isalnum():
            raise ValueError(f"--stack: the stacked modality's name must be letters, digits or "
                             f"'_', got {name!r}")
        return cls(parts, name)

    def plan(self, mods: Mapping[str, ModalityPlan], pooled: Mapping[str, list[str]]
             ) -> dict[str, ModalityPlan]:
        """The output modalities: ``mods`` with the parts replaced by the stacked one."""
        missing = [p for p in self.parts if p not in mods]
        if missing:
            raise ValueError(f"--stack: the inputs have no modality {missing} (they have "
                             f"{sorted(mods)})")
        if self.name in mods and self.name not in self.parts:
            raise ValueError(f"--stack: {self.name!r} is already a modality of the inputs; "
                             f"name the stack otherwise ('{','.join(self.parts)}=NAME')")
        several = {p: pooled[p] for p in self.parts if len(pooled.get(p) or []) > 1}
        if several:
            raise ValueError(f"--stack: cannot stack modalities pooled from several sensors "
                             f"{several}; build them apart")
        parts = [mods[p] for p in self.parts]
        gsds = {p: m.gsd_m for p, m in zip(self.parts, parts, strict=True)}
        if len(set(gsds.values())) != 1:
            raise ValueError(f"--stack: the parts' GSDs differ {gsds}; stacking needs one grid")
        sensor = stack_sensor([m.sensor for m in parts])
        ranges = [m.hist_range for m in parts if m.hist_range is not None]
        stacked = ModalityPlan(
            sensor.id, [b for m in parts for b in m.bands], DTYPE,
            [v for m in parts for v in m.nodata], parts[0].gsd_m,
            (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None)
        out: dict[str, ModalityPlan] = {}
        for name, m in mods.items():  # the stack takes the place of its first part
            if name == self.parts[0]:
                out[self.name] = stacked
            elif name not in self.parts:
                out[name] = m
        return out

    def apply(self, s: TileSample) -> TileSample:
        """One tile's parts joined into the stacked modality."""
        arrays = {k: v for k, v in s.arrays.items() if k not in self.parts}
        valid = {k: v for k, v in s.valid.items() if k not in self.parts}
        arrays[self.name] = np.concatenate([s.arrays[p].astype(DTYPE, copy=False)
                                            for p in self.parts])
        valid[self.name] = np.logical_and.reduce([s.valid[p] for p in self.parts])
        mods = dict(s.meta.get("modalities", {}))
        parts = {p: mods.pop(p) for p in self.parts if p in mods}
        first = parts.get(self.parts[0], {})
        mods[self.name] = {
            **first, "sensor": STACK.join(str(v.get("sensor")) for v in parts.values()),
            "bands": [b for v in parts.values() for b in v.get("bands", [])],
            "empty_bands": [b for v in parts.values() for b in v.get("empty_bands", [])],
            "stacked_from": parts}
        return replace(s, arrays=arrays, valid=valid, meta={**s.meta, "modalities": mods})
