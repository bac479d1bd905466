"""Field checks for reading a dataset manifest (:mod:`.manifest`): each appends problems
naming the field (``modalities.s2.bands``), what was expected and what the manifest holds
(:func:`got`), so every problem of a manifest is reported at once."""

from __future__ import annotations

import math
import shlex
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MISSING",
    "S2_OFFSET_GROUP_FIELDS",
    "STATS_KEYS",
    "STATS_REPAIR",
    "check_classes",
    "check_count",
    "check_dtype",
    "check_names",
    "check_nodata",
    "check_s2_offset",
    "check_shape",
    "check_stats",
    "got",
    "is_int",
    "is_number",
    "missing_fields",
    "repeated",
    "sensors_problems",
    "stats_repair_hint",
    "unknown_fields",
]

MISSING: Any = object()  # a field the manifest does not have


def got(v: object) -> str:
    """``v`` as a message shows what a manifest holds: its JSON kind and a short repr."""
    if v is MISSING:
        return "nothing (field missing)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    kind = ("a string" if isinstance(v, str) else "a number" if isinstance(v, (int, float))
            else "a list" if isinstance(v, list) else "a mapping" if isinstance(v, Mapping)
            else f"a {type(v).__name__}")
    text = repr(v)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def is_int(v: object) -> bool:
    """Whether ``v`` is a whole number as JSON holds one (``true`` is not)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """Whether ``v`` is a JSON number (int or float; ``true`` is not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_count(v: object, where: str, problems: list[str]) -> bool:
    """Whether ``v`` is a whole number >= 0; a problem naming ``where`` when not."""
    if is_int(v) and v >= 0:  # type: ignore[operator]
        return True
    problems.append(f"{where}: expected a whole number >= 0, got {got(v)}")
    return False


def unknown_fields(d: Mapping, allowed: tuple[str, ...], where: str,
                    problems: list[str]) -> None:
    """A problem for each key of ``d`` that is not in ``allowed``."""
    for k in d:
        if k not in allowed:
            problems.append(f"{where}.{k}: unknown field (expected one of {', '.join(allowed)})")


def missing_fields(d: Mapping, required: tuple[str, ...], where: str,
                    problems: list[str]) -> bool:
    """A problem for each of ``required`` that ``d`` lacks; whether it lacks none."""
    absent = [k for k in required if k not in d]
    problems += [f"{where}.{k}: required field missing" for k in absent]
    return not absent


def repeated(values: Sequence[Hashable]) -> list:
    """The values that occur more than once in ``values``, sorted (linear time: a class list
    read from a file may hold many thousands of names)."""
    return sorted(v for v, n in Counter(values).items() if n > 1)


def check_names(v: object, where: str, what: str, problems: list[str]) -> bool:
    """Whether ``v`` is a non-empty list of distinct non-empty strings; a problem naming
    ``where`` when not."""
    if not (isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)):
        problems.append(f"{where}: expected a non-empty list of {what} (non-empty strings), "
                        f"got {got(v)}")
        return False
    dup = repeated(v)  # type: ignore[arg-type]
    if dup:
        problems.append(f"{where}: expected distinct {what}, got {dup} more than once")
        return False
    return True


def check_classes(v: list[str], kind: object, where: str, problems: list[str]) -> None:
    """A problem for empty or repeated names in ``v`` (a label space's class names, already
    known to be a list of strings) and, for ``kind`` ``class`` (labels are indices into it),
    for an empty list; ``multilabel`` and ``segmentation`` may list none (builds write that)."""
    empty = [i for i, c in enumerate(v) if not c]
    if empty:
        problems.append(f"{where}: expected non-empty class names, got an empty name at "
                        f"position(s) {empty}")
    dup = repeated(v)
    if dup:
        problems.append(f"{where}: expected distinct class names, got {dup} more than once")
    if kind == "class" and not v:
        problems.append(f"{where}: expected at least one class name for kind 'class' (a "
                        f"label is an index into this list), got []")


def sensors_problems(sensors: object, sensor: object, where: str) -> list[str]:
    """Why ``sensors`` (a pooled modality's sensor ids; None: one sensor) is not a non-empty
    list of ids starting with the modality's ``sensor`` (empty list: it is one)."""
    if sensors is None:
        return []
    if not isinstance(sensors, list) or not sensors \
            or not all(isinstance(s, str) and s for s in sensors):
        return [f"{where}.sensors: expected a non-empty list of sensor ids, got {sensors!r}"]
    if sensors[0] != sensor:
        return [f"{where}.sensors: expected the modality's sensor {sensor!r} first, "
                f"got {sensors}"]
    return []


