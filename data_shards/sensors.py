"""Sensor and band definitions: the single source of truth for band names, order and physics.

Built-in sensors come from the YAML files in ``sensors/`` next to this module (sources cited in
their comments) and are registered at import: ``s2_l1c``, ``s2_l2a``, ``s1_grd``,
``landsat8_oli_tirs``, ``landsat9_oli_tirs`` (Level-1), ``landsat8_c2l2``, ``landsat9_c2l2``
(Collection 2 Level-2 SR_B*/ST_B10), ``enmap_hsi``, ``rgb``. Add more with
:func:`load_sensors_yaml` or :func:`register_sensor`.

* ``Band.units`` is the unit of the *raw stored* values ("DN" = scaled integers, "dB" for SAR);
  the physical value is ``raw * scale + offset``.
* Look-ups accept the canonical name or any alias, case-insensitively.
* SAR stand-in: radar bands have no optical wavelength. For wavelength-conditioned tokenizers a
  SAR band's ``center_wavelength_nm`` is the radar wavelength (C band 5.405 GHz:
  ``SAR_C_BAND_WAVELENGTH_NM`` = 55465764.66 nm) and its ``bandwidth_nm`` is a polarisation code
  (``SAR_POLARISATION_CODES``: VV 1, VH 2, HH 3, HV 4), not a physical bandwidth, so VV and VH
  get distinct (wavelength, bandwidth) pairs.
* Every band of a sensor has its own ``(center_wavelength_nm, bandwidth_nm)`` pair (the
  spectral tokenizer tells bands apart by it alone); a definition where two bands share one
  (a SAR sensor giving HH and HV the same polarisation code) is refused, naming both bands.
* Invalid definitions raise one ``ValueError`` naming the file (or ``"<dict>"``) and, for every
  problem, the field path (``sensors[1].bands[3].center_wavelength_nm``), what was expected
  and what came.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["ENMAP_HYSPECNET_NODATA_BANDS", "SAR_C_BAND_WAVELENGTH_NM", "SAR_POLARISATION_CODES",
           "Band", "Sensor", "get_sensor", "joint_processing_level", "list_sensors",
           "load_sensors_yaml", "register_sensor", "resolve_band_names", "sensor_differences",
           "stack_sensor"]

SAR_C_BAND_WAVELENGTH_NM = 299_792_458.0 / 5.405e9 * 1e9  # c / f in nm: 55465764.66
SAR_POLARISATION_CODES = {"VV": 1.0, "VH": 2.0, "HH": 3.0, "HV": 4.0}
# a band at or beyond this wavelength (1 mm) is radar: its bandwidth_nm is a polarisation code
_RADAR_MIN_WAVELENGTH_NM = 1.0e6
# EnMAP bands that are entirely nodata (-32768) in HySpecNet-11k (water-vapour absorption).
ENMAP_HYSPECNET_NODATA_BANDS = tuple(f"B{i:03d}" for i in (*range(127, 142), *range(161, 168)))

_BUILTIN_DIR = Path(__file__).parent / "sensors"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
STACK = "+"  # joins the ids of sensors stacked into one input: "s2_l2a+s1_grd"
_BAND_KEYS = ("name", "center_wavelength_nm", "bandwidth_nm", "gsd_m", "units", "scale",
              "offset", "nodata", "hist_range", "aliases", "description")
_SENSOR_KEYS = ("id", "name", "modality", "dtype", "processing_level", "description",
                "may_be_empty", "bands", "band_defaults")
_MISSING = object()
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _got(v: Any) -> str:
    if v is _MISSING:
        return "nothing (field missing)"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _message(source: str, problems: list[str]) -> str:
    head = f"{source}: {len(problems)} problem(s) in sensor definitions:"
    return "\n  - ".join([head, *problems])


def _number(d: Mapping, key: str, path: str, problems: list[str], *, positive: bool = False,
            default: Any = _MISSING, allow_none: bool = False) -> float | None:
    v = d.get(key, default)
    if v is None and allow_none:
        return None
    if isinstance(v, str):  # PyYAML reads "1e-4" as a string
        with contextlib.suppress(ValueError):
            v = float(v)
    want = "a finite number" + (" > 0" if positive else "") + (" or null" if allow_none else "")
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v) or (positive and v <= 0):
        problems.append(f"{_at(path, key)}: expected {want}, got {_got(d.get(key, _MISSING))}")
        return None
    return float(v)


def _text(d: Mapping, key: str, path: str, problems: list[str], *, default: Any = _MISSING,
          nonempty: bool = True) -> str | None:
    v = d.get(key, default)
    if v is None and not nonempty:
        return ""
    if not isinstance(v, str) or (nonempty and not v.strip()):
        want = "a non-empty string" if nonempty else "a string"
        problems.append(f"{_at(path, key)}: expected {want}, got {_got(d.get(key, _MISSING))}")
        return None
    return v.strip() if nonempty else v


def _unknown_keys(d: Mapping, allowed: Sequence[str], path: str, problems: list[str]) -> None:
    for k in d:
        if k not in allowed:
            problems.append(f"{_at(path, str(k))}: unknown field (expected one of "
                            f"{', '.join(allowed)})")


def _band_kwargs(d: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    """Validate one band mapping; append problems; return normalised Band kwargs."""
    if not isinstance(d, Mapping):
        problems.append(f"{path or '<band>'}: expected a mapping of band fields, got {_got(d)}")
        return None
    n0 = len(problems)
    _unknown_keys(d, _BAND_KEYS, path, problems)
    kw: dict[str, Any] = {"name": _text(d, "name", path, problems)}
    for key in ("center_wavelength_nm", "bandwidth_nm", "gsd_m"):
        kw[key] = _number(d, key, path, problems, positive=True)
    kw["units"] = _text(d, "units", path, problems)
    kw["scale"] = _number(d, "scale", path, problems, default=1.0)
    if kw["scale"] == 0.0:
        problems.append(f"{_at(path, 'scale')}: expected a non-zero number, got 0")
    kw["offset"] = _number(d, "offset", path, problems, default=0.0)
    kw["nodata"] = _number(d, "nodata", path, problems, default=None, allow_none=True)
    hr = d.get("hist_range")
    kw["hist_range"] = None
    if hr is not None:
        ok = isinstance(hr, Sequence) and not isinstance(hr, str) and len(hr) == 2
        vals = [_number({"v": x}, "v", "", []) for x in hr] if ok else []
        if not ok or None in vals or vals[0] >= vals[1]:
            problems.append(f"{_at(path, 'hist_range')}: expected null or [low, high] with "
                            f"finite low < high, got {_got(hr)}")
        else:
            kw["hist_range"] = (vals[0], vals[1])
    aliases = d.get("aliases") or []
    aliases = aliases if isinstance(aliases, str) or not isinstance(aliases, Iterable) \
        else list(aliases)
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        problems.append(f"{_at(path, 'aliases')}: expected a list of non-empty strings, "
                        f"got {_got(d.get('aliases'))}")
        aliases = []
    kw["aliases"] = tuple(a.strip() for a in aliases)
    kw["description"] = _text(d, "description", path, problems, default="", nonempty=False)
    return kw if len(problems) == n0 else None


def _sensor_kwargs(d: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    """Validate one sensor mapping (bands as mappings or Bands); return normalised kwargs."""
    if not isinstance(d, Mapping):
        problems.append(f"{path or '<sensor>'}: expected a mapping of sensor fields, got {_got(d)}")
        return None
    n0 = len(problems)
    _unknown_keys(d, _SENSOR_KEYS, path, problems)
    kw: dict[str, Any] = {"id": _text(d, "id", path, problems)}
    if kw["id"] is not None and not _ID_RE.match(kw["id"]):
        problems.append(f"{_at(path, 'id')}: expected letters, digits, '_', '.' or '-', "
                        f"got {kw['id']!r}")
    for key in ("name", "modality"):
        kw[key] = _text(d, key, path, problems)
    for key in ("processing_level", "description"):
        kw[key] = _text(d, key, path, problems, default="", nonempty=False)
    dtype = d.get("dtype", _MISSING)
    try:
        np_dtype = np.dtype(dtype) if isinstance(dtype, str) else None
    except TypeError:
        np_dtype = None
    if np_dtype is None or np_dtype.kind not in "uif":
        problems.append(f"{_at(path, 'dtype')}: expected a numeric numpy dtype name such as "
                        f"'uint16' or 'float32', got {_got(dtype)}")
    kw["dtype"] = np_dtype.name if np_dtype is not None else None
    defaults = d.get("band_defaults") or {}
    if not isinstance(defaults, Mapping) or "name" in defaults:
        problems.append(f"{_at(path, 'band_defaults')}: expected a mapping of band fields "
                        f"(without name), got {_got(defaults)}")
        defaults = {}
    raw_bands = d.get("bands", _MISSING)
    if isinstance(raw_bands, Iterable) and not isinstance(raw_bands, (str, Mapping)):
        raw_bands = list(raw_bands)
    if not isinstance(raw_bands, list) or not raw_bands:
        problems.append(f"{_at(path, 'bands')}: expected a non-empty list of bands, "
                        f"got {_got(raw_bands)}")
        raw_bands = []
    bands: list[Band] = []
    at: list[int] = []  # index in the definition's bands list of each band in ``bands``
    owner: dict[str, int] = {}  # lower-cased name/alias -> band index
    for i, b in enumerate(raw_bands):
        bpath = f"{_at(path, 'bands')}[{i}]"
        raw = b.to_dict() if isinstance(b, Band) else b
        bkw = _band_kwargs({**defaults, **raw} if isinstance(raw, Mapping) else raw, bpath,
                           problems)
        if bkw is None:
            continue
        mine: set[str] = set()
        for field_name, key in [("name", bkw["name"])] + [("aliases", a) for a in bkw["aliases"]]:
            j = owner.setdefault(key.lower(), i)
            if j != i or key.lower() in mine:
                problems.append(f"{bpath}.{field_name}: {key!r} is already used by "
                                f"bands[{j}] (names and aliases must be unique, ignoring case)")
            mine.add(key.lower())
        if bkw["nodata"] is not None and np_dtype is not None and np_dtype.kind in "ui":
            info = np.iinfo(np_dtype)
            if not (bkw["nodata"].is_integer() and info.min <= bkw["nodata"] <= info.max):
                problems.append(f"{bpath}.nodata: expected an integer in [{info.min}, "
                                f"{info.max}] for dtype {np_dtype.name}, got {bkw['nodata']!r}")
        bands.append(Band(**bkw))
        at.append(i)
    kw["bands"] = tuple(bands)
    _distinct_spectra(list(zip(at, bands, strict=True)), kw["id"], path, problems)
    kw["may_be_empty"] = _may_be_empty(d.get("may_be_empty"), bands, path, problems)
    return kw if len(problems) == n0 else None


def _distinct_spectra(bands: Sequence[tuple[int, Band]], sensor_id: str | None, path: str,
                      problems: list[str]) -> None:
    """Every band needs its own ``(center_wavelength_nm, bandwidth_nm)`` pair: the spectral
    tokenizer makes a band's patch-embedding kernel from that pair alone, so two bands sharing
    it get identical kernels and the model cannot tell them apart. Appends one problem per
    band (``(index in the definition, band)``) that repeats an earlier band's pair, naming
    both bands, the pair and, for a radar band
    (wavelength >= ``_RADAR_MIN_WAVELENGTH_NM``, 1 mm), the polarisation codes."""
    first: dict[tuple[float, float], tuple[int, Band]] = {}  # (centre, bandwidth) -> first
    for i, b in bands:
        j, other = first.setdefault((b.center_wavelength_nm, b.bandwidth_nm), (i, b))
        if j == i:
            continue
        hint = ""
        if b.center_wavelength_nm >= _RADAR_MIN_WAVELENGTH_NM:
            codes = ", ".join(f"{k} {v:g}" for k, v in SAR_POLARISATION_CODES.items())
            hint = (" For a SAR band, bandwidth_nm is its polarisation code "
                    f"(SAR_POLARISATION_CODES: {codes}): give each polarisation its own code.")
        problems.append(
            f"{_at(path, 'bands')}[{i}]: band {b.name!r} of sensor {sensor_id!r} has the same "
            f"(center_wavelength_nm, bandwidth_nm) = ({b.center_wavelength_nm:.10g}, "
            f"{b.bandwidth_nm:.10g}) as bands[{j}] {other.name!r}; expected a distinct pair "
            "per band: a wavelength-conditioned (spectral) tokenizer would give both bands the same "
            f"weights and the model could not tell them apart.{hint}")


def _may_be_empty(raw: Any, bands: list[Band], path: str, problems: list[str]) -> tuple[str, ...]:
    """``may_be_empty``: names (or aliases) of bands a product may leave entirely nodata, as
    canonical names in band order; each must be one of the sensor's bands, once."""
    if raw is None:
        return ()
    if isinstance(raw, Iterable) and not isinstance(raw, (str, Mapping)):
        raw = list(raw)
    if not isinstance(raw, list) or not all(
            isinstance(n, str) and n.strip() for n in raw):
        problems.append(f"{_at(path, 'may_be_empty')}: expected a list of band names, "
                        f"got {_got(raw)}")
        return ()
    lookup = {k.lower(): i for i, b in enumerate(bands) for k in (b.name, *b.aliases)}
    found: set[int] = set()
    for n in raw:
        i = lookup.get(n.strip().lower())
        if i is None:
            problems.append(f"{_at(path, 'may_be_empty')}: {n!r} is not one of the sensor's "
                            "bands")
        elif i in found:
            problems.append(f"{_at(path, 'may_be_empty')}: {n!r} is listed twice")
        else:
            found.add(i)
    return tuple(b.name for i, b in enumerate(bands) if i in found)


