"""Checking an evaluation report against the encoder being exported, and comparing input
contracts: the weights digest (:func:`weights_digest`) eofm-probe records, the contract
fields compared (:data:`CHECKED_CONTRACT`), how two contracts differ in words
(:func:`contract_differences`, also what a fine-tune resume reports), and reading
``eofm-export --evaluation`` (:func:`read_evaluation`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from eofm.data_shards.manifest_fields import got
from eofm.models import InputContract, ViTEncoder

__all__ = ["CHECKED_CONTRACT", "WEIGHTS_DIGEST", "check_evaluation", "contract_differences",
           "read_evaluation", "weights_digest"]

log = logging.getLogger(__name__)

WEIGHTS_DIGEST = "encoder_weights_sha256"  # the key eofm-probe's report.json stores it under
# every contract field but ``data`` (where the statistics came from), the most telling first
CHECKED_CONTRACT = ("bands", "stats", *(f.name for f in dataclasses.fields(InputContract)
                                        if f.name not in ("bands", "stats", "data")))


def weights_digest(encoder: torch.nn.Module) -> str:
    """SHA-256 of an encoder's tensors (its ``state_dict``): each tensor's name, dtype, shape
    and bytes, in sorted-name order. The same weights give the same digest wherever they were
    loaded from (an export with or without ``--with-decoder``, a Hub copy, the checkpoint
    itself) and on any device; it is what ``eofm-export --evaluation`` compares."""
    h = hashlib.sha256()
    state = encoder.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0"
                 f"{list(state[name].shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples as lists, int keys as strings)."""
    return json.loads(json.dumps(value, default=str))


def contract_differences(theirs: Mapping[str, Any], ours: Mapping[str, Any],
                         sides: tuple[str, str] = ("in the report", "here"),
                         band_sep: str = ":") -> list[tuple[str, str]]:
    """``(field, how it differs, in words)`` for each :data:`CHECKED_CONTRACT` field that
    differs between contracts ``theirs`` and ``ours`` (as JSON reads them back; per-band
    wavelengths and bandwidths are left out when the bands differ). ``sides`` name the two
    in the words (a report and this export; a checkpoint and this run); ``band_sep`` follows
    the band named in a statistics difference."""
    a, b = _plain(dict(theirs)), _plain(dict(ours))
    differ = [k for k in CHECKED_CONTRACT if a.get(k) != b.get(k)]
    if "bands" in differ:  # per-band wavelengths and bandwidths follow the bands
        differ = [k for k in differ if k not in ("wavelengths", "bandwidths")]
    return [(k, _difference(k, a.get(k), b.get(k), sides, band_sep)) for k in differ]


def check_evaluation(evaluation: Mapping[str, Any], encoder: ViTEncoder, source: str) -> None:
    """Refuse (a ValueError naming ``source`` and what differs) an eofm-probe report made on
    other weights or another input contract than ``encoder``'s, whose numbers would be shown
    in the card as this encoder's.

    A report with the weights digest (:func:`weights_digest`, ``encoder_weights_sha256``) is
    compared by it and by the contract (:data:`CHECKED_CONTRACT`); an older one without it by
    its contract and architecture, accepted with a warning when they match. A JSON object that
    records neither (not an eofm-probe report) cannot be checked: a warning says so."""
    digest = evaluation.get(WEIGHTS_DIGEST)
    contract = evaluation.get("contract")
    if digest is None and not isinstance(contract, Mapping):
        log.warning("%s: records no encoder weights digest (%s) or input contract, so it cannot "
                    "be checked to be this encoder's evaluation; shown in the card as it is",
                    source, WEIGHTS_DIGEST)
        return
    diffs = []
    ours_digest = weights_digest(encoder) if digest is not None else None
    if digest is not None and digest != ours_digest:
        diffs.append(f"weights ({WEIGHTS_DIGEST} {str(digest)[:12]}.. in the report, "
                     f"{str(ours_digest)[:12]}.. here)")
    arch, name = evaluation.get("architecture"), getattr(encoder, "model_name", None)
    if arch is not None and name is not None and arch != name:
        diffs.append(f"architecture ({arch} in the report, {name} here)")
    if isinstance(contract, Mapping):
        diffs += [f"{k.replace('_', ' ')} ({why})" for k, why in
                  contract_differences(contract, encoder.contract.to_dict())]
    if diffs:
        raise ValueError(f"{source}: this evaluation was made on another encoder than the one "
                         f"being exported: {'; '.join(diffs)}; its numbers would be shown as this "
                         "encoder's. Probe this export (eofm-export, then eofm-probe --encoder "
                         "OUT) and pass that report")
    if digest is None:
        log.warning("%s: made by an older eofm-probe without the encoder weights digest (%s); "
                    "its architecture and input contract match this export, the weights could "
                    "not be compared", source, WEIGHTS_DIGEST)


def _short(value: Any, limit: int = 40) -> str:
    """``value`` for a message, cut to ``limit`` characters."""
    text = "absent" if value is None else json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _difference(field: str, theirs: Any, ours: Any,
                sides: tuple[str, str] = ("in the report", "here"), band_sep: str = ":") -> str:
    """How a contract field (``theirs``) differs from ours, in words, ``sides`` naming the
    two: which bands one has and the other lacks (or their order), the first band whose
    statistics differ, the first differing value of a list, else both values."""
    t, o = sides
    if field == "bands" and isinstance(theirs, list) and isinstance(ours, list):
        only_r, only_e = [b for b in theirs if b not in ours], [b for b in ours if b not in theirs]
        if not only_r and not only_e:
            return f"the same bands in another order: {_short(theirs)} {t}"
        return (f"{len(theirs)} {t}, {len(ours)} {o}; only {t}: "
                f"{_short(only_r)}, only {o}: {_short(only_e)}")
    if field == "stats" and isinstance(theirs, dict) and isinstance(ours, dict):
        bands = [b for b in dict.fromkeys([*theirs, *ours]) if theirs.get(b) != ours.get(b)]
        more = f"; {len(bands) - 1} more band(s) differ" if len(bands) > 1 else ""
        return (f"{bands[0]}{band_sep} {_short(theirs.get(bands[0]), 60)} {t}, "
                f"{_short(ours.get(bands[0]), 60)} {o}{more}")
    if isinstance(theirs, list) and isinstance(ours, list) and len(theirs) == len(ours) > 4:
        i = next(i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b)
        return f"value {i + 1}: {_short(theirs[i])} {t}, {_short(ours[i])} {o}"
    return f"{_short(theirs)} {t}, {_short(ours)} {o}"



def read_evaluation(path: Path) -> dict[str, Any]:
    """The ``--evaluation`` report: a JSON object (e.g. eofm-probe's report.json); a
    ValueError names the flag and the file when it cannot be read, is not JSON or is not an
    object."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"--evaluation {path}: cannot read the report ({why})") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--evaluation {path}: not valid JSON ({e}); expected a JSON report "
                         "such as eofm-probe's report.json") from None
    if not isinstance(report, dict):
        raise ValueError(f"--evaluation {path}: expected a JSON object (names -> numbers, e.g. "
                         f"eofm-probe's report.json), got {got(report)}")
    return report
