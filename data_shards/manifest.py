"""``manifest.json``: the versioned contract between shard writers and readers.

A manifest lists every complete shard (sample count, bytes, sha256), the modalities with their
sensor (and, for a pool of band-compatible sensors, every sensor pooled), band names, dtype,
tile shape and per-band statistics, and the label space. Sensors that are not built in
(``--sensors-yaml``) are recorded with their definition in ``extra.user_sensors`` and
registered when the manifest is read, so the dataset is readable without that file; an id
already registered in the process with another definition (another dataset's sensor of the
same id) is a :class:`ManifestError` naming the differing fields. Only shards that were fully
written and renamed are ever listed; the manifest itself is written atomically.

Reading a manifest (:meth:`Manifest.from_dict`, :func:`load_manifest`) checks every field's
type and that the fields agree (``shape``, ``nodata`` and ``stats`` with ``bands``,
``sample_count`` with the shards); all problems come in one :class:`ManifestError` naming the
manifest, each field (``modalities.s2.bands``), what was expected and what it holds; damaged
statistics also say how to repair them (``eofm-shard stats DATASET --write``), which reads the
manifest with ``check_stats=False``: its stored statistics are then neither checked nor kept.
:func:`load_manifest` also refuses a dataset of 0 samples, naming its manifest.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .manifest_fields import (
    MISSING,
    check_classes,
    check_count,
    check_dtype,
    check_names,
    check_nodata,
    check_s2_offset,
    check_shape,
    got,
    is_number,
    missing_fields,
    sensors_problems,
    stats_repair_hint,
    unknown_fields,
)
from .manifest_fields import check_stats as check_stats_field
from .outputs import atomic_open, write_failure

log = logging.getLogger(__name__)

FORMAT = "eofm-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest that cannot be read or disagrees with what it describes."""


@dataclass
class ShardInfo:
    """One complete shard file."""

    name: str
    samples: int
    bytes: int
    sha256: str
    writer: int = 0

    @classmethod
    def parse(cls, d: object, where: str, problems: list[str]) -> ShardInfo | None:
        """Check one ``shards[i]`` entry's fields (appending to ``problems``, each prefixed
        with ``where``); the entry, or None when it has a problem."""
        n0 = len(problems)
        if not isinstance(d, Mapping):
            problems.append(f"{where}: expected a mapping of shard fields (name, samples, bytes, "
                            f"sha256), got {got(d)}")
            return None
        unknown_fields(d, _SHARD_FIELDS, where, problems)
        name = d.get("name", MISSING)
        problems += shard_name_problems(name, f"{where}.name") if name is not MISSING \
            else [f"{where}.name: expected a plain file name, got {got(name)}"]
        for key in ("samples", "bytes"):
            check_count(d.get(key, MISSING), f"{where}.{key}", problems)
        sha = d.get("sha256", MISSING)
        if not (isinstance(sha, str) and SHA256_RE.fullmatch(sha)):
            problems.append(f"{where}.sha256: expected 64 hexadecimal digits, got {got(sha)}")
        check_count(d.get("writer", 0), f"{where}.writer", problems)
        return cls(**d) if len(problems) == n0 else None


_SHARD_FIELDS = ("name", "samples", "bytes", "sha256", "writer")
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


# A shard name is a plain file name beside the manifest: it is joined to the dataset folder or
# URL and substituted into ``url_template`` (``pipe:`` templates run in a shell), so a manifest
# from elsewhere must not be able to name ``../x``, ``/abs``, ``a/b`` or ``x.tar; rm -rf ~``.
SHARD_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_SHARD_NAME = 255  # bytes of a file name on common filesystems


def shard_name_problems(name: object, where: str) -> list[str]:
    """Why ``name`` is not a safe shard file name (empty list: it is one)."""
    if (isinstance(name, str) and len(name) <= MAX_SHARD_NAME and SHARD_NAME_RE.fullmatch(name)
            and ".." not in name):
        return []
    shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80] + "...")
    return [f"{where}: expected a plain file name of at most {MAX_SHARD_NAME} characters "
            f"(letters, digits, '.', '_', '-'; no '/', no '..'), such as 'shard-00-000000.tar', "
            f"got {shown}"]


