"""Pairing inputs that hold different modalities of the same places (SSL4EO-S12 style).

SSL4EO-S12 ships one folder per modality (``s1/``, ``s2c/``, ``s2a/``), each
``<location>/<season folder>/`` of per-band files, the season folders named by acquisition
(``S1A_IW_GRDH_1SDV_20200607T010800_...``, ``20200604T054639_..._T43RCP``). Given such inputs
together (``eofm-shard build ssl4eo_s12/s1 ssl4eo_s12/s2a``), each location's seasons are
put in acquisition order in every input and paired by position: the first S1 season with the
first S2 season, and so on. Every location must hold the same number of seasons in every
input; anything else is refused by name rather than half paired. With as many seasons on each
side, pairing in date order is the one-to-one pairing by nearest date (no other pairing has a
smaller largest, or total, date gap); the seasons of a pair must also lie within
:data:`MAX_SEASON_GAP_DAYS` of each other (SSL4EO's own pairs are days apart), so a different
season lost in each input (S1 without June, S2 without August: S1 of September would pair
with S2 of June) is refused naming both folders and the gap, never paired across seasons.
The gap is kept in the paired item's metadata (``acquisition_gap_days``).

A paired item keeps each input's metadata per modality (``s1_source``, ``s2_source_metadata``:
SSL4EO's ``metadata.json`` of that season, with e.g. the S2 cloud percentage), whatever the
order of the inputs on the command line; only values every input agrees on stay unprefixed.
A label or segmentation raster carried by some of the paired items is kept; items of one
location and season that carry different ones are refused (a paired item holds one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from .layouts import LayoutError, SourceItem, safe_key

_DATE_RE = re.compile(r"(\d{8}T\d{6})")
# the most days between the acquisitions of one pair's seasons (SSL4EO-S12's S1 and S2 of a
# season are days apart, its seasons about three months)
MAX_SEASON_GAP_DAYS = 45.0

__all__ = ["MAX_SEASON_GAP_DAYS", "pair_by_location"]


def _location_season(item: SourceItem, root: Path) -> tuple[str, str] | None:
    """``(location, season folder)`` of an item found at ``root/<location>/<season>``."""
    try:
        rel = Path(item.meta.get("source", "")).relative_to(root)
    except ValueError:
        return None
    return (rel.parts[0], rel.parts[1]) if len(rel.parts) == 2 else None


def _season_order(name: str) -> tuple[str, str]:
    """Sort key: the first ``YYYYMMDDTHHMMSS`` in the folder name (then the name)."""
    m = _DATE_RE.search(name)
    return (m.group(1) if m else "", name)


def _acquired(season: str) -> datetime | None:
    """The acquisition time a season folder's name starts with (its first
    ``YYYYMMDDTHHMMSS``); None when it names none (or an impossible date)."""
    m = _DATE_RE.search(season)
    try:
        return datetime.strptime(m.group(1), "%Y%m%dT%H%M%S") if m else None
    except ValueError:
        return None


def _gap_days(parts: Sequence[tuple[str, SourceItem]]) -> float | None:
    """Days between the earliest and the latest acquisition of one pair's season folders;
    None when some folder's name gives no date (nothing to judge by)."""
    times = [_acquired(season) for season, _ in parts]
    if any(t is None for t in times):
        return None
    return (max(times) - min(times)).total_seconds() / 86400  # type: ignore[type-var]


