"""``eofm-shard preview``: the first samples of a dataset -> one PNG contact sheet + JSON sidecar.

The most common silent failures (wrong band order, wrong normalisation statistics, nodata
and clouds trained on) are obvious in a picture. One job: read the first ``samples`` samples
in manifest/shard order (no shuffle) of a tar-shard or zarr dataset, render each modality's
tiles with display bands chosen *by name* from the sensor registry, and lay them out on a grid.

Display bands (:func:`choose_display`), first rule that applies:

1. ``true colour``: the sensor's bands described (or named/aliased) ``red``, ``green`` and
   ``blue`` in the registry, e.g. Sentinel-2 B04/B03/B02, Landsat-8/9 B4/B3/B2, RGB R/G/B.
2. ``SAR false colour``: a dual-polarisation SAR sensor (bands VV and VH, or HH and HV, in
   ``dB``): channels (co, cross, co - cross), e.g. (VV, VH, VV-VH).
3. ``true colour (nearest 650/560/470 nm)``: any optical sensor whose bands are not named red,
   green and blue (Landsat Collection 2 Level-2 SR_B4/SR_B3/SR_B2, a user-defined sensor;
   ``hyperspectral true colour`` for the registry's ``hsi`` modality, EnMAP): the three
   distinct bands with data whose centre wavelengths are nearest 650/560/470 nm (each within
   50 nm).
4. ``grey``: otherwise the first band of the dataset.

Only bands the dataset holds are used; ``bands=`` overrides with 1 (grey) or 3 (R, G, B)
names, validated against the dataset's bands (aliases accepted).

Stretch (:func:`band_stretch`): each display band is mapped linearly from the manifest's
statistics of that band to 0..255, i.e. what the normalisation sees: ``p2..p98`` when the
manifest has them; otherwise the available percentiles nearest 2 (below p50) and 98 (above
p50); otherwise ``min..max``; a band without statistics uses the shown tiles' valid-pixel
min..max. The SAR difference channel, which the manifest has no statistics for, uses p2..p98
of the shown tiles' valid pixels. A value ``v`` becomes ``floor(255 * clip((v - low) /
(high - low), 0, 1) + 0.5)`` (``high <= low``: ``v >= high`` gives 255, anything else 0).

Pixels whose ``valid`` mask is false (nodata, or clouds folded in by ``build
--cloud-as-nodata``), or where a shown band is non-finite or equals its nodata value, are
drawn in :data:`MAGENTA`.

Layout (:func:`compose`): one block of rows per modality, in manifest order (or only
``modality``); within a block tile ``i`` sits at row ``i // cols``, column ``i % cols``;
samples are paired by key across blocks (sample ``i`` is at the same place in every block).
Cells are the block's largest tile (or ``size`` x ``size`` with nearest resampling); smaller
tiles sit top-left on the dark background. :data:`GAP` px of background separate cells and
frame the sheet; :data:`BLOCK_GAP` px separate blocks. Sheet width is the widest block's
``GAP + ncols * (cell_w + GAP)`` with ``ncols = min(cols, samples)``; a block's height is
``rows * (cell_h + GAP)``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checks import is_zarr, open_manifest
from .manifest import Manifest, ModalityInfo, atomic_write_text, manifest_location
from .outputs import unwritable_reason
from .png import write_png
from .sensor_types import _RADAR_MIN_WAVELENGTH_NM
from .sensors import SAR_POLARISATION_CODES, Sensor, get_sensor

MAGENTA = (255, 0, 255)
BACKGROUND = (32, 32, 32)
GAP = 2
BLOCK_GAP = 6
HSI_TARGETS_NM = (650.0, 560.0, 470.0)
HSI_TOLERANCE_NM = 50.0
WANT_PERCENTILES = (2.0, 98.0)
SAR_PAIRS = (("VV", "VH"), ("HH", "HV"))


@dataclass(frozen=True)
class Channel:
    """One display channel: band ``plus``, or ``plus - minus`` (SAR ratio in dB)."""

    plus: str
    minus: str | None = None

    @property
    def name(self) -> str:
        return self.plus if self.minus is None else f"{self.plus}-{self.minus}"

    def values(self, x: np.ndarray, bands: list[str]) -> np.ndarray:
        """``(H, W)`` float64 values of this channel from ``x: (C, H, W)`` in ``bands`` order."""
        v = x[bands.index(self.plus)].astype(np.float64)
        if self.minus is not None:
            v = v - x[bands.index(self.minus)].astype(np.float64)
        return v


@dataclass(frozen=True)
class Stretch:
    """Linear map of ``low..high`` to 0..255 for one channel; ``source`` says where from."""

    band: str
    low: float
    high: float
    source: str


@dataclass
class Display:
    """How one modality is drawn: its rule, channels (1 grey or 3 RGB) and their stretches."""

    modality: str
    sensor: str
    mode: str
    channels: list[Channel]
    stretches: list[Stretch] = field(default_factory=list)
    wavelengths_nm: list[float | None] = field(default_factory=list)


def _colour_bands(sensor: Sensor, have: list[str]) -> list[str] | None:
    """The dataset's bands the registry calls red, green, blue (description, name or alias)."""
    out = []
    for colour in ("red", "green", "blue"):
        hit = [b.name for b in sensor.bands if b.name in have and colour in
               {b.description.strip().lower(), b.name.lower(), *(a.lower() for a in b.aliases)}]
        if not hit:
            return None
        out.append(hit[0])
    return out


