"""Sentinel-2 processing baseline -> the additive DN correction that makes shards offset-free.

ESA products of processing baseline 04.00 and later (from 2022-01-25) store
``DN = 10000 * reflectance + 1000`` (L2A ``BOA_ADD_OFFSET = -1000``, L1C
``RADIO_ADD_OFFSET = -1000``); older baselines store ``DN = 10000 * reflectance``. Shards always
hold the offset-free form, so ``eofm-shard build`` adds the product's offset to every valid pixel
of a Sentinel-2 modality (sensors in :data:`S2_SENSORS`, whatever level they are declared as).

Where the offset comes from (``--s2-offset auto``, the default), first match wins, looking in
the band files' folder and its parents up to the input root and, when the input lies inside an
ESA ``*.SAFE`` product (``X.SAFE/GRANULE/*/IMG_DATA`` given directly), on up to that product
folder (:func:`metadata_folders`):

1. ``metadata.json`` (SSL4EO-S12 / Earth Engine export): ``PROCESSING_BASELINE`` (else
   ``PRODUCT_ID``). Earth Engine's ``*_HARMONIZED`` collections have already removed the
   offset, so a ``system:id`` naming one means no correction.
2. ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml`` (ESA SAFE): the ``BOA_ADD_OFFSET`` /
   ``RADIO_ADD_OFFSET`` values, else its ``PROCESSING_BASELINE`` (stdlib XML parser, no network).
3. The product id in a folder or file name: ``S2A_MSIL2A_20220706T085611_N0400_...`` means
   baseline 04.00.

Baseline >= 04.00 means -1000, older means 0. ``N9999`` / ``99.99`` is not an ESA baseline
(reprocessed or harmonised archives such as Major-TOM use it) and, like a source without any
baseline information (EuroSAT, BigEarthNet, a bare scene cut-out), counts as *unknown*: no
correction, and the build logs one warning naming those inputs and how to force the offset.
``--s2-offset none`` never corrects; ``--s2-offset -1000`` corrects every S2 input.

The same places name the product's processing level (:func:`find_level`: ``PRODUCT_ID`` of a
``metadata.json``, an ``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml`` file, ``MSIL1C``/``MSIL2A`` in a
folder name), which the ``per_band`` layout reads before guessing it from the band set.

Applying (:func:`apply_offset`): on valid pixels only, in a wider integer type (no uint16
wrap-around). Nodata pixels keep the nodata value. A valid pixel that would fall to or below the
nodata value (negative surface reflectance, which the offset exists to carry) is clipped to the
smallest valid DN (1 when nodata is 0), so validity masks are the same before and after.
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .stats import invalid_mask

log = logging.getLogger(__name__)

S2_SENSORS = frozenset({"s2_l1c", "s2_l2a"})
OFFSET_BASELINE = (4, 0)  # first baseline with the -1000 offset
ESA_OFFSET = -1000
UNKNOWN_BASELINES = frozenset({"99.99"})
MTD_NAMES = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")
OFFSET_TAGS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")
PRODUCT_RE = re.compile(r"S2[A-D]_MSIL(?:1C|2A)_\d{8}T\d{6}_N(\d{2})\.?(\d{2})_", re.IGNORECASE)
BASELINE_RE = re.compile(r"^\s*N?(\d{1,2})\.?(\d{2})\s*$")
# the processing level in a product id or metadata file name (S2B_MSIL1C_..., MTD_MSIL2A.xml)
LEVEL_RE = re.compile(r"(?<![A-Z0-9])MSIL(1C|2A)(?![A-Z0-9])", re.IGNORECASE)
SAFE_SUFFIX = ".SAFE"
MAX_EXAMPLES = 10


@dataclass(frozen=True)
class OffsetDecision:
    """The correction for one Sentinel-2 product and why.

    ``offset``: DN added to valid pixels (``-1000`` or ``0``); ``baseline``: ``"04.00"``-style
    as found (``"99.99"`` for ``N9999``), None when none was found; ``origin``:
    ``metadata.json``, ``MTD_MSIL2A.xml``, ``product id``, ``--s2-offset`` or ``none``; ``detail``: the file, product id or reason; ``status``:
    ``found``, ``unknown`` or ``forced``.
    """

    offset: int
    baseline: str | None
    origin: str
    detail: str
    status: str

    def to_dict(self) -> dict:
        """Plain-JSON form (sample ``meta.json`` and the manifest)."""
        return asdict(self)


def parse_spec(spec: str | Sequence[str]) -> tuple[str | int, dict[str, str | int]]:
    """``--s2-offset`` values (one, or several when repeated): a mode for every input
    (``auto``, ``none``, ``-1000``; the last one wins) and ``INPUT=MODE`` entries for single
    inputs (``INPUT`` as given on the command line, or its folder name). Returns (mode for
    the other inputs, {input: mode})."""
    default: str | int = "auto"
    per: dict[str, str | int] = {}
    for text in [spec] if isinstance(spec, str) else list(spec):
        key, sep, value = str(text).rpartition("=")
        if not sep:
            default = parse_mode(value)
        elif not key.strip():
            raise ValueError(f"s2_offset: expected INPUT=MODE with an input, got {text!r}")
        else:
            per[key.strip()] = parse_mode(value)
    return default, per


def mode_for(root: str, default: str | int, per: dict[str, str | int]) -> str | int:
    """The mode of input ``root``: an entry of ``per`` naming it (as given, as the same path,
    or by its folder name), else ``default``."""
    for key, mode in per.items():
        if names_input(key, root):
            return mode
    return default


def names_input(key: str, root: str) -> bool:
    """Whether an ``INPUT=MODE`` key names the input ``root``: as given, as the same path, or
    (a key without a slash) by its folder name."""
    if key == root or ("/" not in key.strip("/") and key.strip("/") == Path(root).name):
        return True
    try:
        return Path(key).resolve() == Path(root).resolve()
    except OSError:
        return False


def parse_mode(text: str | int) -> str | int:
    """``--s2-offset``: ``"auto"``, ``"none"`` (= 0) or an integer DN offset <= 0 (``-1000``)."""
    t = str(text).strip().lower()
    if t in ("auto", "none"):
        return "auto" if t == "auto" else 0
    try:
        value = int(t)
    except ValueError:
        value = 1
    if value > 0 or value < -10000:
        raise ValueError(f"s2_offset: expected 'auto', 'none' or an offset in DN such as -1000, "
                         f"got {text!r}")
    return value


def normalise_baseline(text: str) -> str | None:
    """``"04.00"``, ``"N0400"``, ``"0400"``, ``"4.00"`` -> ``"04.00"``; None if not a baseline."""
    m = BASELINE_RE.match(str(text))
    return f"{int(m.group(1)):02d}.{m.group(2)}" if m else None


def offset_for_baseline(baseline: str | None) -> int | None:
    """-1000 for baseline >= 04.00, 0 before, None when unknown (None or ``99.99``)."""
    if baseline is None or baseline in UNKNOWN_BASELINES:
        return None
    major, minor = (int(p) for p in baseline.split("."))
    return ESA_OFFSET if (major, minor) >= OFFSET_BASELINE else 0


def baseline_from_name(name: str) -> tuple[str, str] | None:
    """``(baseline, product id prefix)`` from an ESA product id anywhere in ``name``."""
    m = PRODUCT_RE.search(name)
    if m is None:
        return None
    return f"{m.group(1)}.{m.group(2)}", m.group(0).rstrip("_")


def _from_baseline(baseline: str | None, origin: str, detail: str) -> OffsetDecision:
    off = offset_for_baseline(baseline)
    if off is None:
        return OffsetDecision(0, baseline, origin, f"{detail}: baseline {baseline} is not an "
                              "ESA baseline (reprocessed or harmonised archive)", "unknown")
    return OffsetDecision(off, baseline, origin, detail, "found")


def read_json_file(path: Path, what: str = "metadata") -> object:
    """The JSON value a file holds; ValueError naming the file and ``what`` it should hold
    when it cannot be read, is not UTF-8 text or is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read {what} ({e})") from None


