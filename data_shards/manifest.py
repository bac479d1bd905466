"""``manifest.json``: the versioned contract between shard writers and readers.

A manifest lists every complete shard (sample count, bytes, sha256), the modalities with their
sensor (and, for a pool of band-compatible sensors, every sensor pooled), band names, dtype,
tile shape and per-band statistics, and the label space. Sensors that are not built in
(``--sensors-yaml``) are recorded with their definition in ``extra.user_sensors`` and
registered when the manifest is read, so the dataset is readable without that file; an id
already registered in the process with another definition (another dataset's sensor of the
same id) is a :class:`ManifestError` naming the differing fields. Only shards that were fully
written and renamed are ever listed; the manifest itself is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .outputs import write_failure

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
        if self.sensors is None:
            return []
        if not isinstance(self.sensors, list) or not self.sensors \
                or not all(isinstance(s, str) and s for s in self.sensors):
            return [f"{where}.sensors: expected a non-empty list of sensor ids, "
                    f"got {self.sensors!r}"]
        if self.sensors[0] != self.sensor:
            return [f"{where}.sensors: expected the modality's sensor {self.sensor!r} first, "
                    f"got {self.sensors}"]
        return []


@dataclass
class LabelInfo:
    """Label space: ``kind`` is ``class`` (int index), ``multilabel`` (multi-hot) or
    ``segmentation``."""

    kind: str
    classes: list[str]


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
    def from_dict(cls, d: dict[str, Any], *, source: str = "<dict>") -> Manifest:
        """Validate and build; every problem is reported at once, naming ``source``."""
        problems: list[str] = []
        if d.get("format") != FORMAT:
            problems.append(f"format: expected {FORMAT!r}, got {d.get('format')!r}")
        if d.get("format_version") != FORMAT_VERSION:
            problems.append(
                f"format_version: expected {FORMAT_VERSION}, got {d.get('format_version')!r}"
            )
        mods: dict[str, ModalityInfo] = {}
        for key, m in (d.get("modalities") or {}).items():
            try:
                mods[key] = ModalityInfo(**m)
            except TypeError as e:
                problems.append(f"modalities.{key}: {e}")
            else:
                problems += mods[key].problems(f"modalities.{key}")
        if not mods:
            problems.append("modalities: expected at least one modality, got none")
        shards: list[ShardInfo] = []
        for i, s in enumerate(d.get("shards") or []):
            try:
                shards.append(ShardInfo(**s))
            except TypeError as e:
                problems.append(f"shards[{i}]: {e}")
            else:
                problems += shard_name_problems(shards[-1].name, f"shards[{i}].name")
        labels = None
        if d.get("labels"):
            try:
                labels = LabelInfo(**d["labels"])
            except TypeError as e:
                problems.append(f"labels: {e}")
        if "sample_count" in d and shards and d["sample_count"] != sum(s.samples for s in shards):
            problems.append(
                f"sample_count: {d['sample_count']} disagrees with the shards' sum "
                f"{sum(s.samples for s in shards)}"
            )
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
    naming ``path`` (:func:`.outputs.write_failure`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception):
            raise write_failure(path, e) from e
        raise


def manifest_location(dataset: str) -> str:
    """Path or URL of the manifest for a dataset folder/URL (or the manifest itself)."""
    if dataset.endswith(".json"):
        return dataset
    return dataset.rstrip("/") + "/" + MANIFEST_NAME


def load_manifest(dataset: str | Path) -> Manifest:
    """Read the manifest of a dataset folder (or a path/URL to ``manifest.json``)."""
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
            raw = Path(loc).read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            f"{shown}: no manifest found; expected a dataset folder written by `eofm-shard build`"
        ) from None
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{shown}: manifest is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ManifestError(f"{shown}: expected a JSON object, got {type(d).__name__}")
    return Manifest.from_dict(d, source=shown)


def shard_url(dataset: str | Path, shard: ShardInfo) -> str:
    """Location of a shard relative to its dataset folder or URL."""
    base = str(dataset)
    if base.endswith(".json"):
        base = base.rsplit("/", 1)[0] if "/" in base else "."
    return base.rstrip("/") + "/" + shard.name