def pair_by_location(found: Sequence[tuple[str, list[SourceItem]]],
                     max_gap_days: float = MAX_SEASON_GAP_DAYS) -> list[SourceItem] | None:
    """Items of several inputs ``[(input root, its items)]`` paired into multi-modal items
    by location and season order; None when the inputs are not of that shape (some input
    shares a modality with another, or an item is not at ``<location>/<season>``).
    LayoutError when they are, but locations or season counts differ between inputs, or the
    folders of a pair were acquired more than ``max_gap_days`` apart (naming them)."""
    if len(found) < 2:
        return None
    per_input: list[dict[str, list[tuple[str, SourceItem]]]] = []
    held: set[str] = set()
    for root, items in found:
        mods = {m for i in items for m in i.modalities}
        if not items or mods & held:
            return None
        held |= mods
        groups: dict[str, list[tuple[str, SourceItem]]] = {}
        for item in items:
            where = _location_season(item, Path(root))
            if where is None:
                return None
            groups.setdefault(where[0], []).append((where[1], item))
        per_input.append(groups)
    roots = [root for root, _ in found]
    locations = sorted(per_input[0])
    problems = [f"{roots[k]} lacks locations {sorted(set(locations) - set(g))}"
                for k, g in enumerate(per_input) if set(locations) - set(g)]
    problems += [f"{roots[k]} has locations {sorted(set(g) - set(locations))} that "
                 f"{roots[0]} lacks" for k, g in enumerate(per_input) if set(g) - set(locations)]
    for loc in locations:
        counts = [len(g.get(loc, [])) for g in per_input]
        if len(set(counts)) > 1:
            problems.append(f"location {loc} has " + ", ".join(
                f"{n} seasons in {r}" for n, r in zip(counts, roots, strict=True)))
    if problems:
        raise LayoutError("cannot pair the inputs by location and season (each input one "
                          "modality of the same <location>/<season> folders, e.g. SSL4EO-S12 "
                          "s1 + s2a): " + "; ".join(problems[:5]))
    paired, conflicts, apart = [], [], []
    for loc in locations:
        seasons = [sorted(g[loc], key=lambda s: _season_order(s[0])) for g in per_input]
        for i, parts in enumerate(zip(*seasons, strict=True)):
            items = [item for _, item in parts]
            gap = _gap_days(parts)
            if gap is not None and gap > max_gap_days:
                apart.append(f"location {loc} season {i}: " + " and ".join(
                    str(item.meta.get("source")) for _, item in parts)
                    + f" were acquired {gap:.1f} days apart")
                continue
            where = f"location {loc} season {i} ({', '.join(s for s, _ in parts)})"
            label, seg, problem = _merged_targets(items, where)
            if problem:
                conflicts.append(problem)
                continue
            meta = _merged_meta(parts, roots)
            meta.update(location=loc, season=i)
            if gap is not None:
                meta["acquisition_gap_days"] = round(gap, 3)
            mods = {name: m for item in items for name, m in item.modalities.items()}
            paired.append(SourceItem(safe_key(f"{loc}_{i}"), mods, label=label, seg=seg,
                                     meta=meta))
    if apart:
        raise LayoutError(
            f"cannot pair the inputs {', '.join(map(str, roots))}: {len(apart)} location/"
            f"season(s) would pair acquisitions more than {max_gap_days:g} days apart (expected "
            "the same season in every input; seasons are paired in date order, so a different "
            "season missing from each input pairs two seasons): " + "; ".join(apart[:5])
            + "; remove such a location's unmatched seasons from every input")
    if conflicts:
        raise LayoutError(f"cannot pair the inputs {', '.join(map(str, roots))}: the items of "
                          f"{len(conflicts)} location/season(s) carry different labels or "
                          "segmentation, and a paired item holds one: "
                          + "; ".join(conflicts[:5]))
    return paired


def _merged_meta(parts: Sequence[tuple[str, SourceItem]], roots: Sequence[str]) -> dict:
    """One paired item's metadata: each part's own metadata per modality
    (``<modality>_source``, ``<modality>_source_metadata``, ``<modality>_acquisition_time``...),
    a key left unprefixed only where every part has the same value; ``source`` is the first
    input's folder (for messages) and ``inputs`` lists the inputs in order."""
    metas = [item.meta for _, item in parts]
    shared = {k: v for k, v in metas[0].items() if all(k in m and m[k] == v for m in metas)}
    out = {**shared, "source": metas[0].get("source"), "inputs": list(roots)}
    for season, item in parts:
        for name in item.modalities:
            for k, v in item.meta.items():
                if k not in shared:
                    out[f"{name}_{k}"] = v
            out[f"{name}_source"] = item.meta.get("source")
            if (m := _DATE_RE.search(season)) is not None:
                out[f"{name}_acquisition_time"] = m.group(1)
    return out


def _merged_targets(items: Sequence[SourceItem], where: str
                    ) -> tuple[str | list[str] | None, Path | None, str | None]:
    """The label and segmentation raster of a paired item: those its parts carry (one part,
    or several that agree); a problem naming both when they disagree (the pair cannot hold
    two)."""
    labels = [it.label for it in items if it.label is not None]
    segs = [it.seg for it in items if it.seg is not None]
    problems = []
    if any(lb != labels[0] for lb in labels[1:]):
        problems.append(f"labels {' vs '.join(repr(lb) for lb in labels)}")
    if any(not _same_file(sg, segs[0]) for sg in segs[1:]):
        problems.append(f"segmentation {' vs '.join(str(sg) for sg in segs)}")
    if problems:
        return None, None, f"{where}: {', '.join(problems)}"
    return (labels[0] if labels else None), (segs[0] if segs else None), None


def _same_file(a: Path, b: Path) -> bool:
    """The same path, or files of the same bytes."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False