def check_dtype(v: object, where: str, problems: list[str]) -> None:
    """A problem unless ``v`` names a numeric numpy dtype (``uint16``, ``float32``...)."""
    import numpy as np

    try:
        ok = isinstance(v, str) and np.dtype(v).kind in "uif"
    except Exception:  # numpy raises TypeError, ValueError or SyntaxError for nonsense
        ok = False
    if not ok:
        problems.append(f"{where}: expected a numeric numpy dtype name such as 'uint16' or "
                        f"'float32', got {got(v)}")


def check_shape(v: object, n: int | None, where: str, problems: list[str]) -> None:
    """A problem unless ``v`` is ``[channels, height, width]`` of positive whole numbers with
    ``channels == n`` (the band count; None: unknown), or ``[]`` (tiles of several sizes)."""
    if v == []:
        return
    if not (isinstance(v, list) and len(v) == 3 and all(is_int(x) and x > 0 for x in v)):
        problems.append(f"{where}.shape: expected [channels, height, width] (whole numbers "
                        f"> 0), or [] for tiles of several sizes, got {got(v)}")
    elif n is not None and v[0] != n:
        problems.append(f"{where}.shape: expected {n} channels first (one per entry of "
                        f"{where}.bands, which lists {n}), got {v}")


def check_nodata(v: object, n: int | None, where: str, problems: list[str]) -> None:
    """A problem unless ``v`` is a list of one number or null per band (``n``; None:
    unknown)."""
    if not (isinstance(v, list) and all(x is None or is_number(x) for x in v)):
        problems.append(f"{where}.nodata: expected a list of one no-data value (a number or "
                        f"null) per band, got {got(v)}")
    elif n is not None and len(v) != n:
        problems.append(f"{where}.nodata: expected {n} entries (one per entry of "
                        f"{where}.bands), got {len(v)}")


STATS_KEYS = ("count", "mean", "std", "min", "max")  # what every eofm version wrote per band
STATS_REPAIR = "eofm-shard stats DATASET --write"  # recomputes them from the pixels


def check_stats(v: object, bands: list[str] | None, where: str, problems: list[str]) -> None:
    """A problem unless ``v`` is empty (statistics not recorded) or maps every band of
    ``bands`` (None: unknown) and no other to a mapping of statistic name -> finite number or
    null (``null``: a band without valid pixels) holding at least :data:`STATS_KEYS`, with a
    ``std`` >= 0. :func:`stats_repair_hint` says how to repair such problems."""
    if not isinstance(v, Mapping):
        problems.append(f"{where}.stats: expected a mapping of band name -> statistics, "
                        f"got {got(v)}")
        return
    absent = [b for b in bands or () if b not in v]
    if v and absent:
        problems.append(f"{where}.stats: expected statistics of every band listed in "
                        f"{where}.bands (or none), got none for {absent}")
    for band, st in v.items():
        at = f"{where}.stats.{band}"
        if bands is not None and band not in bands:
            problems.append(f"{at}: expected statistics of bands listed in {where}.bands, "
                            f"got statistics of {band!r}, which is not listed there")
            continue  # one problem: what it holds does not matter
        if not isinstance(st, Mapping):
            problems.append(f"{at}: expected a mapping of statistic name -> number (count, "
                            f"mean, std, min, max, ...), got {got(st)}")
            continue
        missing_fields(st, STATS_KEYS, at, problems)
        for key, x in st.items():
            _check_statistic(x, key, f"{at}.{key}", problems)


def _check_statistic(x: object, key: str, where: str, problems: list[str]) -> None:
    """A problem unless ``x`` is null or a finite number (>= 0 for ``std``)."""
    if not (x is None or is_number(x)):
        problems.append(f"{where}: expected a number or null, got {got(x)}")
    elif x is not None and not (is_int(x) or math.isfinite(x)):  # type: ignore[arg-type]
        problems.append(f"{where}: expected a finite number or null, got {got(x)}")
    elif key == "std" and x is not None and x < 0:  # type: ignore[operator]
        problems.append(f"{where}: expected a standard deviation (a number >= 0) or null, "
                        f"got {got(x)}")