def _sar_pair(sensor: Sensor, have: list[str]) -> tuple[str, str] | None:
    """(co, cross) polarisations of a dual-pol SAR sensor in dB, when the dataset holds both."""
    names = {b.name: b for b in sensor.bands if b.name in SAR_POLARISATION_CODES}
    for co, cross in SAR_PAIRS:
        if all(p in names and p in have and names[p].units == "dB" for p in (co, cross)):
            return co, cross
    return None


def _nearest_rgb_bands(sensor: Sensor, info: ModalityInfo) -> list[str] | None:
    """Three distinct optical bands with data nearest :data:`HSI_TARGETS_NM` (each within
    :data:`HSI_TOLERANCE_NM`), or None."""
    usable = [b for b in sensor.bands if b.name in info.bands
              and b.center_wavelength_nm < _RADAR_MIN_WAVELENGTH_NM
              and (info.stats.get(b.name, {}).get("count") or 0) > 0]
    out = []
    for target in HSI_TARGETS_NM:
        best = min(usable, key=lambda b: abs(b.center_wavelength_nm - target), default=None)
        if best is None or abs(best.center_wavelength_nm - target) > HSI_TOLERANCE_NM:
            return None
        out.append(best.name)
    return out if len(set(out)) == 3 else None


def choose_display(name: str, info: ModalityInfo, override: list[str] | None = None) -> Display:
    """Display channels for modality ``name`` (rules in the module docstring)."""
    sensor = get_sensor(info.sensor)
    if override is not None:
        bands = _validate_override(name, info, sensor, override)
        mode = "bands override" if len(bands) == 3 else "bands override (grey)"
        display = Display(name, info.sensor, mode, [Channel(b) for b in bands])
    elif (rgb := _colour_bands(sensor, info.bands)) is not None:
        display = Display(name, info.sensor, "true colour", [Channel(b) for b in rgb])
    elif (pair := _sar_pair(sensor, info.bands)) is not None:
        display = Display(name, info.sensor, "SAR false colour",
                          [Channel(pair[0]), Channel(pair[1]), Channel(*pair)])
    elif (near := _nearest_rgb_bands(sensor, info)) is not None:
        kind = "hyperspectral true colour" if sensor.modality == "hsi" else "true colour"
        display = Display(name, info.sensor, f"{kind} (nearest "
                          + "/".join(f"{t:g}" for t in HSI_TARGETS_NM) + " nm)",
                          [Channel(b) for b in near])
    else:
        display = Display(name, info.sensor, "grey (first band)", [Channel(info.bands[0])])
    display.wavelengths_nm = [None if c.minus else sensor.band(c.plus).center_wavelength_nm
                              for c in display.channels]
    return display


