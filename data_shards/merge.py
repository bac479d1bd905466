"""``eofm-shard merge``: the writer parts of a build -> one manifest.

:mod:`.build` deals a build's items round-robin to its writers; each writer writes its own
shards and, last, a part file ``.parts/writer-WW.json`` (its shard list, counters, sample shapes
and the build's plan record) beside one statistics file per modality
(``.parts/writer-WW.<modality>.npz``). This module reads those parts back and writes the
dataset's manifest: it checks that every writer's part is there, reads as one eofm-shard wrote
and was run with the same options and ``--num-writers`` (together the parts hold every planned
item once), that every statistics file loads and every shard listed is on disk at its written
size, then merges the statistics and counters exactly and saves the
manifest atomically. A build that kept no sample is an :class:`.build.EmptyBuildError`, and no
manifest is written.

:func:`merge` is the last step of :func:`.build.build` (all writers in one run, ``workers``
processes) and the whole of ``eofm-shard merge`` (writers run separately with ``--writer-id``,
one per machine). This module imports from :mod:`.build` (``PARTS``, ``EmptyBuildError``);
``build`` imports it only inside :func:`.build.build`, so there is no import cycle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from .build import PARTS, EmptyBuildError
from .ingest import ModalityPlan
from .manifest import LabelInfo, Manifest, ManifestError, ModalityInfo, ShardInfo
from .manifest_fields import (
    MISSING,
    check_s2_offset,
    got,
    is_int,
    is_number,
    missing_fields,
    unknown_fields,
)
from .stats import BandStats

# the fields of a ``plan.modalities.<name>`` entry: what ModalityPlan(**entry) takes
PLAN_MODALITY_FIELDS = tuple(f.name for f in fields(ModalityPlan))


def empty_build_message(record: dict, counters: dict[str, int]) -> str:
    """Why a build kept no tile: the inputs, the limits and the drop counters."""
    tile = record.get("tile") or {}
    what, limits = "nodata limit", f"--max-nodata {tile.get('max_nodata')}"
    drops = f"{counters.get('dropped_nodata', 0)} dropped for nodata"
    if tile.get("max_cloud") is not None:
        what, limits = "nodata and cloud limits", f"{limits}, --max-cloud {tile['max_cloud']}"
        drops += f", {counters.get('dropped_cloud', 0)} for cloud"
    return (f"{record.get('source')}: no tiles passed the {what} ({limits}); nothing to "
            f"write ({counters.get('tiles', 0)} tile(s) cut, {drops})")


def _shard_problem(out: Path, shard: ShardInfo) -> str | None:
    """Why the shard a writer part lists is not there as written (missing, another size)."""
    path = out / shard.name
    if not path.is_file():
        return f"{shard.name} (missing)"
    size = path.stat().st_size
    return None if size == shard.bytes else f"{shard.name} ({size} bytes, written {shard.bytes})"


def _read_part_stats(path: Path) -> BandStats:
    """One writer's statistics of one modality; a missing or damaged file is a
    :class:`ManifestError` naming it."""
    try:
        return BandStats.load(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing; its writer did not finish: rerun it "
                            "(eofm-shard build ... --writer-id N)") from None
    except Exception as e:  # not an .npz BandStats.save wrote (damaged, pickled, truncated)
        raise ManifestError(f"{path}: not the statistics file its writer wrote "
                            f"({type(e).__name__}: {e}); rerun that writer") from None


def _read_part(path: Path) -> dict[str, Any]:
    """One writer's part file, its fields checked (a damaged or hand-edited part is a
    :class:`ManifestError` naming the file and the field, not a KeyError in the merge)."""
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: cannot read the writer part ({e})") from None
    problems = []
    if not isinstance(part, dict):
        problems.append(f"expected a JSON object, got {type(part).__name__}")
    else:
        for key in ("writer", "num_writers", "items"):
            v = part.get(key)
            if not (is_int(v) and v >= 0):
                problems.append(f"{key}: expected a whole number >= 0, got {v!r}")
        plan = part.get("plan")
        if not (isinstance(plan, dict) and isinstance(plan.get("modalities"), dict)):
            problems.append("plan: expected a mapping with the build's modalities, got "
                            f"{type(plan).__name__}")
        else:
            problems += plan_problems(plan)
        counters = part.get("counters")
        if not (isinstance(counters, dict) and all(is_int(v) for v in counters.values())):
            problems.append(f"counters: expected a mapping of name -> whole number, got "
                            f"{counters!r:.80}")
        if not isinstance(part.get("shards"), list):
            problems.append(f"shards: expected a list of shard entries, got "
                            f"{type(part.get('shards')).__name__}")
        shapes = part.get("shapes", {})
        if not (isinstance(shapes, dict) and all(isinstance(v, list) for v in shapes.values())):
            problems.append("shapes: expected a mapping of modality -> list of shapes")
    if problems:
        raise ManifestError(f"{path}: not a writer part eofm-shard wrote; rerun that writer "
                            "(eofm-shard build ... --writer-id N):\n  " + "\n  ".join(problems))
    return part


def plan_problems(plan: Mapping[str, Any]) -> list[str]:
    """What is wrong with a writer part's ``plan`` record (its ``modalities`` already a
    mapping), each naming its field (``plan.modalities.s2.dtype``): every field the merge reads
    (:func:`.build._plan_record` writes them), so that :func:`merge` neither fails with a
    KeyError/TypeError nor writes a manifest that cannot be read. Empty: it reads."""
    problems: list[str] = []
    for name, entry in plan["modalities"].items():
        problems += _plan_modality_problems(entry, f"plan.modalities.{name}")
    if "labels" not in plan:
        problems.append("plan.labels: required field missing (null for a dataset without "
                        "labels)")
    elif plan["labels"]:  # null (or empty): no labels, as merge reads it
        LabelInfo.parse(plan["labels"], "plan.labels", problems)
    for key in ("source", "layout"):
        if not isinstance(plan.get(key), str):
            problems.append(f"plan.{key}: expected a string, got {got(plan.get(key, MISSING))}")
    if not isinstance(plan.get("tile"), Mapping):
        problems.append(f"plan.tile: expected a mapping of the tiling options, got "
                        f"{got(plan.get('tile', MISSING))}")
    sensors = plan.get("sensors") or {}  # absent: no modality pools sensors
    if not (isinstance(sensors, Mapping) and all(
            isinstance(v, list) and v and all(isinstance(s, str) and s for s in v)
            for v in sensors.values())):
        problems.append(f"plan.sensors: expected a mapping of modality -> list of the sensor "
                        f"ids pooled into it, got {got(sensors)}")
    if "s2_offset" in plan:
        check_s2_offset(plan["s2_offset"], "plan.s2_offset", problems)
    return problems


def _plan_modality_problems(entry: object, where: str) -> list[str]:
    """What is wrong with one ``plan.modalities.<name>`` entry: exactly the fields of
    :class:`.ingest.ModalityPlan`, each of the type the manifest's modality entry needs
    (checked by :meth:`.manifest.ModalityInfo.parse`), ``hist_range`` null or [low, high]."""
    problems: list[str] = []
    if not isinstance(entry, Mapping):
        return [f"{where}: expected a mapping of {', '.join(PLAN_MODALITY_FIELDS)}, "
                f"got {got(entry)}"]
    unknown_fields(entry, PLAN_MODALITY_FIELDS, where, problems)
    if not missing_fields(entry, PLAN_MODALITY_FIELDS, where, problems) or problems:
        return problems
    as_manifest = {k: v for k, v in entry.items() if k != "hist_range"}
    ModalityInfo.parse({**as_manifest, "shape": []}, where, problems, check_stats=False)
    hist = entry["hist_range"]
    if not (hist is None or (isinstance(hist, list) and len(hist) == 2 and all(
            is_number(x) and math.isfinite(x) for x in hist))):
        problems.append(f"{where}.hist_range: expected null or [low, high] (finite numbers), "
                        f"got {got(hist)}")
    return problems


def _writer_count(parts: list[Path], loaded: list[dict[str, Any]]) -> int:
    """The build's writer count, the same in every part: each part file names its own writer
    (``writer-WW.json`` holds ``"writer": WW``) and was run with the first part's
    ``--num-writers`` (writer ``w`` of ``n`` writes items ``w, w + n, ...``: parts of two
    counts lose some items and write others twice); else a :class:`ManifestError` naming each
    part that differs and both values."""
    problems = [f"{path}: holds the part of writer {part['writer']}, expected writer "
                f"{path.name[len('writer-'):-len('.json')]} (its file name)"
                for path, part in zip(parts, loaded, strict=True)
                if path.name != f"writer-{part['writer']:02d}.json"]
    if problems:
        raise ManifestError("writer parts under another writer's name (copied or renamed); "
                            "rerun those writers (eofm-shard build ... --writer-id N):\n  "
                            + "\n  ".join(problems))
    n = loaded[0]["num_writers"]
    odd = [f"{path}: run with --num-writers {part['num_writers']}, but {parts[0].name} with "
           f"--num-writers {n}" for path, part in zip(parts, loaded, strict=True)
           if part["num_writers"] != n]
    if odd:
        raise ManifestError(
            f"{parts[0].parent}: writer parts of different --num-writers (writer w of N writes "
            "items w, w + N, ...: merged, some items would be missing and others written "
            "twice); rerun every writer with the same --num-writers (eofm-shard build ... "
            "--num-writers N --writer-id W):\n  " + "\n  ".join(odd))
    return n


def round_robin_counts(total: int, n: int) -> list[int]:
    """How many of ``total`` items each of ``n`` writers takes when dealt round-robin (writer
    ``w`` takes items ``w, w + n, ...``, as :func:`.build.run_writer`)."""
    return [len(range(w, total, n)) for w in range(n)]


def _check_coverage(parts_dir: Path, loaded: list[dict[str, Any]], n: int) -> None:
    """The ``n`` writers' parts (one per writer, of one plan) together hold every planned item
    exactly once: each part's ``items`` is its round-robin share of the items they hold
    together; else a :class:`ManifestError` naming each part's count and the expected one."""
    counts = [part["items"] for part in sorted(loaded, key=lambda p: p["writer"])]
    total = sum(counts)
    expected = round_robin_counts(total, n)
    if counts == expected:
        return
    wrong = [f"writer-{w:02d}.json: {c} item(s), expected {e}"
             for w, (c, e) in enumerate(zip(counts, expected, strict=True)) if c != e]
    raise ManifestError(
        f"{parts_dir}: the writer parts do not hold one plan's {total} item(s) once each "
        f"(dealt round-robin to {n} writers, writer w takes items w, w + {n}, ...; some items "
        "would be missing and others written twice); rerun every writer (eofm-shard build ... "
        f"--num-writers {n} --writer-id W):\n  " + "\n  ".join(wrong))