def _normalise(obj: Any, kwargs_fn: Any, label: str) -> None:
    """Validate a dataclass instance's fields in place (frozen: via object.__setattr__)."""
    problems: list[str] = []
    kw = kwargs_fn({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, "", problems)
    if kw is None:
        raise ValueError(_message(label, problems))
    for key, value in kw.items():
        object.__setattr__(obj, key, value)


@dataclass(frozen=True)
class Band:
    """One spectral (or SAR) band: name, spectral position, resolution and raw-value encoding."""

    name: str
    center_wavelength_nm: float
    bandwidth_nm: float
    gsd_m: float
    units: str
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    hist_range: tuple[float, float] | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        _normalise(self, _band_kwargs, f"<Band {self.name!r}>")

    @property
    def units_label(self) -> str:
        """The raw units and how they become physical, as input contracts state them:
        ``"DN"``, ``"DN (x 0.0001 = physical)"``, ``"DN (x 2.75e-05 -0.2 = physical)"``."""
        if self.scale == 1.0 and self.offset == 0.0:
            return self.units
        off = f" {self.offset:+g}" if self.offset else ""
        return f"{self.units} (x {self.scale:g}{off} = physical)"

    def to_dict(self) -> dict:
        """Return a plain (YAML/JSON-safe) dict that :meth:`from_dict` turns back into this band."""
        d = {k: getattr(self, k) for k in _BAND_KEYS}
        d["hist_range"] = list(self.hist_range) if self.hist_range is not None else None
        d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "<dict>") -> Band:
        """Build a band from a mapping; ValueError lists every invalid field."""
        problems: list[str] = []
        kw = _band_kwargs(d, "", problems)
        if kw is None:
            raise ValueError(_message(source, problems))
        return cls(**kw)


