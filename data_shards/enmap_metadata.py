"""EnMAP products: processing level and the per-scene ``METADATA.XML``, checked against the sensor.

The ``enmap_hsi`` sensor is Level-2A surface reflectance (int16 x 1e-4, nodata -32768). Level-1B
and Level-1C products hold top-of-atmosphere radiance with per-band gain/offset; read as
reflectance their statistics and normalisation would be silently wrong. :class:`EnmapProducts`
therefore finds each product's level and compares it with the level the sensor declares
(``processing_level``; ``L2A`` for ``enmap_hsi``):

- from the product name (``ENMAP01-____L1B-``, ``L1C-``, ``L2A-``, in the file name or else its
  folder's; an ``*SPECTRAL_IMAGE_VNIR.TIF``/``_SWIR.TIF`` detector file is L1B), and
- from the ``METADATA.XML`` beside it, when there is one (real products name it
  ``<product>-METADATA.XML``): the first of :data:`LEVEL_PATHS` that names a level.

A level other than the sensor's is refused (:class:`EnmapProductError`, naming the file, the
level found and where, and the level expected), as is a name that disagrees with its XML. A
sensor without an EnMAP level (a user sensor given with ``--sensor``) is not checked. A product
whose level cannot be told (HySpecNet patches may be renamed, and carry no XML) is accepted and
noted once per build (log warning).

With a ``METADATA.XML`` the per-band values under ``specific/bandCharacterisation/bandID``
(``wavelengthCenterOfBand``, ``FWHMOfBand``, ``GainOfBand``, ``OffsetOfBand``; bands in
``number`` order) are compared with the sensor's band table:

- a band count other than the file's (224 for ``enmap_hsi``) is refused;
- for L2A, a gain/offset other than the sensor's scale/offset (1e-4, 0) is refused, as is a
  nodata value other than the sensor's when the XML gives one (an element named
  ``noDataValue``/``nodata``: none of the readers consulted shows one, so it is optional);
- a centre wavelength more than :data:`WAVELENGTH_TOLERANCE_NM` off the nominal table is
  warned about once per build (largest deviation, its band and scene); more than
  :data:`WAVELENGTH_MISMATCH_NM` off is refused: that is not smile or calibration drift but
  other bands (e.g. another band order), which would pin wrong wavelengths on them.

Each item's ``meta.json`` records ``enmap_product``: the level and where it came from, the XML's
path, and the scene's largest absolute deviations from the nominal centre wavelengths and FWHM
(with their bands, and every band beyond the tolerance), so scenes that deviate can be found.
The wavelengths models see stay the registry's: nothing here changes the sensor, the model or
the spectral tokenizer.

The XML is parsed with :mod:`xml.etree.ElementTree` (expat; it never fetches external entities)
from at most :data:`MAX_METADATA_BYTES` (a real file is ~1 MB), and a document type declaration
(``<!DOCTYPE``/``<!ENTITY``, which no EnMAP product has) is refused before parsing, so entity
expansion cannot blow up either.

Where the XML paths come from: DLR's product format as read by the EnMAP-Box
(``enmapboxprocessing/algorithm/importenmapl2aalgorithm.py``:
``specific/bandCharacterisation/bandID/{wavelengthCenterOfBand,FWHMOfBand,GainOfBand,
OffsetOfBand}``), ESA SNAP's EnMAP reader (``/level_X/specific/bandCharacterisation/
bandID[@number=N]/...``, product type ``/level_X/base/format``) and GFZ EnPT's metadata writer
(``metadata/schema/processingLevel``, ``base/level``, ``base/format`` = ``ENMAP_<level>``,
``specific/code``; L2A ``GainOfBand`` = 1/10000, ``OffsetOfBand`` = 0).
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .sensors import Sensor

log = logging.getLogger(__name__)

ENMAP_LEVELS = ("L1B", "L1C", "L2A")
# ENMAP01-____L2A-DT0000004950_... ; the level is the product type after the mission/sensor id
LEVEL_IN_NAME_RE = re.compile(r"ENMAP\d{2}-_*(L1B|L1C|L2A)-", re.IGNORECASE)
LEVEL_IN_TEXT_RE = re.compile(r"(?<![A-Z0-9])(L1B|L1C|L2A)(?![A-Z0-9])", re.IGNORECASE)
# L1B products ship one file per detector; L1C and L2A one SPECTRAL_IMAGE
DETECTOR_FILE_RE = re.compile(r"SPECTRAL_IMAGE_(VNIR|SWIR)\.TIF$", re.IGNORECASE)
SPECTRAL_IMAGE_RE = re.compile(r"SPECTRAL_IMAGE(?:_VNIR|_SWIR)?\.TIF$", re.IGNORECASE)

# where a METADATA.XML names its level, first found wins (paths below the root ``level_X``)
LEVEL_PATHS = ("metadata/schema/processingLevel", "base/level", "base/format", "specific/code")
BAND_PATH = "specific/bandCharacterisation/bandID"
NODATA_TAGS = ("nodatavalue", "nodata")  # local names, any case, anywhere: optional

MAX_METADATA_BYTES = 50 * 1024 * 1024
# EnMAP's spectral calibration requirement is ~0.5 nm (VNIR) / ~1 nm (SWIR) (Guanter et al.
# 2015, Remote Sens. 7, 8830); 1.5 nm leaves room for that, the registry's rounding and
# scene-to-scene smile, and flags a scene whose calibration moved further.
WAVELENGTH_TOLERANCE_NM = 1.5
# beyond this (half the ~10 nm SWIR sampling, most of the ~6.5 nm VNIR sampling) a band is not
# the registry's band at all: refused
WAVELENGTH_MISMATCH_NM = 5.0
_REL_TOL = 1e-6  # gain/offset/nodata as written in text (1.0E-4, 0.0001)


class EnmapProductError(ValueError):
    """An EnMAP product the chosen sensor cannot read correctly."""


def level_from_name(name: str) -> str | None:
    """``L1B``/``L1C``/``L2A`` from an EnMAP product or file name; None when it names none."""
    m = LEVEL_IN_NAME_RE.search(name)
    return m.group(1).upper() if m else None


def is_enmap(sensor: Sensor) -> bool:
    """Whether ``sensor`` reads EnMAP products: a hyperspectral (``hsi``) sensor whose id or
    name says EnMAP (``enmap_hsi``, or a user's ``enmap_l1b``). Sentinel-2 shares the level
    names L1C and L2A, so the level alone does not tell."""
    return sensor.modality == "hsi" and "enmap" in f"{sensor.id} {sensor.name}".lower()


def expected_level(sensor: Sensor) -> str | None:
    """The EnMAP level an EnMAP sensor reads (its ``processing_level``); None for a sensor that
    is not EnMAP's (:func:`is_enmap`) or declares no EnMAP level."""
    level = (sensor.processing_level or "").upper()
    return level if is_enmap(sensor) and level in ENMAP_LEVELS else None


def metadata_xml_for(image: Path) -> Path | None:
    """The product's ``METADATA.XML`` beside ``image``: ``<product>-METADATA.XML`` (the image
    name with ``SPECTRAL_IMAGE[_VNIR|_SWIR].TIF`` replaced), else the folder's only
    ``*METADATA.XML``; None when there is none (or several that none of them matches)."""
    named = image.with_name(SPECTRAL_IMAGE_RE.sub("METADATA.XML", image.name))
    if named != image and named.is_file():
        return named
    found = sorted(p for p in image.parent.iterdir()
                   if p.is_file() and p.name.upper().endswith("METADATA.XML"))
    return found[0] if len(found) == 1 else None


@dataclass
class SceneMetadata:
    """What a ``METADATA.XML`` says: level and per-band values, in ``bandID`` number order
    (None where a band lacks the element)."""

    path: Path
    level: str | None
    level_path: str | None
    wavelength_nm: list[float | None]
    fwhm_nm: list[float | None]
    gain: list[float | None]
    offset: list[float | None]
    nodata: float | None = None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _number(text: str | None, path: Path, what: str) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise EnmapProductError(f"{path}: {what}: expected a number, got {text.strip()!r}") \
            from None


def read_metadata_xml(path: str | Path, max_bytes: int = MAX_METADATA_BYTES) -> SceneMetadata:
    """Parse an EnMAP ``METADATA.XML`` safely (size capped, no DTD, no entity resolution)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise EnmapProductError(f"{path}: METADATA.XML is {size / 2**20:.1f} MiB, more than the "
                                f"{max_bytes / 2**20:.0f} MiB an EnMAP product's metadata can be "
                                "(~1 MB); refused without parsing it")
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the stat
        raise EnmapProductError(f"{path}: METADATA.XML is larger than {max_bytes} bytes; refused")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise EnmapProductError(f"{path}: METADATA.XML declares a document type or entities "
                                "(<!DOCTYPE/<!ENTITY), which EnMAP metadata never does; refused "
                                "without parsing it")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise EnmapProductError(f"{path}: METADATA.XML is not well-formed XML ({e})") from None
    for el in root.iter():  # tolerate a default namespace
        if isinstance(el.tag, str):
            el.tag = _local(el.tag)
    level = level_path = None
    for p in LEVEL_PATHS:
        m = LEVEL_IN_TEXT_RE.search(root.findtext(p) or "")
        if m:
            level, level_path = m.group(1).upper(), p
            break
    bands = root.findall(BAND_PATH)
    try:  # in ``number`` order; without numbers, in document order
        numbers: list[int] | None = [int(b.get("number", "")) for b in bands]
    except ValueError:
        numbers = None
    if numbers is not None:
        if sorted(numbers) != list(range(1, len(bands) + 1)):
            raise EnmapProductError(f"{path}: {BAND_PATH} numbers: expected 1..{len(bands)}, got "
                                    f"{sorted(numbers)[:5]}...")
        bands = [b for _, b in sorted(zip(numbers, bands, strict=True), key=lambda t: t[0])]

    def per_band(tag: str) -> list[float | None]:
        """Each band's value of ``tag`` (None where the XML leaves it out)."""
        return [_number(b.findtext(tag), path, f"{BAND_PATH}[{i + 1}]/{tag}")
                for i, b in enumerate(bands)]

    nodata = next((_number(el.text, path, el.tag) for el in root.iter()
                   if isinstance(el.tag, str) and el.tag.lower() in NODATA_TAGS), None)
    return SceneMetadata(path, level, level_path, per_band("wavelengthCenterOfBand"),
                         per_band("FWHMOfBand"), per_band("GainOfBand"), per_band("OffsetOfBand"),
                         nodata)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-12)


