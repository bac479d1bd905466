"""Several raw inputs in one dataset (``eofm-shard build A B ...``): discovering them, telling
which input an item came from, and deciding whether their modalities can share one band list.

A modality holds one band list; inputs of different sensors pool into it only when
band-compatible for those bands (:func:`pooling_problem`: e.g. Sentinel-2 L1C and L2A on their
12 shared bands, not L1C's B10, never Sentinel-2 and Landsat).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .ingest import ModalityPlan
from .layouts import LayoutOptions, SourceItem, check_unique_keys, discover, safe_key
from .pairing import pair_by_location
from .sensors import get_sensor

__all__ = ["POOL_BAND_FIELDS", "discover_sources", "input_of", "modality_mismatch",
           "pooling_problem", "widen_hist_range"]

# Band fields that must agree for inputs of different sensors to pool into one modality.
POOL_BAND_FIELDS = ("center_wavelength_nm", "bandwidth_nm", "gsd_m", "units", "scale", "offset",
                    "nodata")


def discover_sources(sources: Sequence[str], layout: str | None,
                     options: LayoutOptions) -> tuple[str, list[SourceItem]]:
    """Items of every input (in order) and the layout(s) used.

    With several inputs each is discovered on its own (layout detected per input unless
    forced) and its sample keys are prefixed with the input's folder name, so one dataset can
    pool several archives; keys must still come out unique. Inputs that each hold other
    modalities of the same ``<location>/<season>`` folders (SSL4EO-S12 ``s1`` + ``s2a``) are
    paired instead (:func:`.pairing.pair_by_location`): keys ``<location>_<season index>``.
    """
    if len(sources) == 1:
        return discover(sources[0], layout, options)
    layouts: list[str] = []
    items: list[SourceItem] = []
    per_input = []
    for src in sources:
        found_layout, found = discover(src, layout, options)
        per_input.append((src, found))
        if found_layout not in layouts:
            layouts.append(found_layout)
    paired = pair_by_location(per_input)  # e.g. SSL4EO-S12 s1 + s2a: one item per season
    if paired is not None:
        check_unique_keys(paired, f"{', '.join(sources)}: paired items with the same key")
        return "+".join(layouts), sorted(paired, key=lambda i: i.key)
    for src, found in per_input:
        tag = safe_key(Path(src).resolve().name)
        for item in found:
            item.key = f"{tag}_{item.key}"
            item.meta.setdefault("source", src)
        items += found
    check_unique_keys(items, f"{', '.join(sources)}: inputs with the same folder name give the "
                             "same sample keys (rename or nest them differently)")
    return "+".join(layouts), sorted(items, key=lambda i: i.key)


def input_of(item: SourceItem, sources: Sequence[str], modality: str | None = None) -> str:
    """The input (one of ``sources``) an item (or one ``modality`` of it: paired items take
    their modalities from different inputs) was discovered under."""
    mods = [item.modalities[modality]] if modality is not None else item.modalities.values()
    first = next((p for m in mods for p, _ in m.files), None)
    for src in sources:
        if first is not None and Path(first).is_relative_to(Path(src)):
            return src
    return sources[0]


def pooling_problem(first: ModalityPlan, other: ModalityPlan) -> str | None:
    """Why ``other`` cannot be pooled into a modality planned as ``first``; None when it can.

    Same sensor: the band lists must be equal. Different sensors (e.g. Sentinel-2 L1C and L2A)
    must be band-compatible: the same band names in the same order (after ``--bands``), the
    same raw dtype, and for every band the same centre wavelength, bandwidth, GSD, units,
    scale, offset and nodata in the sensor registry (:data:`POOL_BAND_FIELDS`). The message
    names the field that differs and both values.
    """
    if other.bands != first.bands:
        only = [f"{b} only in {other.sensor}" for b in other.bands if b not in first.bands]
        only += [f"{b} only in {first.sensor}" for b in first.bands if b not in other.bands]
        why = f" ({', '.join(only)}; select shared bands with --bands)" if only else ""
        return (f"has {other.sensor} bands {other.bands}, other inputs have {first.sensor} "
                f"{first.bands}{why}; one dataset holds one band list per modality")
    if other.sensor == first.sensor:
        return None
    if other.dtype != first.dtype:
        return (f"has {other.sensor} pixels of dtype {other.dtype}, other inputs have "
                f"{first.sensor} {first.dtype}; inputs of different sensors pool only when "
                "band-compatible")
    a, b = get_sensor(first.sensor), get_sensor(other.sensor)
    for name in first.bands:
        for key in POOL_BAND_FIELDS:
            mine, theirs = getattr(b.band(name), key), getattr(a.band(name), key)
            if mine != theirs:
                return (f"band {name} has {key} {mine!r} in {other.sensor}, other inputs have "
                        f"{theirs!r} in {first.sensor}; inputs of different sensors pool only "
                        f"when band-compatible (same {', '.join(POOL_BAND_FIELDS)} per band)")
    return None


def modality_mismatch(items: Sequence[SourceItem], sources: Sequence[str]) -> str:
    """Which inputs hold which modalities (with their sensors), for the refusal message."""
    held: dict[str, dict[str, str]] = {}
    for item in items:
        for name, src in item.modalities.items():
            held.setdefault(input_of(item, sources), {}).setdefault(name, src.sensor)
    return "; ".join(f"{src}: " + ", ".join(f"{n} ({s})" for n, s in sorted(mods.items()))
                     for src, mods in held.items())


def widen_hist_range(first: ModalityPlan, other: ModalityPlan) -> ModalityPlan:
    """``first`` with a statistics histogram range covering ``other``'s too."""
    if first.hist_range is None or other.hist_range is None:
        return first
    lo, hi = zip(first.hist_range, other.hist_range, strict=True)
    return replace(first, hist_range=(min(lo), max(hi)))