def _validate_override(name: str, info: ModalityInfo, sensor: Sensor,
                       override: list[str]) -> list[str]:
    if len(override) not in (1, 3):
        raise ValueError(f"--bands for modality {name}: expected 1 (grey) or 3 (red, green, "
                         f"blue) band names, got {len(override)}: {','.join(override)}")
    out = []
    for b in override:
        try:
            canon = sensor.canonical(b)
        except ValueError:
            canon = b
        if canon not in info.bands:
            raise ValueError(f"--bands for modality {name}: no band {b!r} in the dataset "
                             f"(it has {', '.join(info.bands)})")
        out.append(canon)
    return out


def band_stretch(band: str, stats: dict[str, Any]) -> Stretch | None:
    """Stretch of ``band`` from its manifest statistics (None when it has none; see module
    docstring for the order of preference)."""
    pct = {float(m.group(1)): float(v) for k, v in stats.items()
           if (m := re.fullmatch(r"p(\d+(?:\.\d+)?)", k)) and isinstance(v, (int, float))}
    lows = [q for q in pct if q < 50]
    highs = [q for q in pct if q > 50]
    if lows and highs:
        lo = min(lows, key=lambda q: abs(q - WANT_PERCENTILES[0]))
        hi = min(highs, key=lambda q: abs(q - WANT_PERCENTILES[1]))
        return Stretch(band, pct[lo], pct[hi], f"p{lo:g}..p{hi:g}")
    if isinstance(stats.get("min"), (int, float)) and isinstance(stats.get("max"), (int, float)):
        return Stretch(band, float(stats["min"]), float(stats["max"]), "min..max")
    return None


def _shown_values(display: Display, channel: Channel, info: ModalityInfo,
                  samples: list[dict]) -> np.ndarray:
    vals = []
    for s in samples:
        v = channel.values(s[display.modality], info.bands)
        vals.append(v[~_invalid(s, display, info)])
    return np.concatenate(vals) if vals else np.zeros(0)


def fit_stretches(display: Display, info: ModalityInfo, samples: list[dict]) -> None:
    """Fill ``display.stretches``: manifest statistics, else the shown tiles' pixels."""
    display.stretches = []
    for ch in display.channels:
        st = band_stretch(ch.plus, info.stats.get(ch.plus, {})) if ch.minus is None else None
        if st is None:
            v = _shown_values(display, ch, info, samples)
            if ch.minus is not None and v.size:
                lo, hi = np.percentile(v, WANT_PERCENTILES)
                st = Stretch(ch.name, float(lo), float(hi), "p2..p98 of the shown tiles")
            elif v.size:
                st = Stretch(ch.name, float(v.min()), float(v.max()), "min..max of the shown tiles")
            else:
                st = Stretch(ch.name, 0.0, 1.0, "none (no valid pixel shown)")
        display.stretches.append(st)


def to_uint8(v: np.ndarray, low: float, high: float) -> np.ndarray:
    """``floor(255 * clip((v - low) / (high - low), 0, 1) + 0.5)``; non-finite -> 0."""
    if high > low:
        t = np.clip((v - low) / (high - low), 0.0, 1.0)
    else:
        t = (v >= high).astype(np.float64)
    return np.floor(np.nan_to_num(t, nan=0.0) * 255.0 + 0.5).astype(np.uint8)


def _invalid(sample: dict, display: Display, info: ModalityInfo) -> np.ndarray:
    """``(H, W)`` mask drawn magenta: not valid, or a shown band non-finite or at nodata."""
    x = sample[display.modality]
    bad = ~sample[f"{display.modality}_valid"].astype(bool)
    for ch in display.channels:
        for b in (ch.plus, ch.minus):
            if b is None:
                continue
            i = info.bands.index(b)
            band = x[i]
            if np.issubdtype(band.dtype, np.floating):
                bad = bad | ~np.isfinite(band)
            nd = info.nodata[i] if i < len(info.nodata) else None
            if nd is not None:
                bad = bad | (band == np.asarray(nd).astype(band.dtype))
    return bad