@dataclass(frozen=True)
class Sensor:
    """A sensor/product: its raw dtype and its bands in canonical (file) order.

    ``may_be_empty`` names the bands a product may leave entirely nodata by design (EnMAP's
    water-vapour bands in HySpecNet-11k): a tile where such a band holds no data keeps the
    pixels the other bands cover. Any other band that is entirely nodata in a tile makes every
    pixel of the tile invalid, so the build's ``max_nodata`` drops it rather than let the band
    reach a model as a constant that looks like a measurement."""

    id: str
    name: str
    modality: str
    dtype: str
    bands: tuple[Band, ...]
    processing_level: str = ""
    description: str = ""
    may_be_empty: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _normalise(self, _sensor_kwargs, f"<Sensor {self.id!r}>")

    @property
    def band_names(self) -> list[str]:
        """Canonical band names in order."""
        return [b.name for b in self.bands]

    @cached_property
    def _lookup(self) -> dict[str, int]:
        return {k.lower(): i for i, b in enumerate(self.bands) for k in (b.name, *b.aliases)}

    def _unknown(self, names: Sequence[Any], extra: Sequence[str] = ()) -> ValueError:
        parts = [f"unknown band(s) {', '.join(repr(n) for n in names)}"] if names else []
        return ValueError(f"sensor {self.id!r}: " + "; ".join([*parts, *extra]) +
                          f". Valid bands: {', '.join(self.band_names)} "
                          "(aliases accepted, case-insensitive)")

    def band(self, name: str) -> Band:
        """Return the band for a canonical name or alias (case-insensitive)."""
        i = self._lookup.get(name.strip().lower()) if isinstance(name, str) else None
        if i is None:
            raise self._unknown([name])
        return self.bands[i]

    def canonical(self, name: str) -> str:
        """Return the canonical name of a band given any accepted spelling."""
        return self.band(name).name

    def indices(self, names: Sequence[str]) -> list[int]:
        """Positions in ``bands`` of ``names``; one ValueError lists all unknowns and duplicates."""
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise ValueError(f"sensor {self.id!r}: expected a sequence of band names, "
                             f"got {_got(names)}")
        out, unknown, dups, first = [], [], [], {}
        for n in names:
            i = self._lookup.get(n.strip().lower()) if isinstance(n, str) else None
            if i is None:
                unknown.append(n)
            elif i in first:
                dups.append(f"{n!r} repeats {first[i]!r} (band {self.bands[i].name})")
            else:
                first[i] = n
                out.append(i)
        if unknown or dups:
            raise self._unknown(unknown, [f"duplicate band(s) {', '.join(dups)}"] if dups else [])
        return out

    def select(self, names: Sequence[str]) -> Sensor:
        """Return a copy (same id) holding only ``names``, in that order."""
        idx = self.indices(names)
        if not idx:
            raise ValueError(f"sensor {self.id!r}: select() needs at least one band name")
        kept = tuple(self.bands[i] for i in idx)
        return dataclasses.replace(self, bands=kept, may_be_empty=tuple(
            b.name for b in kept if b.name in self.may_be_empty))

    def to_dict(self) -> dict:
        """Return a plain (YAML/JSON-safe) dict that :meth:`from_dict` turns back into this
        sensor."""
        d = {k: getattr(self, k) for k in _SENSOR_KEYS[:-1]}
        return d | {"may_be_empty": list(self.may_be_empty),
                    "bands": [b.to_dict() for b in self.bands]}

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "<dict>") -> Sensor:
        """Build a sensor from a mapping (``band_defaults`` allowed); ValueError lists all
        problems."""
        problems: list[str] = []
        kw = _sensor_kwargs(d, "", problems)
        if kw is None:
            raise ValueError(_message(source, problems))
        return cls(**kw)