def merge(out: str | Path) -> Manifest:
    """Merge every writer's part into one manifest (all parts must be present and agree);
    :class:`EmptyBuildError` when they hold no sample."""
    out = Path(out)
    parts_dir = out / PARTS
    parts = sorted(parts_dir.glob("writer-*.json"))
    if not parts:
        raise ManifestError(f"{parts_dir}: no writer parts to merge")
    loaded = [_read_part(p) for p in parts]
    n = _writer_count(parts, loaded)
    have = sorted(p["writer"] for p in loaded)
    if have != list(range(n)):
        raise ManifestError(f"{parts_dir}: expected parts of writers 0..{n - 1}, found {have}")
    _check_coverage(parts_dir, loaded, n)
    record = loaded[0]["plan"]
    for part in loaded[1:]:
        if part["plan"] != record:
            raise ManifestError(f"{parts_dir}: writer {part['writer']} was run with different "
                                "options than writer 0; rebuild with the same options")
    mods = {k: ModalityPlan(**v) for k, v in record["modalities"].items()}
    stats: dict[str, BandStats] = {}
    counters: dict[str, int] = {}
    shards: list[ShardInfo] = []
    seen: dict[str, set[tuple[int, ...]]] = {}
    for part in loaded:
        for k, v in part.get("shapes", {}).items():
            seen.setdefault(k, set()).update(tuple(x) for x in v)
        for name in mods:
            st = _read_part_stats(parts_dir / f"writer-{part['writer']:02d}.{name}.npz")
            if name in stats:
                stats[name].merge(st)
            else:
                stats[name] = st
        for k, v in part["counters"].items():
            counters[k] = counters.get(k, 0) + v
        problems: list[str] = []
        for i, entry in enumerate(part["shards"]):
            info = ShardInfo.parse(entry, f"shards[{i}]", problems)
            if info is not None:
                shards.append(info)
        if problems:
            raise ManifestError(f"{parts_dir}/writer-{part['writer']:02d}.json: not a writer "
                                "part eofm-shard wrote:\n  " + "\n  ".join(problems))
    gone = [why for s in shards if (why := _shard_problem(out, s))]
    if gone:  # a manifest must list only complete shards
        raise ManifestError(f"{out}: shards the writer parts list are missing or changed: "
                            f"{', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''}; rerun "
                            "their writers (eofm-shard build ... --writer-id N)")
    if not counters.get("samples"):
        raise EmptyBuildError(empty_build_message(record, counters))
    shapes = {k: list(next(iter(v))) if len(v) == 1 else [] for k, v in seen.items()}
    manifest = Manifest(
        modalities={
            name: ModalityInfo(m.sensor, m.bands, m.dtype, shapes.get(name, []), m.nodata,
                               m.gsd_m, stats[name].summary(),
                               (record.get("sensors") or {}).get(name))
            for name, m in mods.items()
        },
        shards=sorted(shards, key=lambda s: s.name),
        labels=LabelInfo(**record["labels"]) if record["labels"] else None,
        source=record["source"], layout=record["layout"], tile=record["tile"],
        extra={"counters": counters, "writers": n,
               **({"s2_offset": record["s2_offset"]} if record.get("s2_offset") else {}),
               **({"order": record["order"]} if record.get("order") else {}),
               **({"stack": record["stack"]} if record.get("stack") else {}),
               **({"user_sensors": record["user_sensors"]} if record.get("user_sensors")
                  else {}),
               **({"s1_linear_to_db": record["s1_linear_to_db"]}
                  if record.get("s1_linear_to_db") else {})},
    )
    manifest.save(out)
    return manifest