def read_metadata_json(path: Path) -> dict | None:
    """An SSL4EO / Earth Engine ``metadata.json`` as a dict; None when it holds another JSON
    value; ValueError naming the file when it cannot be read or parsed."""
    meta = read_json_file(path, "Sentinel-2 metadata")
    return meta if isinstance(meta, dict) else None


def from_metadata_json(path: Path) -> OffsetDecision | None:
    """Decision from an SSL4EO / Earth Engine ``metadata.json``; None if it says nothing."""
    meta = read_metadata_json(path)
    if meta is None:
        return None
    coll = str(meta.get("system:id", ""))
    if "HARMONIZED" in coll.upper():
        return OffsetDecision(0, normalise_baseline(str(meta.get("PROCESSING_BASELINE", ""))),
                              "metadata.json", f"{path}: Earth Engine harmonised collection "
                              f"{coll.rsplit('/', 1)[0]} (offset already removed)", "found")
    if "PROCESSING_BASELINE" in meta:
        raw = str(meta["PROCESSING_BASELINE"])
        b = normalise_baseline(raw)
        if b is None:
            raise ValueError(f"{path}: PROCESSING_BASELINE expected a baseline like '04.00', "
                             f"got {raw!r}")
        return _from_baseline(b, "metadata.json", f"{path} PROCESSING_BASELINE")
    if (found := baseline_from_name(str(meta.get("PRODUCT_ID", "")))) is not None:
        return _from_baseline(found[0], "metadata.json", f"{path} PRODUCT_ID {found[1]}")
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def from_mtd_xml(path: Path) -> OffsetDecision | None:
    """Decision from an ESA ``MTD_MSIL2A.xml``/``MTD_MSIL1C.xml``; None if it says nothing."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise ValueError(f"{path}: cannot parse Sentinel-2 product metadata ({e})") from None
    offsets: set[int] = set()
    baseline = None
    for el in root.iter():
        tag = _local(el.tag)
        if tag in OFFSET_TAGS and el.text and el.text.strip():
            try:
                offsets.add(int(float(el.text)))
            except ValueError:
                raise ValueError(f"{path}: {tag} expected a number, got {el.text!r}") from None
        elif tag == "PROCESSING_BASELINE" and el.text and baseline is None:
            baseline = normalise_baseline(el.text)
    if len(offsets) > 1:
        raise ValueError(f"{path}: per-band add offsets {sorted(offsets)} differ; one offset per "
                         "product is supported (pass --s2-offset to force one)")
    if offsets:
        return OffsetDecision(offsets.pop(), baseline, path.name, f"{path} {'/'.join(OFFSET_TAGS)}",
                              "found")
    if baseline is not None:
        return _from_baseline(baseline, path.name, f"{path} PROCESSING_BASELINE")
    return None


def _folders(start: Path, root: Path | None) -> list[Path]:
    """``start`` and its parents, up to and including ``root`` (or ``start`` alone)."""
    out = [start]
    if root is None or not start.is_relative_to(root):
        return out
    while out[-1] != root and out[-1].parent != out[-1]:
        out.append(out[-1].parent)
    return out


def is_safe_product(folder: Path) -> bool:
    """Whether ``folder`` is an ESA SAFE product folder (its name ends with ``.SAFE``)."""
    return folder.name.upper().endswith(SAFE_SUFFIX)


def enclosing_safe(folder: Path) -> list[Path]:
    """The folders above ``folder`` up to and including the first ``*.SAFE`` one (nearest
    first); empty when no ancestor is a SAFE product. A relative path whose written parents
    name none is looked up again from its absolute form (``.`` inside ``IMG_DATA``)."""
    for chain in (folder.parents, Path(os.path.abspath(folder)).parents):
        above: list[Path] = []
        for d in chain:
            above.append(d)
            if is_safe_product(d):
                return above
    return []


def _root_folder(root: str | Path | None) -> Path | None:
    """The input root as a folder (an input given as one file: its folder); None for none."""
    root_p = Path(root) if root is not None else None
    return root_p.parent if root_p is not None and root_p.is_file() else root_p


def metadata_folders(start: Path, root: Path | None) -> list[Path]:
    """Where a product's metadata is looked for, nearest first: ``start`` and its parents up to
    ``root`` (or ``start`` alone); then, unless one of those is a ``*.SAFE`` product, the
    folders above them up to the enclosing SAFE product, if there is one (an input given as
    ``X.SAFE/GRANULE/*/IMG_DATA`` keeps its product's ``MTD_MSIL*.xml`` and name)."""
    folders = _folders(start, root)
    if any(is_safe_product(d) for d in folders):
        return folders
    return [*folders, *enclosing_safe(folders[-1])]


def level_from_name(name: str) -> str | None:
    """``"L1C"`` or ``"L2A"`` from ``MSIL1C``/``MSIL2A`` in a product id or file name; None."""
    m = LEVEL_RE.search(name)
    return f"L{m.group(1).upper()}" if m else None


def find_level(folder: Path, root: str | Path | None = None) -> tuple[str, str] | None:
    """The processing level (``"L1C"`` or ``"L2A"``) of the Sentinel-2 product whose band files
    lie in ``folder``, and what says so; None when nothing does. Looked for in
    :func:`metadata_folders` (nearest first): a ``metadata.json`` ``PRODUCT_ID``, then an
    ``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml`` file, then ``MSIL1C``/``MSIL2A`` in a folder name."""
    folders = metadata_folders(Path(folder), _root_folder(root))
    for d in folders:
        if (d / "metadata.json").is_file() and (meta := read_metadata_json(d / "metadata.json")):
            pid = str(meta.get("PRODUCT_ID", ""))
            if (level := level_from_name(pid)) is not None:
                return level, f"{d / 'metadata.json'} PRODUCT_ID {pid}"
    for d in folders:
        for name in MTD_NAMES:
            if (d / name).is_file() and (level := level_from_name(name)) is not None:
                return level, str(d / name)
    for d in folders:
        if (level := level_from_name(d.name)) is not None:
            return level, f"folder name {d}"
    return None


def decide(files: Sequence[Path], root: str | Path | None = None) -> OffsetDecision:
    """The ``auto`` decision for one product whose band files are ``files`` (see module doc)."""
    if not files:
        raise ValueError("decide: expected at least one band file, got none")
    first = Path(files[0])
    folders = metadata_folders(first.parent, _root_folder(root))
    for d in folders:
        if (d / "metadata.json").is_file() and (got := from_metadata_json(d / "metadata.json")):
            return got
    for d in folders:
        for name in MTD_NAMES:
            if (d / name).is_file() and (got := from_mtd_xml(d / name)):
                return got
    names = [first.name, *(d.name for d in folders)]
    for n in names:
        if (found := baseline_from_name(n)) is not None:
            return _from_baseline(found[0], "product id", found[1])
    return OffsetDecision(0, None, "none", "no metadata.json, MTD_MSIL*.xml or product id "
                          "with a baseline", "unknown")


def resolve(files: Sequence[Path], mode: str | int, root: str | Path | None = None
            ) -> OffsetDecision:
    """``decide`` under ``--s2-offset mode`` (``auto``, or a forced offset)."""
    m = parse_mode(mode)
    if m == "auto":
        return decide(files, root)
    return OffsetDecision(int(m), None, "--s2-offset", f"forced to {m}", "forced")


def apply_offset(x: np.ndarray, offset: int, nodata: Sequence[float | None]
                 ) -> tuple[np.ndarray, int]:
    """Add ``offset`` to the valid pixels of ``x: (C, H, W)``; returns the array (same dtype)
    and the number of valid pixels clipped to the smallest valid value (see module doc)."""
    if offset == 0:
        return x, 0
    if len(nodata) != x.shape[0]:
        raise ValueError(f"apply_offset: {len(nodata)} nodata values for {x.shape[0]} bands")
    integer = np.issubdtype(x.dtype, np.integer)
    lo, hi = (int(np.iinfo(x.dtype).min), int(np.iinfo(x.dtype).max)) if integer else (None, None)
    out = np.empty_like(x)
    clipped = 0
    for i in range(x.shape[0]):
        bad = invalid_mask(x[i], nodata[i])
        if not integer:
            out[i] = np.where(bad, x[i], x[i] + offset)
            continue
        floor = lo + 1 if nodata[i] is not None and nodata[i] == lo else lo
        y = x[i].astype(np.int64) + offset
        low = (y < floor) & ~bad
        clipped += int(low.sum())
        out[i] = np.where(bad, x[i], np.clip(y, floor, hi).astype(x.dtype))
    return out, clipped


def correct(x: np.ndarray, decision: OffsetDecision | None, nodata: Sequence[float | None],
            context: str, counters: dict[str, int]) -> np.ndarray:
    """Apply ``decision`` to one product's ``(C, H, W)`` pixels during ingest. With no
    correction (and not forced), warn when the product looks offset anyway (counted in
    ``counters["s2_looks_offset"]``); clipped pixels are counted in
    ``counters["s2_offset_clipped_pixels"]``."""
    if decision is None:
        return x
    if decision.offset:
        x, n = apply_offset(x, decision.offset, nodata)
        if n:
            counters["s2_offset_clipped_pixels"] = counters.get("s2_offset_clipped_pixels", 0) + n
    elif decision.status != "forced" and looks_offset(x, nodata):
        counters["s2_looks_offset"] = counters.get("s2_looks_offset", 0) + 1
        log.warning("%s: every band's smallest valid value is >= 1000, as in an uncorrected "
                    "Sentinel-2 product of baseline 04.00 or later (baseline %s, from %s); if it "
                    "is one, pass --s2-offset -1000 (eofm-shard build, eofm-probe; "
                    "data.s2_offset in eofm-finetune)", context,
                    decision.baseline or "unknown", decision.origin)
    return x


def looks_offset(x: np.ndarray, nodata: Sequence[float | None], threshold: int = 1000) -> bool:
    """Whether every band's smallest valid value is >= ``threshold`` (an uncorrected 04.00+
    product: even the darkest pixel of every band is 0.1 reflectance or brighter)."""
    seen = False
    for i in range(x.shape[0]):
        band = x[i]
        if nodata[i] is not None:
            band = band[~invalid_mask(band, nodata[i])]
        if band.size == 0:
            continue
        if band.min() < threshold:
            return False
        seen = True
    return seen


def summarise(entries: Iterable[tuple[str, str, str, OffsetDecision]], mode: str | int) -> dict:
    """Manifest record of the decisions: ``entries`` are ``(input, modality, item source,
    decision)``; items with the same input, modality and decision form one group that lists
    up to ``MAX_EXAMPLES`` item sources."""
    groups: dict[tuple, dict] = {}
    for src, modality, item, d in entries:
        key = (src, modality, d.offset, d.baseline, d.origin, d.status)
        g = groups.setdefault(key, {"input": src, "modality": modality, "offset": d.offset,
                                    "baseline": d.baseline, "origin": d.origin,
                                    "status": d.status, "items": 0, "examples": []})
        g["items"] += 1
        if len(g["examples"]) < MAX_EXAMPLES:
            g["examples"].append(item)
    return {"mode": str(mode), "groups": list(groups.values())}


def warn_unknown(record: dict) -> None:
    """One INFO line per build naming the inputs whose baseline is unknown (most archives:
    EuroSAT, BigEarthNet, SSL4EO without metadata). It is not a warning: the per-product check
    in :func:`correct` warns when an uncorrected product's pixels look offset (every band's
    smallest valid value >= 1000), which is what matters."""
    unknown = [g for g in record.get("groups", []) if g["status"] == "unknown"]
    if not unknown:
        return
    where = "; ".join(f"{g['input']} ({g['items']} item(s), e.g. {g['examples'][0]})"
                      for g in unknown)
    log.info("Sentinel-2 processing baseline unknown for %s: no offset correction applied "
             "(a product whose pixels look offset is warned about). If these are ESA products "
             "of baseline 04.00 or later (DN = reflectance x 10000 + 1000), pass --s2-offset "
             "-1000 (eofm-shard build, eofm-probe; data.s2_offset in eofm-finetune), or "
             "--s2-offset INPUT=-1000 for one input of a pooled build.", where)


def describe(record: dict | None) -> list[str]:
    """Readable lines for ``eofm-shard inspect`` (empty for manifests without a record)."""
    if not record:
        return []
    lines = [f"s2 offset mode {record.get('mode', '?')} (DN added to valid pixels at ingest)"]
    for g in record.get("groups", []):
        if g["status"] == "unknown" and g["baseline"]:
            shown = ("unknown (N9999)" if g["baseline"] in UNKNOWN_BASELINES
                     else g["baseline"])
            why = (f"baseline {shown} (from {g['origin']}) tells no offset: not corrected")
        elif g["status"] == "unknown":
            why = "processing baseline unknown (no metadata names it): not corrected"
        elif g["status"] == "forced":
            why = f"forced by --s2-offset (baseline {g['baseline'] or 'not looked up'})"
        else:
            why = f"baseline {g['baseline'] or '?'} ({g['status']} in {g['origin']})"
        example = f", e.g. {g['examples'][0]}" if g["examples"] else ""
        lines.append(f"  offset {int(g['offset']):+d} DN for {g['items']} item(s) of "
                     f"{g['input']}: {why}{example}")
    return lines