_REGISTRY: dict[str, Sensor] = {}
_ORIGIN: dict[str, str] = {}  # sensor id -> where its definition came from (for messages)


def get_sensor(sensor_id: str) -> Sensor:
    """Return a registered sensor by id; ValueError lists the known ids."""
    key = sensor_id if isinstance(sensor_id, str) else ""
    s = _REGISTRY.get(key) or _REGISTRY.get(key.strip().lower())
    if s is None and STACK in key:
        s = stack_sensor(key.split(STACK))
        _REGISTRY[s.id] = s
    if s is None:
        raise ValueError(f"unknown sensor {sensor_id!r}; known sensors: "
                         f"{', '.join(list_sensors())}")
    return s


def stack_sensor(sensor_ids: Sequence[str]) -> Sensor:
    """The sensor of modalities stacked into one input (``eofm-shard build --stack``): the
    bands of ``sensor_ids`` in that order, each keeping its own physics (a SAR band its
    stand-in code), stored as float32; its id joins theirs with ``+``. Band names and aliases
    must not collide across the parts (Sentinel-2 + Sentinel-1 do not; two Sentinel-2 levels
    do)."""
    parts = [get_sensor(i) for i in sensor_ids]
    if len(parts) < 2:
        raise ValueError(f"stack: expected at least two sensors, got {list(sensor_ids)}")
    owner: dict[str, str] = {}
    for p in parts:
        for b in p.bands:
            for key in (b.name, *b.aliases):
                other = owner.setdefault(key.lower(), p.id)
                if other != p.id:
                    raise ValueError(f"stack {STACK.join(p.id for p in parts)}: band name "
                                     f"{key!r} of {p.id} is also a band name or alias of "
                                     f"{other}; stacked sensors need distinct band names")
    levels = STACK.join(sorted({p.processing_level for p in parts if p.processing_level}))
    return Sensor(id=STACK.join(p.id for p in parts), name=" + ".join(p.name for p in parts),
                  modality="stack", dtype="float32",
                  bands=tuple(b for p in parts for b in p.bands), processing_level=levels,
                  description="bands of " + ", ".join(p.id for p in parts) + " on one grid",
                  may_be_empty=tuple(n for p in parts for n in p.may_be_empty))


