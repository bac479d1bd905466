"""Band and sensor definitions and their validation (the registry: :mod:`.sensors`).

:class:`Band` and :class:`Sensor` are frozen dataclasses that check every field when made,
from code or from a mapping (:meth:`Band.from_dict`, :meth:`Sensor.from_dict`): invalid
definitions raise one ``ValueError`` naming the source and, for every problem, the field path
(``sensors[1].bands[3].center_wavelength_nm``), what was expected and what came. The SAR
stand-in for wavelength-conditioned tokenizers (``SAR_C_BAND_WAVELENGTH_NM``,
``SAR_POLARISATION_CODES``) is explained in :mod:`.sensors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["ENMAP_HYSPECNET_NODATA_BANDS", "SAR_C_BAND_WAVELENGTH_NM", "SAR_POLARISATION_CODES",
           "Band", "Sensor"]

SAR_C_BAND_WAVELENGTH_NM = 299_792_458.0 / 5.405e9 * 1e9  # c / f in nm: 55465764.66
SAR_POLARISATION_CODES = {"VV": 1.0, "VH": 2.0, "HH": 3.0, "HV": 4.0}
# a band at or beyond this wavelength (1 mm) is radar: its bandwidth_nm is a polarisation code
_RADAR_MIN_WAVELENGTH_NM = 1.0e6
# EnMAP bands that are entirely nodata (-32768) in HySpecNet-11k (water-vapour absorption).
ENMAP_HYSPECNET_NODATA_BANDS = tuple(f"B{i:03d}" for i in (*range(127, 142), *range(161, 168)))

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_BAND_KEYS = ("name", "center_wavelength_nm", "bandwidth_nm", "gsd_m", "units", "scale",
              "offset", "nodata", "hist_range", "aliases", "description")
_SENSOR_KEYS = ("id", "name", "modality", "dtype", "processing_level", "description",
                "may_be_empty", "bands", "band_defaults")
_MISSING = object()


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


def _open_mapping(d: Any, what: str, allowed: Sequence[str], path: str,
                  problems: list[str]) -> int | None:
    """Start validating ``d``, a ``what`` ("band", "sensor") definition at ``path``: None (a
    problem appended) when it is not a mapping, else the number of problems so far, after
    its unknown keys were appended."""
    if not isinstance(d, Mapping):
        problems.append(f"{path or f'<{what}>'}: expected a mapping of {what} fields, "
                        f"got {_got(d)}")
        return None
    n0 = len(problems)
    _unknown_keys(d, allowed, path, problems)
    return n0


# an optical band's centre below this (nm) is a value in micrometres (0.6545 for 654.5 nm), as
# USGS and many sensor documents list them; the shortest optical EO bands lie near 400 nm
_OPTICAL_MIN_WAVELENGTH_NM = 100.0
_OPTICAL_MIN_BANDWIDTH_NM = 0.5  # narrower than any imaging spectrometer's band: micrometres


def _check_nanometres(kw: dict[str, Any], path: str, problems: list[str]) -> None:
    """A problem for an optical band's centre or width given in micrometres (below
    :data:`_OPTICAL_MIN_WAVELENGTH_NM` / :data:`_OPTICAL_MIN_BANDWIDTH_NM`): accepted, its
    spectral code would be meaningless to the spectral tokenizer and matching by spectrum
    would fail. Radar bands (:data:`_RADAR_MIN_WAVELENGTH_NM` and beyond) keep their
    polarisation codes as bandwidth."""
    centre, width = kw.get("center_wavelength_nm"), kw.get("bandwidth_nm")
    if not isinstance(centre, float) or centre >= _RADAR_MIN_WAVELENGTH_NM:
        return
    if centre < _OPTICAL_MIN_WAVELENGTH_NM:
        problems.append(f"{_at(path, 'center_wavelength_nm')}: expected nanometres (optical "
                        f"bands lie above {_OPTICAL_MIN_WAVELENGTH_NM:g} nm), got {centre:g}: "
                        f"micrometres? write {centre * 1000:g}")
    if isinstance(width, float) and width < _OPTICAL_MIN_BANDWIDTH_NM:
        problems.append(f"{_at(path, 'bandwidth_nm')}: expected nanometres (an optical band is "
                        f"at least {_OPTICAL_MIN_BANDWIDTH_NM:g} nm wide), got {width:g}: "
                        f"micrometres? write {width * 1000:g}")


def _band_kwargs(d: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    """Validate one band mapping; append problems; return normalised Band kwargs."""
    n0 = _open_mapping(d, "band", _BAND_KEYS, path, problems)
    if n0 is None:
        return None
    kw: dict[str, Any] = {"name": _text(d, "name", path, problems)}
    for key in ("center_wavelength_nm", "bandwidth_nm", "gsd_m"):
        kw[key] = _number(d, key, path, problems, positive=True)
    _check_nanometres(kw, path, problems)
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
    n0 = _open_mapping(d, "sensor", _SENSOR_KEYS, path, problems)
    if n0 is None:
        return None
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