def render(sample: dict, display: Display, info: ModalityInfo) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of one sample's modality (grey repeated to RGB)."""
    chans = [to_uint8(ch.values(sample[display.modality], info.bands), s.low, s.high)
             for ch, s in zip(display.channels, display.stretches, strict=True)]
    img = np.stack(chans * 3 if len(chans) == 1 else chans, axis=-1)
    img[_invalid(sample, display, info)] = MAGENTA
    return img


def resize_nearest(img: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` -> ``(size, size, 3)``, nearest: output pixel ``i`` takes source
    ``floor((i + 0.5) * H / size)``."""
    h, w = img.shape[:2]
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
    return img[np.ix_(rows, cols)]


@dataclass
class Placement:
    """Where one tile sits: block (modality), grid row/column in the block, pixel box."""

    modality: str
    index: int
    row: int
    col: int
    x: int
    y: int
    w: int
    h: int


def compose(blocks: dict[str, list[np.ndarray]], cols: int, size: int | None = None,
            min_size: int | None = None) -> tuple[np.ndarray, list[Placement]]:
    """Lay out ``{modality: [(H, W, 3) tiles]}`` on one sheet (layout in the module docstring);
    ``min_size``: every tile resampled to the widest tile's size, at least this."""
    if size is None and min_size is not None:
        size = max(min_size, max(t.shape[1] for tiles in blocks.values() for t in tiles))
    geo, width, height = [], 0, 0
    for i, (mod, tiles) in enumerate(blocks.items()):
        if size is not None:
            tiles = [resize_nearest(t, size) for t in tiles]
        ch = size or max(t.shape[0] for t in tiles)
        cw = size or max(t.shape[1] for t in tiles)
        ncols, nrows = min(cols, len(tiles)), math.ceil(len(tiles) / cols)
        top = GAP if i == 0 else height + BLOCK_GAP - GAP
        geo.append((mod, tiles, top, ch, cw))
        width = max(width, GAP + ncols * (cw + GAP))
        height = top + nrows * (ch + GAP)
    sheet = np.empty((height, width, 3), np.uint8)
    sheet[:] = BACKGROUND
    placed = []
    for mod, tiles, top, ch, cw in geo:
        for k, t in enumerate(tiles):
            r, c = divmod(k, cols)
            x, y = GAP + c * (cw + GAP), top + r * (ch + GAP)
            sheet[y:y + t.shape[0], x:x + t.shape[1]] = t
            placed.append(Placement(mod, k, r, c, x, y, t.shape[1], t.shape[0]))
    return sheet, placed


def read_samples(dataset: str | Path, modalities: list[str], n: int) -> list[dict]:
    """The first ``n`` samples in manifest/shard order, with ``meta`` where stored; an
    unlabelled sample of a labelled dataset without ``label`` (``missing_labels="absent"``),
    so it is shown unlabelled, not as class -1 or an empty class list."""
    if is_zarr(dataset):
        from .zarr_store import ZarrDataset

        ds = ZarrDataset(dataset, missing_labels="absent")
        metas = Path(dataset) / "meta.jsonl"
        lines = metas.read_text().splitlines() if metas.exists() else []
        out = []
        for i in range(min(n, len(ds))):
            s = ds[i]
            if i < len(lines):
                s["meta"] = json.loads(lines[i])
            out.append(s)
        return out
    from .reader import ShardDataset

    ds = ShardDataset(dataset, modalities=modalities, shuffle_shards=False, shuffle_buffer=0,
                      rank=0, world_size=1, even=False, errors="strict", with_meta=True,
                      missing_labels="absent")
    return list(itertools.islice(ds, n))


def _label_fields(sample: dict, m: Manifest) -> dict[str, Any]:
    if "label" not in sample or m.labels is None:
        return {}
    lab = np.asarray(sample["label"])
    if m.labels.kind == "class" and lab.ndim == 0:
        i = int(lab)
        return {"label": i, "label_names": [m.labels.classes[i]]
                if 0 <= i < len(m.labels.classes) else []}
    if m.labels.kind == "multilabel" and lab.ndim == 1:
        idx = [int(i) for i in np.flatnonzero(lab)]
        return {"label": idx, "label_names": [m.labels.classes[i] for i in idx
                                              if i < len(m.labels.classes)]}
    return {"label": lab.tolist()}


def parse_bands(values: list[str] | None) -> list[str] | dict[str, list[str]] | None:
    """``--bands`` values: ``["B08,B04,B03"]`` -> a list for the one modality shown;
    ``["s2=B04,B03,B02", "s1=VV"]`` -> per modality."""
    if not values:
        return None

    def names(text: str) -> list[str]:
        return [n.strip() for n in text.split(",") if n.strip()]

    if len(values) == 1 and "=" not in values[0]:
        return names(values[0])
    bad = [v for v in values if "=" not in v]
    if bad:
        raise ValueError(f"--bands: expected MOD=B1,B2,B3 when given more than once, got {bad[0]!r}")
    out: dict[str, list[str]] = {}
    for mod, rest in (v.split("=", 1) for v in values):
        if mod.strip() in out:  # the second would silently replace the first
            raise ValueError(f"--bands: modality {mod.strip()!r} given twice; give each "
                             "modality's bands once")
        out[mod.strip()] = names(rest)
    return out


def _parse_override(bands: list[str] | dict[str, list[str]] | None,
                    modalities: list[str]) -> dict[str, list[str]]:
    if bands is None:
        return {}
    if isinstance(bands, dict):
        unknown = [k for k in bands if k not in modalities]
        if unknown:
            raise ValueError(f"--bands: modality {unknown[0]!r} is not shown (shown: "
                             f"{', '.join(modalities)})")
        return dict(bands)
    if len(modalities) != 1:
        raise ValueError(f"--bands: the preview shows modalities {', '.join(modalities)}; "
                         "name one with --modality or write --bands MOD=B1,B2,B3")
    return {modalities[0]: list(bands)}


MAX_TILE_PX = 2048  # --size: larger tiles make sheets of gigabytes, not pictures to look at


def _check_sensors_known(m: Manifest, mods: list[str], source: str) -> None:
    """A ValueError naming ``source`` (the manifest's path or URL, or the zarr store) and the
    field ``modalities.<name>.sensor`` when the sensor of one of ``mods`` is not registered,
    saying how to provide a user-defined one. Unknown ids are not refused when the manifest is
    read: a user sensor may be registered afterwards (``--sensors-yaml``)."""
    from .remote import redact

    for name in mods:
        try:
            get_sensor(m.modalities[name].sensor)
        except ValueError as e:
            raise ValueError(
                f"{redact(source)}: modalities.{name}.sensor: {e}; for a user-defined sensor, "
                "pass its sensors YAML (`eofm-shard preview --sensors-yaml FILE`) or rebuild "
                "the dataset with `eofm-shard build --sensors-yaml FILE`, which records it in "
                "the manifest (extra.user_sensors)") from None


def preview(dataset: str | Path, out: str | Path, *, samples: int = 16,
            modality: str | None = None, bands: list[str] | dict[str, list[str]] | None = None,
            cols: int = 8, size: int | None = None) -> dict[str, Any]:
    """Write the contact sheet ``out`` (PNG) and ``out`` with ``.json`` (the returned report:
    display bands and stretch per modality, and every tile's key, labels, cloud fraction and
    grid position, in grid order)."""
    for what, v in (("--samples", samples), ("--cols", cols), ("--size", size)):
        if v is not None and (not isinstance(v, int) or v <= 0):
            raise ValueError(f"{what}: expected a positive integer, got {v!r}")
    if size is not None and size > MAX_TILE_PX:  # the sheet is held in memory, 3 bytes a pixel
        raise ValueError(f"--size: expected at most {MAX_TILE_PX} pixels per tile (a contact "
                         f"sheet to look at), got {size}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out: expected a .png file name, got {str(out)!r}")
    if reason := unwritable_reason(out.parent, try_making=True):  # before any sample is read
        raise ValueError(f"--out {out}: {reason}; expected a .png file in a folder this job "
                         "can write (it is made when missing)")
    loc = str(dataset)
    if "://" not in loc and not Path(loc).exists():
        raise FileNotFoundError(f"{loc}: no such dataset; expected a folder written by "
                                "`eofm-shard build` (shards + manifest.json) or a .zarr store")
    m = open_manifest(dataset)
    if modality is not None and modality not in m.modalities:
        raise ValueError(f"--modality: {modality!r} is not in the dataset (it has "
                         f"{', '.join(m.modalities)})")
    mods = [modality] if modality else list(m.modalities)
    override = _parse_override(bands, mods)
    _check_sensors_known(m, mods, loc if is_zarr(loc) else manifest_location(loc))
    displays = [choose_display(mod, m.modalities[mod], override.get(mod)) for mod in mods]
    rows = read_samples(dataset, mods, samples)
    if not rows:
        raise ValueError(f"{loc}: the dataset holds no samples to preview")
    for d in displays:
        fit_stretches(d, m.modalities[d.modality], rows)
    blocks = {d.modality: [render(s, d, m.modalities[d.modality]) for s in rows]
              for d in displays}
    sheet, placed = compose(blocks, cols, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(out, sheet)
    tiles = []
    for p in placed:
        s = rows[p.index]
        entry = {"key": s["__key__"], **asdict(p), **_label_fields(s, m)}
        cf = (s.get("meta") or {}).get("cloud_fraction")
        if cf is not None:
            entry["cloud_fraction"] = cf
        tiles.append(entry)
    report = {
        "dataset": loc, "image": str(out), "width": int(sheet.shape[1]),
        "height": int(sheet.shape[0]), "samples": len(rows), "cols": cols, "size": size,
        "modalities": {d.modality: {
            "sensor": d.sensor, "mode": d.mode,
            "bands": [c.name for c in d.channels],
            "wavelengths_nm": d.wavelengths_nm,
            "stretch": [asdict(s) for s in d.stretches]} for d in displays},
        "tiles": tiles,
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    """Readable form of :func:`preview`'s report for stdout."""
    lines = [f"preview  {report['image']}  {report['width']}x{report['height']} px, "
             f"{report['samples']} samples of {report['dataset']}, {report['cols']} columns"]
    for mod, d in report["modalities"].items():
        chans = "  ".join(f"{'RGB'[i] if len(d['bands']) == 3 else 'grey'}={s['band']} "
                          f"[{s['low']:.4g}..{s['high']:.4g} {s['source']}]"
                          for i, s in enumerate(d["stretch"]))
        lines.append(f"modality {mod} ({d['sensor']}): {d['mode']}: {chans}")
    lines.append(f"  {'block':<8}{'row':>4}{'col':>4}  {'key':<40}{'cloud':>7}  labels")
    for t in report["tiles"]:
        cf = t.get("cloud_fraction")
        lines.append(f"  {t['modality']:<8}{t['row']:>4}{t['col']:>4}  {t['key']:<40}"
                     + (f"{cf:>7.1%}" if cf is not None else f"{'-':>7}")
                     + "  " + ", ".join(t.get("label_names", [])))
    lines.append(f"wrote {report['image']} and {Path(report['image']).with_suffix('.json')}")
    return "\n".join(lines)


__all__ = ["BACKGROUND", "GAP", "MAGENTA", "choose_display", "compose", "format_report",
           "parse_bands", "preview", "render", "to_uint8"]