def joint_processing_level(sensor_ids: Sequence[str]) -> str | None:
    """The processing level of data pooled from ``sensor_ids``: their distinct registry levels,
    sorted and joined with ``+`` (``"L1C+L2A"``; a single level as is); None when none has
    one. :func:`eofm.models.contract.check_input` accepts a batch of any one of the levels."""
    levels = sorted({lv for s in sensor_ids if (lv := get_sensor(s).processing_level)})
    return "+".join(levels) or None


def list_sensors() -> list[str]:
    """Return the ids of all registered sensors, sorted."""
    return sorted(_REGISTRY)


def register_sensor(sensor: Sensor, *, overwrite: bool = False) -> None:
    """Register ``sensor`` under its id; an existing id is a ValueError unless ``overwrite``."""
    if not isinstance(sensor, Sensor):
        raise TypeError(f"register_sensor() expects a Sensor, got {type(sensor).__name__}")
    if sensor.id in _REGISTRY and not overwrite:
        raise ValueError(f"sensor id {sensor.id!r} is already registered; pass overwrite=True "
                         "to replace it")
    _REGISTRY[sensor.id] = sensor


def _read_sensors_file(path: Path, *, overwrite: bool) -> list[Sensor]:
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    problems: list[str] = []
    entries = doc.get("sensors", _MISSING) if isinstance(doc, Mapping) else doc
    if isinstance(doc, Mapping):
        _unknown_keys(doc, ("sensors",), "", problems)
    if not isinstance(entries, list) or not entries:
        problems.append(f"sensors: expected a non-empty list of sensor mappings, "
                        f"got {_got(entries)}")
        entries = []
    kws = [_sensor_kwargs(e, f"sensors[{i}]", problems) for i, e in enumerate(entries)]
    seen: dict[str, int] = {}
    for i, kw in enumerate(kws):
        if kw is None:
            continue
        j = seen.setdefault(kw["id"], i)
        have = _REGISTRY.get(kw["id"])
        if j != i:
            problems.append(f"sensors[{i}].id: duplicate id {kw['id']!r} (also sensors[{j}])")
        elif (have is not None and not overwrite
              and (diff := sensor_differences(have, Sensor(**kw)))):
            problems.append(
                f"sensors[{i}].id: {kw['id']!r} is already registered "
                f"({_ORIGIN.get(kw['id'], 'in code')}) with another definition (differs in "
                f"{'; '.join(diff)}); rename one of the ids or pass overwrite=True to replace it")
    if problems:
        raise ValueError(_message(str(path), problems))
    return [Sensor(**kw) for kw in kws if kw is not None]