@dataclass
class ModalityInfo:
    """One modality (``s2``, ``s1``, ``hsi``...): sensor, bands in stored order, stats.

    ``sensor`` is the sensor of the first input (readers that expect one sensor use it).
    ``sensors`` lists every sensor pooled into the modality, ``sensor`` first, when the build
    pooled band-compatible inputs of different sensors (e.g. ``["s2_l1c", "s2_l2a"]``); it is
    None (and absent from ``manifest.json``) when one sensor wrote every sample, as in
    manifests written before the field existed. :attr:`sensor_ids` gives the list either way.
    Each sample's own sensor is in its ``meta.json`` (``modalities.<name>.sensor``).
    """

    sensor: str
    bands: list[str]
    dtype: str
    shape: list[int]
    nodata: list[float | None]
    gsd_m: float
    stats: dict[str, dict] = field(default_factory=dict)
    sensors: list[str] | None = None

    @property
    def sensor_ids(self) -> list[str]:
        """Every sensor whose samples the modality holds, ``sensor`` first."""
        return list(self.sensors) if self.sensors else [self.sensor]

    def problems(self, where: str) -> list[str]:
        """What is inconsistent in this entry (``where`` prefixes each message)."""
        return sensors_problems(self.sensors, self.sensor, where)

    @classmethod
    def parse(cls, d: object, where: str, problems: list[str], *,
              check_stats: bool = True) -> ModalityInfo | None:
        """Check one ``modalities.<name>`` entry: each field's type and that ``shape``,
        ``nodata`` and ``stats`` agree with ``bands`` (appending to ``problems``, each
        prefixed with ``where``); the entry, or None when it has a problem. Without
        ``check_stats`` the stored ``stats`` are neither checked nor kept (empty)."""
        if not isinstance(d, Mapping):
            problems.append(f"{where}: expected a mapping of modality fields (sensor, bands, "
                            f"dtype, shape, nodata, gsd_m, stats), got {got(d)}")
            return None
        n0 = len(problems)
        unknown_fields(d, _MODALITY_FIELDS, where, problems)
        missing_fields(d, _MODALITY_FIELDS[:6], where, problems)
        sensor = d.get("sensor", "")
        if "sensor" in d and not (isinstance(sensor, str) and sensor):
            problems.append(f"{where}.sensor: expected a sensor id (a non-empty string), "
                            f"got {got(sensor)}")
        bands = d.get("bands")
        n = len(bands) if "bands" in d and check_names(bands, f"{where}.bands", "band names",
                                                   problems) else None
        if "dtype" in d:
            check_dtype(d["dtype"], f"{where}.dtype", problems)
        if "shape" in d:
            check_shape(d["shape"], n, where, problems)
        if "nodata" in d:
            check_nodata(d["nodata"], n, where, problems)
        gsd = d.get("gsd_m")
        if "gsd_m" in d and not (is_number(gsd) and math.isfinite(gsd) and gsd > 0):
            problems.append(f"{where}.gsd_m: expected a ground sampling distance in metres "
                            f"(a finite number > 0), got {got(gsd)}")
        if check_stats:
            check_stats_field(d.get("stats", {}), bands if n is not None else None, where,
                              problems)
        problems += sensors_problems(d.get("sensors"), sensor, where)
        fields = d if check_stats else {**d, "stats": {}}
        return cls(**fields) if len(problems) == n0 else None


_MODALITY_FIELDS = ("sensor", "bands", "dtype", "shape", "nodata", "gsd_m", "stats", "sensors")


@dataclass
class LabelInfo:
    """Label space: ``kind`` is ``class`` (int index), ``multilabel`` (multi-hot) or
    ``segmentation``."""

    kind: str
    classes: list[str]

    @classmethod
    def parse(cls, d: object, where: str, problems: list[str]) -> LabelInfo | None:
        """Check the ``labels`` entry (appending to ``problems``, each prefixed with
        ``where``): a known ``kind`` and distinct non-empty ``classes`` (at least one for kind
        ``class``: :func:`.manifest_fields.check_classes`); the label space, or None when it
        has a problem."""
        if not isinstance(d, Mapping):
            problems.append(f"{where}: expected null or a mapping with kind and classes, "
                            f"got {got(d)}")
            return None
        n0 = len(problems)
        unknown_fields(d, ("kind", "classes"), where, problems)
        if missing_fields(d, ("kind", "classes"), where, problems):
            if d["kind"] not in LABEL_KINDS:
                problems.append(f"{where}.kind: expected one of {', '.join(LABEL_KINDS)}, "
                                f"got {got(d['kind'])}")
            classes = d["classes"]
            if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
                problems.append(f"{where}.classes: expected a list of class names (strings), "
                                f"got {got(classes)}")
            else:  # labels and class names are matched by position: each name once
                check_classes(classes, d["kind"], f"{where}.classes", problems)
        return cls(**d) if len(problems) == n0 else None


