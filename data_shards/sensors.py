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

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .sensor_types import (
    _BAND_KEYS,
    _MISSING,
    _SENSOR_KEYS,
    ENMAP_HYSPECNET_NODATA_BANDS,
    SAR_C_BAND_WAVELENGTH_NM,
    SAR_POLARISATION_CODES,
    Band,
    Sensor,
    _got,
    _message,
    _sensor_kwargs,
    _unknown_keys,
)

__all__ = ["ENMAP_HYSPECNET_NODATA_BANDS", "SAR_C_BAND_WAVELENGTH_NM", "SAR_POLARISATION_CODES",
           "STACK", "Band", "Sensor", "get_sensor", "joint_processing_level", "list_sensors",
           "load_sensors_yaml", "register_sensor", "resolve_band_names", "sensor_differences",
           "stack_sensor"]

_BUILTIN_DIR = Path(__file__).parent / "sensors"
STACK = "+"  # joins the ids of sensors stacked into one input: "s2_l2a+s1_grd"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
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
    """The processing level of data pooled from ``sensor_ids``: their distinct registry levels
    joined with ``+`` in the order of the sensors, a stacked sensor's part by part
    (``"L2A+L1 GRD"`` for ``s2_l2a+s1_grd``, whose own ``processing_level`` is sorted:
    read beside the sensor ids, the levels pair with them); a single level as is; None when
    none has one. :func:`eofm.models.contract.check_input` accepts a batch of any one of the
    levels, in any order."""
    parts = [p for s in sensor_ids  # a stacked sensor (stack_sensor): its parts, in order
             for p in (s.split(STACK) if get_sensor(s).modality == "stack" else [s])]
    levels = [lv for p in parts if (lv := get_sensor(p).processing_level)]
    return "+".join(dict.fromkeys(levels)) or None


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