def load_sensors_yaml(path: str | os.PathLike, *, overwrite: bool = False) -> list[Sensor]:
    """Validate a user sensors YAML file (all problems in one ValueError), register and return
    them. An id that is already registered with the identical definition (the same file loaded
    twice, or a dataset built from it read first) is fine; with another definition it is a
    ValueError naming the differing fields, unless ``overwrite``. Nothing is registered when
    any entry is invalid."""
    sensors = _read_sensors_file(Path(path), overwrite=overwrite)
    for s in sensors:
        if _REGISTRY.get(s.id) != s:
            register_sensor(s, overwrite=True)
            _ORIGIN[s.id] = f"from {path}"
    return [_REGISTRY[s.id] for s in sensors]


def resolve_band_names(sensor: Sensor, names: Sequence[str]) -> list[str]:
    """Canonicalise ``names`` for ``sensor``; one ValueError reports every unknown or duplicate."""
    return [sensor.bands[i].name for i in sensor.indices(names)]


def user_sensor_records(sensor_ids: Iterable[str]) -> dict[str, dict]:
    """``{id: definition}`` of every sensor among ``sensor_ids`` (the parts of a stacked id
    included) that is not built in: a dataset's manifest keeps them (``extra.user_sensors``)
    so that it can be read without the YAML file it was built with."""
    out: dict[str, dict] = {}
    for sid in sensor_ids:
        for part in sid.split(STACK):
            if part not in _BUILTIN_IDS and part not in out:
                out[part] = get_sensor(part).to_dict()
    return out


