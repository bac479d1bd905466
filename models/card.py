"""The generated model card (``README.md``) of an exported encoder.

A YAML metadata header (license, library, tags, datasets, and the full input contract under
``eofm``) via huggingface_hub's :class:`~huggingface_hub.ModelCardData`, then tables a person
reads: sensor and bands, normalisation, pretraining, evaluation, and how to load. A Sentinel-2
encoder's card says its pixels are offset-free DN (:data:`S2_OFFSET_NOTE`: what eofm-shard
makes of products of processing baseline 04.00 or later), beside the bands and in the snippet.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .hub_licenses import check_license_terms, listed_spelling
from .probe_table import LABELS as PROBE_LABELS
from .probe_table import METHODS as PROBE_METHODS
from .probe_table import macro_sentences, metric_keys, probe_table, ungrouped_tiles

__all__ = ["DEFAULT_LICENSE", "check_license", "public_contract", "public_path",
           "render_model_card"]

DEFAULT_LICENSE = "apache-2.0"
BASE_TAGS = ("earth-observation", "remote-sensing", "eofm", "timm", "image-feature-extraction")
MAX_EVAL_ROWS = 80
PROBE_NAMES = {"pretrained": "This encoder", "random_init": "Random init (same architecture)"}
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")
# where an input of a comma-separated list begins (a URL, a pipe: command, a local absolute
# path): the comma before one ends a URL's query or a pipe: command; any other comma may be
# part of a password, a signed query or a command, so it does not
_NEXT_INPUT = r",\s*(?:[A-Za-z][A-Za-z0-9+.-]*://|pipe:|file:|[/~]|[A-Za-z]:[\\/])"
_UNTIL_NEXT = rf"(?:(?!{_NEXT_INPUT})[\s\S])"  # one character, not where the next input begins
# a URL (not file://, a local path) anywhere: its authority ([userinfo@]host, which may hold
# commas), its path, and its query and fragment up to the next input
_URL = re.compile(rf"(?<![A-Za-z0-9+.-])(?![Ff][Ii][Ll][Ee]:)(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)"
                  rf"(?P<authority>(?:(?!{_NEXT_INPUT})[^/?#])*)(?P<path>(?:(?!{_NEXT_INPUT})"
                  rf"[^?#])*)(?:[?#]{_UNTIL_NEXT}*)?")
_PIPE = re.compile(rf"(?P<start>(?:^|,)\s*pipe:){_UNTIL_NEXT}*")  # a pipe: command input
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # the Hub's ids: apache-2.0, cc-by-4.0, mit
# the Sentinel-2 sensor ids whose shards eofm-shard writes offset-free (as
# eofm.data_shards.s2_baseline.S2_SENSORS; models imports nothing from data_shards)
S2_SENSORS = frozenset({"s2_l1c", "s2_l2a"})
S2_OFFSET_NOTE = ("Sentinel-2 pixels are offset-free DN (reflectance x 10000): from products of "
                  "processing baseline 04.00 or later (from 2022-01-25), whose DN carry +1000, "
                  "subtract 1000 from every valid pixel (nodata pixels left as they are) before "
                  "normalising, as `eofm-shard build` does (`--s2-offset auto`); older "
                  "baselines need nothing.")


def check_license(value: str) -> str:
    """``value`` if it looks like a Hub licence id (an SPDX-style lowercase token such as
    ``apache-2.0``, ``mit``, ``cc-by-4.0``, ``cc-by-nc-sa-4.0``, ``other``); else a ValueError
    naming what came and, for a mere case difference, the id meant."""
    if isinstance(value, str) and _LICENSE.match(value):
        return value
    meant = (listed_spelling(value) or (value.lower() if _LICENSE.match(value.lower()) else None)
             if isinstance(value, str) else None)
    hint = f" (did you mean {meant!r}?)" if meant else ""
    raise ValueError(f"license: expected a Hub licence id, a lowercase SPDX-style token such as "
                     f"'apache-2.0', 'mit' or 'cc-by-4.0', got {value!r}{hint}")


def _fmt(value: Any) -> str:
    """A table cell: numbers to 6 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " x ".join(_fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _leaves(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of a nested mapping as ("a / b", value); lists are left out."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix} / {k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out += _leaves(v, key)
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out.append((key, v))
    return out


def _header(config: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    """The YAML metadata block (without the --- fences)."""
    from huggingface_hub import ModelCardData  # imported on use: eofm.models stays light

    contract = config["eofm_contract"]
    pipeline = card.get("pipeline_tag") or "image-feature-extraction"
    tags = [pipeline if t == "image-feature-extraction" else t  # the task's, when fine-tuned
            for t in (*BASE_TAGS, *contract.get("sensors", []), *card.get("tags", []))]
    data = ModelCardData(
        license=check_license(card.get("license") or DEFAULT_LICENSE),
        library_name="timm",
        pipeline_tag=pipeline,
        tags=list(dict.fromkeys(tags)),
        datasets=list(card.get("datasets") or []) or None,  # Hub dataset repo ids only
        eofm={"architecture": config["architecture"], "contract": contract,
              **dict(card.get("eofm_metadata") or {})},
    )
    if card.get("license_name"):  # a licence the Hub does not list ('other')
        data.license_name = card["license_name"]
    if card.get("license_link"):
        data.license_link = card["license_link"]
    if card.get("base_model"):  # continued from a Hub model: the Hub shows the lineage
        data.base_model = card["base_model"]
        data.base_model_relation = "finetune"
    return data.to_yaml()


def _has_s2(contract: Mapping[str, Any]) -> bool:
    """Whether the contract's sensors include Sentinel-2 (alone or stacked: ``s2_l2a+s1_grd``)."""
    return any(part in S2_SENSORS for sensor in contract.get("sensors") or []
               for part in str(sensor).split("+"))


def _per_band_nodata(contract: Mapping[str, Any]) -> list[Any] | None:
    """The contract's nodata as one value per band when it has one per band (a list: the
    bands' values differ, e.g. a stacked Sentinel-2 + Sentinel-1 input); None when it has one
    number for every band, or none."""
    nodata = contract.get("nodata")
    return list(nodata) if isinstance(nodata, (list, tuple)) else None


def _nodata_by_value(bands: Sequence[str], values: Sequence[Any]) -> str:
    """Per-band nodata in words, bands grouped by value in input order: "0 for B02, B03;
    none for VV, VH"."""
    groups: dict[str, list[str]] = {}
    for b, v in zip(bands, values, strict=True):
        groups.setdefault("none" if v is None else _fmt(v), []).append(str(b))
    return "; ".join(f"{v} for {', '.join(names)}" for v, names in groups.items())


# a band at or beyond this centre wavelength (1 mm) is radar: its wavelength is the radar's and
# its "bandwidth" a polarisation code, stand-ins for a wavelength-conditioned tokenizer (the
# sensor registry's convention, eofm.data_shards.sensor_types._RADAR_MIN_WAVELENGTH_NM; models
# imports nothing from data_shards)
RADAR_MIN_WAVELENGTH_NM = 1.0e6
# IEEE radar letter bands by wavelength: (shortest wavelength in cm, letter), longest first
_RADAR_BANDS = ((30.0, "P"), (15.0, "L"), (7.5, "S"), (3.75, "C"), (2.5, "X"), (1.67, "Ku"),
                (1.11, "K"), (0.75, "Ka"))


def _is_radar(wavelength: Any) -> bool:
    """Whether a band's centre wavelength (nm) is a radar's (:data:`RADAR_MIN_WAVELENGTH_NM`)."""
    return isinstance(wavelength, (int, float)) and wavelength >= RADAR_MIN_WAVELENGTH_NM


def _radar_wavelength(nm: float) -> str:
    """A radar band's wavelength cell: the number the contract holds (what a tokenizer is
    given) and what it is, e.g. "5.54658e+07 (radar: C-band, 5.55 cm)"."""
    cm = nm / 1e7
    letter = next((f"{name}-band, " for lo, name in _RADAR_BANDS if cm >= lo), "")
    return f"{_fmt(float(nm))} (radar: {letter}{cm:.3g} cm)"


def _per_band_units(contract: Mapping[str, Any]) -> list[Any] | None:
    """The contract's units as one value per band when it has one per band (a list: the
    bands' units differ, e.g. a stacked Sentinel-2 + Sentinel-1 input's DN and dB); None
    when it has one for every band, or none."""
    units = contract.get("units")
    return list(units) if isinstance(units, (list, tuple)) else None


def _bands_section(contract: Mapping[str, Any], card: Mapping[str, Any],
                   any_bands: bool = False) -> str:
    """Sensor summary and the band table (input order; with ``any_bands``, a spectral
    encoder's: the bands it was trained on, any subset in any order accepted); with per-band
    units or nodata the table has a units or nodata column. A radar band's wavelength and
    bandwidth cells say what the stand-in numbers are (:func:`_radar_wavelength`), with a
    note under the table."""
    bands = contract.get("bands") or []
    wl = contract.get("wavelengths") or [None] * len(bands)
    bw = contract.get("bandwidths") or [None] * len(bands)
    native = card.get("native_gsd") or [None] * len(bands)
    per_band = _per_band_nodata(contract)
    units = _per_band_units(contract)
    about = [
        ("Sensor(s)", ", ".join(contract.get("sensors") or []) or "-"),
        ("Processing level", contract.get("processing_level")),
        ("Units (before normalisation)", contract.get("units") if units is None
         else "per band (see the band table)"),
        ("Nodata value", contract.get("nodata") if per_band is None
         else "per band (see the band table; - for none)"),
        ("Input GSD (m)", contract.get("gsd")),
        *([("Input GSD from the native", card["input_gsd_note"])]
          if card.get("input_gsd_note") else []),
        ("Input size (H x W, px)", contract.get("input_size")),
        ("Patch size (px)", contract.get("patch_size")),
    ]
    out = ["## Sensor and bands", "", _table(("Property", "Value"), about), ""]
    if _has_s2(contract):
        out += [S2_OFFSET_NOTE, ""]
    if not bands:
        out.append("This encoder takes any bands (wavelength-conditioned tokenizer); pass each "
                   "band's centre wavelength and bandwidth.")
        return "\n".join(out)
    radar = [_is_radar(w) for w in wl]
    rows = [(i, b, _radar_wavelength(wl[i]) if radar[i] else wl[i],
             f"{_fmt(bw[i])} (polarisation code)" if radar[i] else bw[i], contract.get("gsd"),
             native[i], *([] if units is None else [units[i]]),
             *([] if per_band is None else [per_band[i]])) for i, b in enumerate(bands)]
    out += [("Bands the encoder was trained on. It takes any subset of them, in any order "
             "(wavelength-conditioned tokenizer): pass each given band's centre wavelength and "
             "bandwidth, and normalise it with its own statistics below "
             "(`eofm.models.normalise_input(raw, c.subset(names))`)."
             if any_bands else "Bands in input channel order (the order matters):"), "",
            _table(("#", "Band", "Centre wavelength (nm)", "Bandwidth (nm)", "Input GSD (m)",
                    "Native GSD (m)", *([] if units is None else ["Units"]),
                    *([] if per_band is None else ["Nodata"])), rows)]
    if any(radar):
        out += ["", "Radar (SAR) bands have no optical wavelength or bandwidth: their two "
                "columns hold the stand-ins a wavelength-conditioned tokenizer is given, the "
                "radar wavelength in nm and, in place of a bandwidth, a code for the "
                "polarisation (not nm); `c.wavelengths` and `c.bandwidths` hold these numbers."]
    return "\n".join(out)


def _normalisation_section(contract: Mapping[str, Any]) -> str:
    """Method, the nodata rule (one value for every band, or each band's own) and per-band
    mean/std."""
    stats = contract.get("stats")
    method = contract.get("normalisation") or "unknown"
    out = ["## Normalisation", ""]
    if not stats:
        return "\n".join([*out, f"Method: `{method}`. No statistics were recorded."])
    lo, hi = ("p2", "p98") if method == "percentile" else ("mean", "std")
    rule = "(raw - p2) / (p98 - p2)" if method == "percentile" else "(raw - mean) / std"
    nodata, per_band = contract.get("nodata"), _per_band_nodata(contract)
    if per_band is not None:  # one value per band: a band's own nodata marks its pixels
        values = _nodata_by_value(contract.get("bands") or [], per_band)
        where = (f"whose value in any band is equal to its band's nodata value ({values}) "
                 "or not finite")
    elif nodata is not None:
        where = f"equal to the nodata value {_fmt(nodata)} in any band, or not finite,"
    else:
        where = "not finite in any band"
    out += [f"Method: `{method}`: `x = {rule}` per band, on raw pixel values; pixels {where} "
            "are set to 0 after normalising, and so is a band with no data at all in an image "
            "(alone, without blanking the other bands) "
            "(`eofm.models.normalise_input(raw, contract)` does both, as eofm-probe and "
            "eofm-finetune do).", ""]
    names = contract.get("bands") or list(stats)
    rows = [(b, stats[b].get(lo), stats[b].get(hi)) for b in names if b in stats]
    heads = ("P2", "P98") if method == "percentile" else ("Mean", "Std")
    return "\n".join([*out, _table(("Band", *heads), rows)])


def _pretraining_section(config: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    """Objective, data, steps and whatever else the exporter recorded."""
    contract = config["eofm_contract"]
    info = {"Architecture": config["architecture"], "Objective": contract.get("objective"),
            "Data": public_path(contract.get("data")),
            **({"Hub datasets": ", ".join(card["datasets"])} if card.get("datasets") else {}),
            **{k.replace("_", " ").capitalize(): public_path(v)
               for k, v in (card.get("pretraining") or {}).items()}}
    licence = f"`{check_license(card.get('license') or DEFAULT_LICENSE)}`"
    name, link = card.get("license_name"), card.get("license_link")
    if name:  # 'other': the licence the Hub does not list, by name (and where its text is)
        licence = f"{licence} ({name}{f', {link}' if link else ''})"
    return "\n".join(["## Pretraining", "", _table(("Setting", "Value"), list(info.items())), "",
                      f"The weights are released under {licence}; a licence for weights "
                      "should respect the licences of the pretraining data (check the "
                      "terms of each source above)."])


def _is_local_path(value: str) -> bool:
    """Whether ``value`` is a local absolute path: ``/...``, ``~...``, ``C:\\...``, ``file://``."""
    return value.startswith(("/", "~", "file:")) or bool(_WINDOWS_PATH.match(value))


def public_path(value: Any) -> Any:
    """``value``, with each local absolute path (``/...``, ``~...``, ``C:\\...``,
    ``file://...``) cut to its last part (``.../name``): an export is published, the exporter's
    folders are not. A comma-separated list of inputs (a dataset built from several sources,
    ``"/a/s1, /a/s2"``) is cut input by input (``".../s1, .../s2"``); URLs, Hub repo ids and
    relative paths are kept, a URL as ``scheme://host/path`` only (its ``user:token@``, query
    and fragment, where signed URLs carry their credentials, are never published) and a
    ``pipe:`` command (which may set secrets in its environment) as ``pipe:...``, both before
    the list is split (a password, signed query or command may hold commas:
    :func:`_without_credentials`); anything but a string comes back as it is."""
    if not isinstance(value, str):
        return value
    parts = [_public_part(p.strip()) for p in _without_credentials(value).split(",")]
    return ", ".join(".../" + PurePath(p.removeprefix("file://").replace("\\", "/")
                                        .rstrip("/")).name if _is_local_path(p) else p
                     for p in parts)


def _without_credentials(value: str) -> str:
    """``value`` (one input or a comma-separated list) with every ``pipe:`` command cut to
    ``pipe:...`` and every URL's ``user:token@``, query and fragment removed, before the
    list is split on its commas (which a password, a signed query or a command may hold: the
    part after such a comma would be published as an input of its own). A query, fragment or
    command runs to the next comma that begins another URL, ``pipe:`` command or local
    absolute path."""
    value = _PIPE.sub(lambda m: m["start"] + "...", value)
    return _URL.sub(lambda m: m["scheme"] + m["authority"].rpartition("@")[2] + m["path"], value)


def _public_part(value: str) -> str:
    """One input as published: a URL without credentials, query or fragment; ``pipe:...``."""
    if value.startswith("pipe:"):
        return "pipe:..."
    if "://" not in value or value.startswith("file:"):
        return value
    url = urlsplit(value)
    return urlunsplit((url.scheme, url.netloc.rpartition("@")[2], url.path, "", ""))


def public_contract(contract: Mapping[str, Any]) -> dict[str, Any]:
    """A contract dict (``InputContract.to_dict``) as published: its ``data`` through
    :func:`public_path`. config.json (:func:`eofm.models.hub.encoder_config`) and the card's
    metadata and text all carry this form."""
    return {**contract, "data": public_path(contract.get("data"))} if "data" in contract \
        else dict(contract)


def _is_probe_report(evaluation: Mapping[str, Any]) -> bool:
    """Whether ``evaluation`` is an eofm-probe report.json (its three methods' subtrees)."""
    return all(isinstance(evaluation.get(m), Mapping) and isinstance(evaluation[m].get("linear"),
                                                                     Mapping)
               for m in PROBE_METHODS)


def _probe_section(report: Mapping[str, Any]) -> list[str]:
    """An eofm-probe report as eofm-probe prints it: per method (the encoder, random init,
    per-band statistics), linear probe and kNN, mean ± std over folds (the table of
    :func:`eofm.models.probe_table.probe_table`, which eofm-probe's report uses too), under it
    the classes multi-label macro-mAP left out (:func:`~.probe_table.macro_sentences`, as
    report.md gives them), then how its data differed from the input contract (:func:`_preprocess_lines`: e.g. another
    processing level or other statistics than the encoder was trained on)."""
    data = report.get("data") if isinstance(report.get("data"), Mapping) else {}
    a = metric_keys(report)[0]
    stats = report.get("band_stats_features") or ["mean", "std"]
    names = {**PROBE_NAMES, "band_stats": f"Band statistics (per-band {', '.join(stats)}; "
                                          "no encoder)"}
    header, rows = probe_table(report, names=names, capitalise=True,
                               seeds_name="Random init, {n} seeds (range of means)")
    source = data.get("source")
    if isinstance(source, str) and "://" not in source:  # a local folder: its name only
        source = PurePath(source.replace("\\", "/").rstrip("/")).name
    elif isinstance(source, str):  # a URL: without its credentials
        source = public_path(source)
    what = [f"{data['samples']} samples" if data.get("samples") else None,
            f"{len(data['classes'])} classes" if data.get("classes") else None,
            ("scored on a fixed test set" if report.get("test_data") else
             f"{report['folds']}-fold cross-validation" if report.get("folds") else None),
            _ungrouped_tiles(report),
            f"features: `{report['pool']}` pooling" if report.get("pool") else None]
    intro = (f"`eofm-probe` on `{source or 'labelled data'}` ("
             + ", ".join(w for w in what if w) + ")"
             + ("" if report.get("test_data") else ", mean ± sample std (n - 1) over folds")
             + "; the encoder beside "
             "a random-init encoder of the same architecture and a linear/kNN probe on per-band "
             "statistics of the raw pixels (no encoder)." + _dropped_samples(data))
    out = [intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
           *["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]]
    for sentence in macro_sentences(report):  # classes macro-mAP left out, as report.md says
        out += ["", sentence]
    paired = report.get("paired") if isinstance(report.get("paired"), Mapping) else {}
    lines = []
    for base, pr in paired.items():  # fold by fold: the folds' shared spread cancels
        lin = pr.get("linear") if isinstance(pr, Mapping) else None
        if isinstance(lin, Mapping) and {"mean", "std", "won", "tied", "lost"} <= lin.keys():
            n = lin["won"] + lin["tied"] + lin["lost"]
            lines.append(f"- minus `{base}`: {lin['mean']:+.3f} ± {lin['std']:.3f}; won "
                         f"{lin['won']}, tied {lin['tied']}, lost {lin['lost']} of {n} folds")
    if lines:
        out += ["", f"This encoder against each baseline on the same folds (linear "
                f"{PROBE_LABELS.get(a, a)}, per-fold differences):", "", *lines]
    if report.get("override_contract"):
        out += ["", "Evaluated with `--override-contract`: the data did not satisfy the input "
                "contract (see the report's `preprocess.overridden`)."]
    return [*out, *_preprocess_lines(report)]


def _ungrouped_tiles(report: Mapping[str, Any]) -> str | None:
    """The intro's flag of cross-validation folds drawn tile by tile over tiles of fewer
    images (:func:`~.probe_table.ungrouped_tiles`, as eofm-probe's table title says); None
    otherwise or for an older report."""
    if not ungrouped_tiles(report):
        return None
    return (f"**`--no-group-tiles`: tiles of {report['source_images']} images split tile by "
            "tile, tiles of one image on both sides of splits: optimistic**")


def _dropped_samples(data: Mapping[str, Any]) -> str:
    """A sentence on the tiles the probe data's build dropped (report.json
    ``data.dropped_samples``: per reason a count), "" when none; the counts only (the note
    names a local path)."""
    dropped = data.get("dropped_samples")
    if not isinstance(dropped, Mapping):
        return ""
    counts = {k: v for k, v in dropped.items() if isinstance(v, int) and v > 0}
    if not counts:
        return ""
    why = ", ".join(f"{n} for {reason}" for reason, n in counts.items())
    return (f" The data's build dropped {sum(counts.values())} tile(s) ({why}): they are not "
            "among the samples.")


# what eofm-probe's report.json lists under "preprocess" (and "test_preprocess"), as it prints
# them; the differences that would have refused the data first
PREPROCESS_LABELS = (("overridden", "OVERRIDDEN contract difference"), ("notes", "note"),
                     ("fixed", "fixed by preprocessing"))


def _preprocess_lines(report: Mapping[str, Any]) -> list[str]:
    """How the probe's data differed from the encoder's input contract, as its report
    records it (``preprocess`` and, with a fixed test set, ``test_preprocess``: the
    differences overridden, noted and fixed by preprocessing), one bullet each; a line saying
    there were none when every list is empty; nothing for a report without that record."""
    items: list[str] = []
    recorded = False
    for key, which in (("preprocess", ""), ("test_preprocess", "test set ")):
        pre = report.get(key)
        if not isinstance(pre, Mapping):
            continue
        for field, label in PREPROCESS_LABELS:
            found = pre.get(field)
            if isinstance(found, (list, tuple)):
                recorded = True
                items += [f"- {which}{label}: {' '.join(str(p).split())}" for p in found]
    if items:
        return ["", "How the evaluation data differed from this encoder's input contract "
                "(eofm-probe's preprocessing record; the scores above are of the data so "
                "preprocessed):", "", *items]
    if recorded:
        return ["", "The evaluation data satisfied this encoder's input contract (eofm-probe "
                "recorded no difference)."]
    return []


def _evaluation_section(evaluation: Mapping[str, Any] | None) -> str:
    """Evaluation numbers: an eofm-probe report as its table, any other mapping flattened to
    rows (local absolute paths cut); a note when there are none. Anything but a mapping is a
    ValueError."""
    out = ["## Evaluation", ""]
    if evaluation is not None and not isinstance(evaluation, Mapping):
        raise ValueError(f"evaluation: expected a mapping of names to numbers (a JSON object "
                         f"such as eofm-probe's report.json), got a {type(evaluation).__name__}")
    if evaluation and _is_probe_report(evaluation):
        return "\n".join([*out, *_probe_section(evaluation)])
    rows = [(k, public_path(v)) for k, v in _leaves(evaluation or {})]
    if not rows:
        return "\n".join([*out, "No evaluation numbers were recorded with this export "
                          "(run `eofm-probe --encoder THIS_FOLDER --data LABELLED_DATA`)."])
    more = len(rows) - MAX_EVAL_ROWS
    out.append(_table(("Metric", "Value"), rows[:MAX_EVAL_ROWS]))
    if more > 0:
        out.append(f"\n({more} more values in the evaluation report.)")
    return "\n".join(out)


def _timm_loads(architecture: str) -> bool:
    """Whether ``timm.create_model`` builds config.json's ``architecture`` with eofm's
    entrypoint: ``vit_*`` and ``eofm_resnet50`` do; a bare ``resnet50`` (older ResNet exports)
    is timm's own model."""
    from timm.models import is_model, model_entrypoint

    from . import registry

    return is_model(architecture) and model_entrypoint(architecture).__module__ == registry.__name__


# the repo id the card's snippets name when the export names none (not pushed): a placeholder
# the card says to replace, beside the local-folder forms that load the folder itself
REPO_PLACEHOLDER = "ORG/NAME"
LOCAL_FOLDER = "path/to/this/folder"


def _example_input(contract: Mapping[str, Any]) -> list[str]:
    """The snippet's example batch ``raw``: 2 images of raw pixels (B, C, H, W) at
    ``c.input_size``, bands in ``c.bands`` order, float32 values drawn from each band's own
    statistics (around its mean within its std; for percentile normalisation between its p2
    and p98), so that normalising gives inputs of the scale the encoder saw, in the band's
    units (a SAR band's negative dB too) and clear of a nodata value such as 0. A contract
    without the statistics it normalises with gives standard-normal values (and the snippet
    no normalisation: :func:`_usage_section`)."""
    head = ["# an example batch in place of your pixels: 2 images of raw values (B, C, H, W) "
            "at c.input_size,", "# bands in c.bands order, drawn from each band's statistics "
            "(its units, no nodata); use your own"]
    if _normalises(contract) and contract.get("normalisation") == "percentile":
        draw = ('c.stats[b]["p2"] + (c.stats[b]["p98"] - c.stats[b]["p2"]) '
                "* torch.rand(2, *c.input_size)")
    elif _normalises(contract):
        draw = 'c.stats[b]["mean"] + c.stats[b]["std"] * torch.randn(2, *c.input_size)'
    else:
        return [*head[:1], "# bands in c.bands order; use your own, normalised as the "
                "pretraining data was", "raw = torch.randn(2, len(c.bands), *c.input_size)"]
    return [*head, f"raw = torch.stack([{draw} for b in c.bands], dim=1)"]


def _normalises(contract: Mapping[str, Any]) -> bool:
    """Whether the contract holds what :func:`eofm.models.normalise_input` normalises with:
    bands, a known method and each band's statistics of that method."""
    keys = {"meanstd": ("mean", "std"), "percentile": ("p2", "p98")}.get(
        contract.get("normalisation") or "meanstd")
    stats, bands = contract.get("stats") or {}, contract.get("bands") or []
    return bool(keys and bands) and all(
        isinstance(stats.get(b), Mapping) and all(isinstance(stats[b].get(k), (int, float))
                                                  for k in keys) for b in bands)


def _where_from(repo_id: str | None, timm_loads: bool) -> list[str]:
    """The paragraph before the snippets: what ``ORG/NAME`` stands for when the export names
    no Hub repo, and the local-folder forms that load this folder itself (timm's when timm
    builds the architecture: :func:`_timm_loads`)."""
    local = f'`eofm.models.from_pretrained("{LOCAL_FOLDER}")`' + (
        f', or with timm `timm.create_model("local-dir:{LOCAL_FOLDER}", pretrained=True)`'
        if timm_loads else "")
    if repo_id:
        return [f"A copy of this folder loads the same way, offline: {local}.", ""]
    return [f"This export names no Hub repo (it was not pushed with `--push-to-hub`): replace "
            f"`{REPO_PLACEHOLDER}` below with the repo you upload this folder to, or load the "
            f"folder itself, offline: {local}.", ""]


def _usage_section(config: Mapping[str, Any], repo_id: str | None) -> str:
    """How to load with eofm and with timm, and how to check inputs. The eofm snippet runs as
    it is (once ``ORG/NAME`` names the repo: :func:`_where_from`): it makes an example batch
    (:func:`_example_input`), normalises it and prints the features' shape."""
    contract = config["eofm_contract"]
    repo = repo_id or REPO_PLACEHOLDER
    args = config.get("model_args", {})
    kwargs = (["wavelengths=torch.tensor(c.wavelengths)", "bandwidths=torch.tensor(c.bandwidths)"]
              if args.get("tokenizer") == "spectral" else [])
    gsd_pos = bool(args.get("gsd_pos"))
    if gsd_pos:  # GSD-scaled positions: the call says which GSD x has
        kwargs.append("gsd=GSD")
    call = f"encoder(x{''.join(', ' + k for k in kwargs)})"
    timm_loads = _timm_loads(config["architecture"])
    where = ("  # ORG/NAME: the repo of this folder (see above)" if not repo_id
             else "  # or this folder's path, offline")
    normalise = (["x = eofm.models.normalise_input(raw, c)  # per-band statistics; nodata "
                  "pixels -> 0"] if _normalises(contract) else
                 ["x = raw  # this export records no statistics to normalise with"])
    return "\n".join([
        "## How to load", "", *_where_from(repo_id, timm_loads),
        "```python",
        "import torch",
        "import eofm.models",
        "",
        f'encoder = eofm.models.from_pretrained("{repo}"){where}',
        "c = encoder.contract  # bands, wavelengths, GSD, statistics, input size",
        *_example_input(contract),
        *(["# Sentinel-2: offset-free DN; subtract 1000 from the valid pixels of products of",
           "# processing baseline 04.00 or later first (see Sensor and bands)"]
          if _has_s2(contract) else []),
        *normalise,
        *(["GSD = c.gsd  # m per pixel of x (c.gsd: the training input's); positions scale "
           "with it (GSD-aware), so give your data's GSD when it differs (left out: c.gsd)"]
          if gsd_pos else []),
        "with torch.no_grad():",
        f"    features = {call}  # (B, D)",
        f"print(features.shape)  # torch.Size([2, {config['num_features']}])",
        "```", "",
        *([] if not timm_loads else [
            "With timm (after `import eofm.models`, which registers the architectures; a bare "
            "`import eofm` does not):", "",
            "```python",
            "import timm",
            "import eofm.models",
            "",
            f'encoder = timm.create_model("hf-hub:{repo}", pretrained=True)',
            "print(encoder.contract.bands)  # the input contract, as above",
            "```", ""]),
        "`eofm.models.check_input(encoder.contract, bands=..., size=..., stats=...)` lists every "
        "difference between your data and what the encoder expects (band order, statistics, "
        "size, GSD).",
    ])


def _pictures_section(pictures: Sequence[tuple[str, str]]) -> str:
    """Pictures shipped beside the weights, each with its caption."""
    out = ["## Pictures"]
    for name, caption in pictures:
        out += ["", f"{caption}:", "", f"![{name.removesuffix('.png')}]({name})"]
    return "\n".join(out)


def render_model_card(config: Mapping[str, Any], card: Mapping[str, Any] | None = None) -> str:
    """README.md text for an export whose ``config.json`` content is ``config``.

    ``card`` (all optional): title, license (a Hub licence id, default apache-2.0; see
    :func:`check_license`), license_name and license_link (a licence the Hub does not list,
    with license ``other``: :mod:`eofm.models.hub_licenses`), datasets (Hub dataset repo ids ``ORG/NAME`` for the metadata,
    never local folder names: the Hub links them), tags, repo_id, base_model (the Hub repo
    a continued pretraining started from: ``base_model`` metadata), native_gsd (per band),
    input_gsd_note (how the contract's input GSD, that of the pixels the encoder was trained on,
    follows from the native GSD when pretraining resampled them),
    pretraining (a flat mapping shown as a table), evaluation (nested mapping of numbers),
    pictures (``(file name, caption)`` pairs of PNGs beside the card), pipeline_tag (default
    image-feature-extraction), eofm_metadata (more keys of the ``eofm`` metadata), extra_state_note
    (what the extra tensors are for; default: continuing pretraining), sections (markdown
    sections placed after the summary, e.g. a fine-tuned task's), fixed_bands (true: the
    export takes its bands in their order even with a spectral tokenizer, as a fine-tuned
    model recorded with the bands it was trained on does).
    """
    card = dict(card or {})
    card["license_name"], card["license_link"] = check_license_terms(  # a card may be rendered on its own
        check_license(card.get("license") or DEFAULT_LICENSE), card.get("license_name"),
        card.get("license_link"))
    config = {**config, "eofm_contract": public_contract(config["eofm_contract"])}
    contract = config["eofm_contract"]
    repo_id = card.get("repo_id") or None  # none: the card names ORG/NAME
    arch = str(config["architecture"])
    title = card.get("title") or f"eofm {arch.removeprefix('eofm_')}"
    summary = (f"A `{config['architecture']}` Earth-observation encoder"
               f"{' pretrained with ' + contract['objective'] if contract.get('objective') else ''}"
               f"{' on ' + str(public_path(contract['data'])) if contract.get('data') else ''}, "
               f"exported by eofm "
               f"{config.get('eofm_version', '')}. It returns {config['num_features']}-d features "
               f"(`{config['global_pool']}` pooling). The input contract below is also in "
               "`config.json` (`eofm_contract`) and in this card's metadata (`eofm.contract`).")
    if config.get("extra_state"):
        note = card.get("extra_state_note") or "for continuing pretraining"
        summary += f" The weights also hold {', '.join(config['extra_state'])} tensors, {note}."
    parts = [f"---\n{_header(config, card)}\n---", f"# {title}", summary,
             *card.get("sections", ()),
             _bands_section(contract, card,
                            config.get("model_args", {}).get("tokenizer") == "spectral"
                            and not card.get("fixed_bands")),
             _normalisation_section(contract),
             _pretraining_section(config, card), _evaluation_section(card.get("evaluation")),
             *([_pictures_section(card["pictures"])] if card.get("pictures") else []),
             _usage_section(config, repo_id)]
    return "\n\n".join(parts) + "\n"
