"""The Sentinel-2 offset a built labelled dataset's pixels got at ingest, and refusing a
forced offset that reading them cannot apply (its build already decided, and recorded the
decision in its manifest's ``extra.s2_offset``)."""

from __future__ import annotations

from eofm.data_shards.manifest import Manifest
from eofm.data_shards.s2_baseline import S2_SENSORS, mode_for, names_input, parse_spec
from eofm.data_shards.s2_baseline import describe as describe_s2_offset

__all__ = ["applied_s2_offset", "check_recorded_s2_offset"]


def applied_s2_offset(manifest: Manifest, modality: str) -> dict | None:
    """The Sentinel-2 offset correction the pixels of ``modality`` got at ingest, from the
    build's ``extra.s2_offset`` record: ``{"mode": ..., "groups": [...]}`` with that modality's
    groups (per input: ``offset`` in DN, ``baseline``, ``origin``, ``status``, ``items``,
    ``examples``; :func:`eofm.data_shards.s2_baseline.summarise`). None when the modality is
    not Sentinel-2, or when the dataset was built before builds recorded the decision (the
    manifest reader warns about those)."""
    info = manifest.modalities.get(modality)
    record = manifest.extra.get("s2_offset")
    if info is None or not set(info.sensor_ids) & S2_SENSORS or not isinstance(record, dict):
        return None
    groups = [g for g in record.get("groups", []) if g.get("modality") == modality]
    return {"mode": record.get("mode"), "groups": groups}


def check_recorded_s2_offset(source: str, manifest: Manifest, s2_offset: str) -> None:
    """Refuse (ValueError naming ``source`` and the recorded decision) a forced Sentinel-2
    offset (``s2_offset`` other than ``auto``: ``none``, ``-1000``, ``INPUT=MODE``) for a
    dataset ``eofm-shard build`` has built: its pixels were corrected at ingest as its
    manifest's ``extra.s2_offset`` records, and reading them cannot change that. Accepted when
    every recorded input got the offset asked for it (and, for a dataset without Sentinel-2
    data, when the offset asked is 0); a dataset built before the decision was recorded is
    refused, as nothing says what its pixels got."""
    default, per = parse_spec(s2_offset)  # a bad value: "s2_offset: expected ..."
    if default == "auto" and not per:
        return
    record = manifest.extra.get("s2_offset")
    groups = record.get("groups", []) if isinstance(record, dict) else []
    has_s2 = any(set(m.sensor_ids) & S2_SENSORS for m in manifest.modalities.values())
    fix = (f"pass --s2-offset auto (data.s2_offset: auto in eofm-finetune) to read the pixels "
           f"as built, or rebuild from the raw products with `eofm-shard build "
           f"--s2-offset {s2_offset}` (or pass the raw folder itself as the data)")
    flag = f"s2_offset {s2_offset!r} (eofm-probe --s2-offset, eofm-finetune data.s2_offset)"
    if not has_s2:
        if default in ("auto", 0) and not per:
            return
        raise ValueError(f"{source}: {flag} asks for a Sentinel-2 offset, but the dataset has "
                         f"no Sentinel-2 modality (sensors "
                         f"{sorted({s for m in manifest.modalities.values() for s in m.sensor_ids})}"
                         f"): no offset applies to its pixels; drop the setting")
    if not groups:
        raise ValueError(f"{source}: {flag} cannot apply to a built dataset: its pixels were "
                         "read at build time, and its manifest has no extra.s2_offset record "
                         "of the offset they got (built before eofm recorded it); " + fix)
    inputs = [str(g.get("input", "")) for g in groups]
    unmatched = [k for k in per if not any(names_input(k, i) for i in inputs)]
    wrong = [g for g, i in zip(groups, inputs, strict=True)
             if mode_for(i, default, per) not in ("auto", g.get("offset"))]
    if unmatched or wrong:
        what = (f"names no input of its build ({unmatched}; its inputs: "
                f"{sorted(set(inputs))})" if unmatched else
                "is not the offset its build applied")
        recorded = "; ".join(line.strip() for line in describe_s2_offset(record)[1:])
        raise ValueError(f"{source}: {flag} {what}: this built dataset's pixels got their "
                         "Sentinel-2 offset at ingest, decided by eofm-shard build --s2-offset "
                         f"{record.get('mode')} as its manifest records (extra.s2_offset): "
                         f"{recorded}; reading them cannot change it, so " + fix)