# One group of the Sentinel-2 offset record (``extra.s2_offset.groups[i]``), as
# :func:`.s2_baseline.summarise` writes it; :func:`.s2_baseline.describe` (``eofm-shard
# inspect``) and the fine-tuning readers read every one of these fields.
S2_OFFSET_GROUP_FIELDS = ("input", "modality", "offset", "baseline", "origin", "status", "items",
                          "examples")


def check_s2_offset(v: object, where: str, problems: list[str]) -> None:
    """A problem unless ``v`` is a Sentinel-2 offset record as ``eofm-shard build`` writes it
    (:func:`.s2_baseline.summarise`): a mapping with a string ``mode`` and a list ``groups``
    of mappings holding :data:`S2_OFFSET_GROUP_FIELDS` (:func:`_check_s2_offset_group`).
    ``mode`` and ``groups`` may be absent (readers take ``?`` and no group: ``{}`` records
    no decision); a group's fields are all read, so each is required."""
    if not isinstance(v, Mapping):
        problems.append(f"{where}: expected a mapping with mode (a string) and groups (a list "
                        f"of the inputs' offset decisions), as eofm-shard build records it, "
                        f"got {got(v)}")
        return
    if "mode" in v and not isinstance(v["mode"], str):
        problems.append(f"{where}.mode: expected a string ('auto', 'none' or an offset in DN "
                        f"such as '-1000'), got {got(v['mode'])}")
    groups = v.get("groups", [])
    if not isinstance(groups, list):
        problems.append(f"{where}.groups: expected a list of mappings (one per input, "
                        f"modality and decision), got {got(groups)}")
        return
    for i, g in enumerate(groups):
        _check_s2_offset_group(g, f"{where}.groups[{i}]", problems)


def _check_s2_offset_group(g: object, where: str, problems: list[str]) -> None:
    """A problem unless ``g`` maps :data:`S2_OFFSET_GROUP_FIELDS` to their types: ``input``,
    ``modality``, ``origin``, ``status`` strings, ``offset`` a whole number of DN,
    ``baseline`` a string or null, ``items`` a whole number >= 0, ``examples`` a list of
    strings (other keys are left alone)."""
    if not isinstance(g, Mapping):
        problems.append(f"{where}: expected a mapping of {', '.join(S2_OFFSET_GROUP_FIELDS)}, "
                        f"got {got(g)}")
        return
    missing_fields(g, S2_OFFSET_GROUP_FIELDS, where, problems)
    for key in ("input", "modality", "origin", "status"):
        if key in g and not isinstance(g[key], str):
            problems.append(f"{where}.{key}: expected a string, got {got(g[key])}")
    if "offset" in g and not is_int(g["offset"]):
        problems.append(f"{where}.offset: expected a whole number of DN (such as -1000 or 0), "
                        f"got {got(g['offset'])}")
    if "baseline" in g and not (g["baseline"] is None or isinstance(g["baseline"], str)):
        problems.append(f"{where}.baseline: expected a processing baseline such as '04.00' "
                        f"(a string) or null, got {got(g['baseline'])}")
    if "items" in g:
        check_count(g["items"], f"{where}.items", problems)
    ex = g.get("examples", [])
    if not (isinstance(ex, list) and all(isinstance(x, str) for x in ex)):
        problems.append(f"{where}.examples: expected a list of item sources (strings), "
                        f"got {got(ex)}")


def stats_repair_hint(source: str) -> str:
    """How to repair the statistics of the manifest ``source`` (its path or URL, or a zarr
    store): ``eofm-shard stats FOLDER --write`` recomputes them from a local tar dataset's
    pixels (FOLDER named when ``source`` is a local manifest); a zarr store is rebuilt."""
    local = "://" not in source
    try:
        zarr = local and (Path(source) / "zarr.json").is_file()
    except OSError:  # e.g. a name too long: not a store
        zarr = False
    if zarr:
        return ("to repair the statistics, rebuild the zarr store with `eofm-shard build` "
                "(`eofm-shard stats --write` rewrites those of tar datasets only)")
    if local and source.endswith(".json"):
        folder = shlex.quote(str(Path(source).parent))
        return ("to repair the statistics, recompute them from the pixels with "
                f"`eofm-shard stats {folder} --write`")
    return ("to repair the statistics, recompute them from the pixels with "
            f"`{STATS_REPAIR}` (DATASET: a local copy of the tar dataset folder)")