def sensor_differences(a: Sensor, b: Sensor) -> list[str]:
    """The fields in which two definitions of a sensor differ, each as ``path (a vs b)``:
    ``name``, ``bands`` (count), ``bands[0].name``, ``bands[2].nodata``...; empty when equal."""
    out = [f"{k} ({getattr(a, k)!r} vs {getattr(b, k)!r})"
           for k in _SENSOR_KEYS[:-2] if getattr(a, k) != getattr(b, k)]
    if len(a.bands) != len(b.bands):
        return [*out, f"bands ({len(a.bands)} vs {len(b.bands)} bands: "
                      f"{','.join(a.band_names)} vs {','.join(b.band_names)})"]
    for i, (x, y) in enumerate(zip(a.bands, b.bands, strict=True)):
        out += [f"bands[{i}].{k} ({getattr(x, k)!r} vs {getattr(y, k)!r})"
                for k in _BAND_KEYS if getattr(x, k) != getattr(y, k)]
    return out


def register_recorded_sensors(records: Any, source: str) -> list[str]:
    """Register the sensor definitions a manifest recorded (:func:`user_sensor_records`) whose
    ids are not registered yet; returns their ids. Every record is validated before any is
    registered. A recorded id already registered with the identical definition is fine; with
    another definition (another dataset's sensor of the same id, or a sensors YAML) it is a
    ValueError naming ``source``, the id and the differing fields: the data would otherwise be
    read with the wrong bands, wavelengths or nodata. ValueError naming ``source`` for a
    malformed record too (:class:`~eofm.data_shards.manifest.Manifest` raises both as
    ``ManifestError``)."""
    if records is None:
        return []
    if not isinstance(records, Mapping):
        raise ValueError(f"{source}: extra.user_sensors: expected a mapping of sensor id to "
                         f"definition, got {_got(records)}")
    new: list[Sensor] = []
    for sid, d in records.items():
        where = f"{source}: extra.user_sensors.{sid}"
        sensor = Sensor.from_dict(d, source=where)
        if sensor.id != sid:
            raise ValueError(f"{where}: id {sensor.id!r} differs from its key")
        have = _REGISTRY.get(sid)
        if have is None:
            new.append(sensor)
        elif have != sensor:
            raise ValueError(
                f"{where}: sensor {sid!r} is already registered in this process "
                f"({_ORIGIN.get(sid, 'in code')}) with another definition; differs in: "
                f"{'; '.join(sensor_differences(have, sensor))}. Reading this dataset with "
                "the registered definition would give its bands the wrong names, wavelengths "
                "or nodata: rename the sensor id in one of the two (the sensors YAML it was "
                "built with, then rebuild) or read the datasets in separate processes")
    for sensor in new:
        register_sensor(sensor)
        _ORIGIN[sensor.id] = f"recorded in {source}"
    return [s.id for s in new]


_BUILTIN_IDS: set[str] = set()


def _load_builtins() -> None:
    for path in sorted(_BUILTIN_DIR.glob("*.yaml")):
        for sensor in _read_sensors_file(path, overwrite=False):
            register_sensor(sensor)
            _BUILTIN_IDS.add(sensor.id)
            _ORIGIN[sensor.id] = f"built in: {path.name}"


_load_builtins()