LABEL_KINDS = ("class", "multilabel", "segmentation")


@dataclass
class Manifest:
    """Everything a reader needs to know about a dataset before opening a shard."""

    modalities: dict[str, ModalityInfo]
    shards: list[ShardInfo] = field(default_factory=list)
    labels: LabelInfo | None = None
    source: str = ""
    layout: str = ""
    tile: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def sample_count(self) -> int:
        """Total samples over all shards."""
        return sum(s.samples for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (with ``sample_count`` for humans)."""
        d = asdict(self)
        for m in d["modalities"].values():  # single-sensor entries read as before the field
            if m.get("sensors") is None:
                m.pop("sensors", None)
        d["sample_count"] = self.sample_count
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>",
                  check_stats: bool = True) -> Manifest:
        """Validate and build; every problem (a field's type, or fields that disagree such as
        ``shape`` and ``bands``) is reported at once, naming ``source`` and the field, and
        problems of the statistics once with how to repair them (:func:`stats_repair_hint`).
        Without ``check_stats`` (``eofm-shard stats``, which recomputes them) the stored
        statistics are neither checked nor kept: every modality's ``stats`` is empty."""
        if not isinstance(d, Mapping):
            raise ManifestError(f"{source}: expected a JSON object, got {got(d)}")
        problems: list[str] = []
        if d.get("format") != FORMAT:
            problems.append(f"format: expected {FORMAT!r}, got {d.get('format')!r}")
        version = d.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            problems.append(f"format_version: expected {FORMAT_VERSION}, got {version!r}")
        mods = _parse_modalities(d.get("modalities"), problems, check_stats=check_stats)
        _hint_stats_repair(d.get("modalities"), problems, source)
        shards = _parse_shards(d.get("shards"), problems)
        labels = None
        if d.get("labels") is not None and d.get("labels") != {}:
            labels = LabelInfo.parse(d["labels"], "labels", problems)
        if "sample_count" in d and check_count(d["sample_count"], "sample_count", problems) \
                and shards and d["sample_count"] != sum(s.samples for s in shards):
            problems.append(f"sample_count: {d['sample_count']} disagrees with the shards' sum "
                            f"{sum(s.samples for s in shards)}")
        _check_top_level(d, problems)
        if problems:
            raise ManifestError(f"{source}: invalid manifest:\n  " + "\n  ".join(problems))
        out = cls(
            modalities=mods, shards=shards, labels=labels, source=d.get("source", ""),
            layout=d.get("layout", ""), tile=d.get("tile", {}), extra=d.get("extra", {}),
        )
        warn_unrecorded_s2_offset(out, source)
        from .sensors import register_recorded_sensors

        try:  # user-defined sensors the dataset was built with (no --sensors-yaml needed)
            register_recorded_sensors(out.extra.get("user_sensors"), source)
        except ValueError as e:
            raise ManifestError(str(e)) from None
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/manifest.json`` atomically (temp file, fsync, rename)."""
        path = Path(directory) / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n")
        return path


def _parse_modalities(v: object, problems: list[str], *,
                      check_stats: bool = True) -> dict[str, ModalityInfo]:
    """``modalities``: a mapping of modality name -> fields, at least one (their ``stats``
    neither checked nor kept without ``check_stats``)."""
    if v is None or v == {}:
        problems.append("modalities: expected at least one modality, got none")
        return {}
    if not isinstance(v, Mapping):
        problems.append(f"modalities: expected a mapping of modality name -> modality fields, "
                        f"got {got(v)}")
        return {}
    mods = {}
    for key, m in v.items():
        info = ModalityInfo.parse(m, f"modalities.{key}", problems, check_stats=check_stats)
        if info is not None:
            mods[key] = info
    return mods


def _hint_stats_repair(modalities: object, problems: list[str], source: str) -> None:
    """Append how to repair them (:func:`stats_repair_hint`) to the last of ``problems`` that
    is about a modality's ``stats``, if any: said once however many are damaged."""
    if not isinstance(modalities, Mapping):
        return
    fields = tuple(f"modalities.{key}.stats{end}" for key in modalities for end in ":.")
    last = [i for i, p in enumerate(problems) if p.startswith(fields)]
    if last:
        problems[last[-1]] += f"; {stats_repair_hint(source)}"


def _parse_shards(v: object, problems: list[str]) -> list[ShardInfo]:
    """``shards``: a list of shard entries with distinct names (absent or null: none)."""
    if v is None:
        return []
    if not isinstance(v, list):
        problems.append(f"shards: expected a list of shard entries (mappings with name, "
                        f"samples, bytes, sha256), got {got(v)}")
        return []
    shards: list[ShardInfo] = []
    first: dict[str, int] = {}
    for i, s in enumerate(v):
        info = ShardInfo.parse(s, f"shards[{i}]", problems)
        if info is None:
            continue
        if info.name in first:
            problems.append(f"shards[{i}].name: expected a name listed once, got "
                            f"{info.name!r}, also shards[{first[info.name]}].name")
        first.setdefault(info.name, i)
        shards.append(info)
    return shards


def _check_top_level(d: Mapping[str, Any], problems: list[str]) -> None:
    """``source``, ``layout`` (strings), ``tile`` and ``extra`` (mappings), and the parts of
    ``extra`` that readers use: ``counters`` (name -> whole number), ``samples``, ``writers``,
    ``s2_offset`` (the Sentinel-2 offset record: :func:`.manifest_fields.check_s2_offset`)."""
    for key in ("source", "layout"):
        if key in d and not isinstance(d[key], str):
            problems.append(f"{key}: expected a string, got {got(d[key])}")
    for key in ("tile", "extra"):
        if key in d and not isinstance(d[key], Mapping):
            problems.append(f"{key}: expected a mapping, got {got(d[key])}")
    extra = d.get("extra")
    if not isinstance(extra, Mapping):
        return
    counters = extra.get("counters", {})
    if not isinstance(counters, Mapping):
        problems.append(f"extra.counters: expected a mapping of counter name -> whole number, "
                        f"got {got(counters)}")
    else:
        for k, n in counters.items():
            check_count(n, f"extra.counters.{k}", problems)
    for key in ("samples", "writers"):
        if key in extra:
            check_count(extra[key], f"extra.{key}", problems)
    if "s2_offset" in extra:
        check_s2_offset(extra["s2_offset"], "extra.s2_offset", problems)


_WARNED_S2: set[str] = set()


def warn_unrecorded_s2_offset(manifest: Manifest, source: str) -> bool:
    """Warn (once per ``source`` and process) when a Sentinel-2 dataset was built before
    ``eofm-shard build`` removed the baseline-04.00 DN offset (no ``extra.s2_offset`` record):
    its products of baseline 04.00 or later may hold reflectance x 10000 + 1000. True when
    the record is missing."""
    from .s2_baseline import S2_SENSORS

    s2 = any(set(m.sensor_ids) & S2_SENSORS for m in manifest.modalities.values())
    missing = s2 and "s2_offset" not in manifest.extra
    if missing and source not in _WARNED_S2:
        _WARNED_S2.add(source)
        log.warning("%s: built before eofm removed the Sentinel-2 baseline-04.00 DN offset at "
                    "ingest (no extra.s2_offset record): products of baseline 04.00 or later "
                    "in it may read 0.1 too bright; rebuild it with `eofm-shard build` (the "
                    "record then says what each input got)", source)
    return missing


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary name, fsync and rename. A failed write (a
    full disk) removes the temporary file, leaves ``path`` as it was and raises an ``OSError``
    naming ``path`` (:func:`.outputs.write_failure`); a temporary file that cannot be removed
    (a read-only filesystem) never hides that error (:func:`.outputs.atomic_open`). The
    temporary name is the process's own (``.NAME.PID.tmp``): two processes writing one file
    (two eofm-probe runs on one --out) each rename a whole file, never one the other is
    still writing (a shared name failed their renames and let a reader see a torn file)."""
    path = Path(path)
    try:
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except Exception as e:  # atomic_open removed the temporary file; Ctrl-C passes as it is
        raise write_failure(path, e) from e


def manifest_location(dataset: str) -> str:
    """Path or URL of the manifest for a dataset folder/URL (or the manifest itself)."""
    if dataset.endswith(".json"):
        return dataset
    return dataset.rstrip("/") + "/" + MANIFEST_NAME


def load_manifest(dataset: str | Path, *, check_stats: bool = True) -> Manifest:
    """Read the manifest of a dataset folder (or a path/URL to ``manifest.json``). Without
    ``check_stats`` its statistics are neither checked nor kept (:meth:`Manifest.from_dict`):
    how ``eofm-shard stats`` opens a dataset whose statistics it recomputes."""
    loc = manifest_location(str(dataset))
    from .remote import redact

    shown = redact(loc)  # a URL may hold credentials: never in a message
    try:
        if "://" in loc:
            import webdataset as wds

            try:
                with wds.gopen(loc, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                raise
            except Exception as e:  # e.g. webdataset's curl error quotes an HF token header
                why = f"{shown}: cannot read the manifest ({type(e).__name__}: {redact(str(e))})"
                raise (OSError(why) if isinstance(e, OSError) else ManifestError(why)) from None
        else:
            raw = read_local_manifest(str(dataset), loc)
    except FileNotFoundError:
        raise ManifestError(
            f"{shown}: no manifest found; expected a dataset folder written by `eofm-shard build`"
        ) from None
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{shown}: manifest is not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"{shown}: manifest is not UTF-8 JSON text ({e})") from None
    except RecursionError:
        raise ManifestError(f"{shown}: manifest nests lists or mappings too deeply to be one "
                            "written by `eofm-shard build`") from None
    if not isinstance(d, dict):
        raise ManifestError(f"{shown}: expected a JSON object, got {type(d).__name__}")
    manifest = Manifest.from_dict(d, source=shown, check_stats=check_stats)
    check_not_empty(manifest, shown)
    return manifest


def check_not_empty(manifest: Manifest, source: str) -> None:
    """A :class:`ManifestError` naming ``source`` (the manifest's path or URL) when the
    dataset holds no sample: older eofm versions wrote such a dataset when a build dropped
    every tile, and its null statistics otherwise surface far from here, as bands with "no
    usable statistics" that name no dataset."""
    if manifest.sample_count:
        return
    raise ManifestError(
        f"{source}: the dataset holds no samples (sample_count 0 in {len(manifest.shards)} "
        f"shards), so it has no pixels to read and no band statistics; it was written by an "
        f"older eofm that kept a build whose every tile was dropped (or by another tool): "
        f"rebuild it with `eofm-shard build`, which says why no tile passed the limits")


def read_local_manifest(dataset: str, loc: str) -> bytes:
    """The bytes of the local manifest ``loc`` of ``dataset``; :class:`ManifestError` when
    ``dataset`` is a file rather than a dataset folder, ``loc`` is a folder, or reading it is
    not permitted (``FileNotFoundError`` passes: the caller words it)."""
    try:
        return Path(loc).read_bytes()
    except NotADirectoryError:
        what = (f"{dataset}: expected a dataset folder holding {MANIFEST_NAME}, got a file"
                if Path(dataset).is_file() else
                f"{loc}: a part of this path is a file, not a folder; expected a dataset folder "
                f"holding {MANIFEST_NAME}")
        raise ManifestError(what) from None
    except IsADirectoryError:
        raise ManifestError(f"{loc}: expected the manifest file, got a folder") from None
    except PermissionError:
        raise ManifestError(f"{loc}: cannot read the manifest: permission denied") from None


def shard_url(dataset: str | Path, shard: ShardInfo) -> str:
    """Location of a shard relative to its dataset folder or URL."""
    base = str(dataset)
    if base.endswith(".json"):
        base = base.rsplit("/", 1)[0] if "/" in base else "."
    return base.rstrip("/") + "/" + shard.name