def _band_list(names: Sequence[str]) -> str:
    return ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")


@dataclass
class EnmapProducts:
    """Checks the EnMAP products of one build for ``sensor`` reading ``file_bands`` from each
    file; collects what is warned about once per build (:meth:`warn`)."""

    sensor: Sensor
    file_bands: list[str]
    unknown_level: list[Path] = field(default_factory=list)
    deviating: list[tuple[float, str, Path]] = field(default_factory=list)  # (nm, band, xml)

    def check(self, image: Path) -> dict:
        """Check one product (its spectral image); the ``enmap_product`` record for its items.
        EnmapProductError when the sensor cannot read it correctly."""
        want = expected_level(self.sensor)
        found: dict[str, str] = {}  # where -> level
        if DETECTOR_FILE_RE.search(image.name):
            found["file name (an L1B detector file)"] = "L1B"
        name_level = level_from_name(image.name) or level_from_name(image.parent.name)
        if name_level:
            found["product name"] = name_level
        xml_path = metadata_xml_for(image)
        meta = read_metadata_xml(xml_path) if xml_path is not None else None
        if meta is not None and meta.level:
            found[f"METADATA.XML {meta.level_path}"] = meta.level
        if len(set(found.values())) > 1:
            said = "; ".join(f"{w}: {lv}" for w, lv in found.items())
            raise EnmapProductError(f"{image}: its processing level is contradictory ({said}); "
                                    "expected one EnMAP product per folder with its own metadata")
        level = next(iter(found.values()), None)
        if want is not None and level is not None and level != want:
            raise EnmapProductError(
                f"{image}: EnMAP {level} product (from the {' and '.join(found)}), but sensor "
                f"{self.sensor.id} expects {want}"
                + (" surface reflectance (int16 x 1e-4, nodata -32768)" if want == "L2A" else "")
                + f": {level} holds "
                + ("top-of-atmosphere radiance with per-band gain/offset, " if level != "L2A"
                   else "other values, ")
                + "and its statistics and normalisation would be silently wrong. Use the "
                f"{want} product, or pass --sensor with a sensor defined for {level} "
                "(--sensors-yaml)")
        if level is None:
            self.unknown_level.append(image)
        record: dict = {"level": level, "level_from": list(found) or None,
                        "metadata_xml": str(xml_path) if xml_path is not None else None}
        if meta is not None and not DETECTOR_FILE_RE.search(image.name):
            record.update(self._check_bands(image, meta, level))
        return {k: v for k, v in record.items() if v is not None}

    def _check_bands(self, image: Path, meta: SceneMetadata, level: str | None) -> dict:
        """Compare the XML's per-band values with the sensor's bands read from the file."""
        n = len(self.file_bands)
        if len(meta.wavelength_nm) != n:
            raise EnmapProductError(
                f"{meta.path}: {len(meta.wavelength_nm)} bands in {BAND_PATH}, but {image.name} "
                f"is read as {n} bands of sensor {self.sensor.id}; expected {n}: this is not "
                "the product the band table describes")
        bands = [self.sensor.band(b) for b in self.file_bands]
        if level == "L2A":
            for what, got, want in (("GainOfBand", meta.gain, [b.scale for b in bands]),
                                    ("OffsetOfBand", meta.offset, [b.offset for b in bands])):
                bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True))
                       if g is not None and not _close(g, w)]
                if bad:
                    i = bad[0]
                    raise EnmapProductError(
                        f"{meta.path}: {what} {got[i]:g} for band {bands[i].name} "
                        f"({len(bad)} band(s): {_band_list([bands[j].name for j in bad])}), but "
                        f"sensor {self.sensor.id} reads pixels x {bands[i].scale:g} "
                        f"{bands[i].offset:+g} ({what.replace('OfBand', '').lower()} "
                        f"{want[i]:g}): its reflectance would be silently mis-scaled")
            nodata = bands[0].nodata
            if meta.nodata is not None and (nodata is None or not _close(meta.nodata, nodata)):
                raise EnmapProductError(
                    f"{meta.path}: no-data value {meta.nodata:g}, but sensor {self.sensor.id} "
                    f"expects {nodata}: fill pixels would enter the statistics as data")
        record: dict = {"wavelength_tolerance_nm": WAVELENGTH_TOLERANCE_NM}
        devs = [(abs(w - b.center_wavelength_nm), w, b) for w, b in zip(meta.wavelength_nm, bands,
                                                                           strict=True)
                if w is not None and b.center_wavelength_nm is not None]
        if devs:
            dev, wl, band = max(devs, key=lambda d: d[0])
            if dev > WAVELENGTH_MISMATCH_NM:
                scene = sorted(w for w in meta.wavelength_nm if w is not None)
                nominal = sorted(b.center_wavelength_nm for _, _, b in devs)
                hint = (" The scene lists the same wavelengths in another band order."
                        if len(scene) == len(nominal) and all(
                            abs(a - b) <= WAVELENGTH_TOLERANCE_NM
                            for a, b in zip(scene, nominal, strict=True)) else "")
                raise EnmapProductError(
                    f"{meta.path}: band {band.name} has centre wavelength {wl:g} nm, sensor "
                    f"{self.sensor.id} says {band.center_wavelength_nm:g} nm ({dev:.2f} nm off, "
                    f"more than {WAVELENGTH_MISMATCH_NM:g} nm): not calibration drift but other "
                    f"bands, whose wavelengths would be wrong.{hint} Define a sensor for this "
                    "product (--sensors-yaml, --sensor)")
            record["wavelength_max_abs_dev_nm"] = round(dev, 4)
            record["wavelength_max_dev_band"] = band.name
            beyond = {b.name: round(w - b.center_wavelength_nm, 4) for d, w, b in devs
                      if d > WAVELENGTH_TOLERANCE_NM}
            if beyond:
                record["wavelength_dev_beyond_tolerance_nm"] = beyond
                self.deviating.append((dev, band.name, meta.path))
        fw = [(abs(f - b.bandwidth_nm), b.name) for f, b in zip(meta.fwhm_nm, bands, strict=True)
              if f is not None and b.bandwidth_nm is not None]
        if fw:
            dev, name = max(fw)
            record["fwhm_max_abs_dev_nm"], record["fwhm_max_dev_band"] = round(dev, 4), name
        return record

    def warn(self) -> None:
        """Log, once each, the products whose level could not be checked and the scenes whose
        centre wavelengths deviate beyond the tolerance."""
        if self.unknown_level and expected_level(self.sensor) is not None:
            log.warning("%d EnMAP product(s) name no processing level (no ENMAP01-____L2A- in the "
                        "name, no METADATA.XML beside them), e.g. %s: read as %s for sensor %s "
                        "without checking; L1B/L1C radiance would be mis-read as reflectance",
                        len(self.unknown_level), self.unknown_level[0],
                        expected_level(self.sensor), self.sensor.id)
        if self.deviating:
            dev, band, path = max(self.deviating)
            log.warning("%d EnMAP scene(s) have centre wavelengths more than %g nm off sensor %s's "
                        "nominal table; largest %.2f nm at band %s in %s. Models use the nominal "
                        "wavelengths; each sample's meta.json records the deviation "
                        "(enmap_product)", len(self.deviating), WAVELENGTH_TOLERANCE_NM,
                        self.sensor.id, dev, band, path)
