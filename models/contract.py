"""The input contract an encoder carries: what its input must look like, and a check against a batch.

Wrong band order and wrong normalisation are the commonest silent failures with pretrained EO
encoders; :func:`check_input` names every difference between the contract and a batch's metadata.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass
class InputContract:
    """What an encoder expects. Empty ``bands`` means any bands (wavelength-conditioned tokenizer);
    so does ``any_bands``, with ``bands`` then the bands the encoder was trained on."""

    sensors: tuple[str, ...] = ()
    """Sensor ids the encoder was trained on, e.g. ("sentinel2_l2a",)."""
    bands: tuple[str, ...] = ()
    """Band names in input channel order (with ``any_bands``: the bands it was trained on)."""
    wavelengths: tuple[float, ...] | None = None
    """Centre wavelength per band, nm (SAR: the radar wavelength stand-in)."""
    bandwidths: tuple[float, ...] | None = None
    """Bandwidth per band, nm (SAR: the polarisation code stand-in)."""
    gsd: float | None = None
    """Ground sample distance of the input, m."""
    units: str | tuple[str | None, ...] | None = None
    """Pixel units before normalisation, e.g. "reflectance x 10000", "dB": one for every band,
    or one per band (None: not known) when the bands' units differ, as in a stacked
    Sentinel-2 + Sentinel-1 input (DN for the optical bands, dB for the radar ones)."""
    processing_level: str | None = None
    """e.g. "L1C", "L2A", "GRD"; pretraining data pooled or stacked from several levels joins
    them with "+" in the order of ``sensors`` ("L2A+L1 GRD" for "s2_l2a+s1_grd"; contracts
    written before that sorted them), and a batch of any one of them (or a "+"-join of some)
    matches."""
    nodata: float | tuple[float | None, ...] | None = None
    """Raw pixel value that marks missing data: one number for every band, or one value per
    band (None: that band has none) when the bands' values differ, as in a stacked
    Sentinel-2 + Sentinel-1 input (0 for the optical bands, none for the radar ones). A pixel
    equal to its band's value in any band is normalised to 0
    (:func:`eofm.models.normalise_input`). None: no nodata value (in contracts written
    before per-band values: also bands whose values differed); a NaN or infinite value is kept
    as None (non-finite float pixels are invalid whatever the nodata value)."""
    normalisation: str | None = None
    """Normalisation method, e.g. "meanstd" or "percentile" (as eofm.data_shards names them)."""
    stats: dict[str, dict[str, float]] | None = None
    """Per-band statistics used to normalise: {band: {"mean": .., "std": .., ...}}."""
    input_size: tuple[int, int] | None = None
    """(H, W) the encoder was trained at."""
    patch_size: int | None = None
    """Patch size; any input size must be a multiple of it."""
    objective: str | None = None
    """Pretraining objective, e.g. "mae"."""
    data: str | None = None
    """Pretraining data, e.g. a dataset name and version."""
    any_bands: bool = field(default=False, compare=False)
    """True when the encoder takes any subset of ``bands``, in any order, each band fed with its
    wavelength and bandwidth (a wavelength-conditioned tokenizer): ``bands`` are then the bands
    it was trained on, whose statistics normalise those given (:meth:`subset`), not a required
    channel list. Set by the encoder from its tokenizer (:func:`encoder_contract`), not stored:
    :meth:`to_dict` leaves it out, so config.json and reports keep their fields, and it does
    not take part in ``==``."""

    def __post_init__(self) -> None:
        """Coerce sequences to tuples and validate; every problem is reported at once."""
        self.sensors = name_tuple(self.sensors, "InputContract.sensors", "sensor ids")
        self.bands = name_tuple(self.bands, "InputContract.bands")
        for name in ("wavelengths", "bandwidths"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(float(v) for v in value))
        if self.input_size is not None:
            self.input_size = pair_size(self.input_size)
        if self.stats is not None:
            self.stats = {str(b): dict(s) for b, s in self.stats.items()}
        self.any_bands = bool(self.any_bands)
        problems = []
        self.nodata = _checked_nodata(self.nodata, len(self.bands), problems)
        self.units = _checked_units(self.units, len(self.bands), problems)
        for name in ("wavelengths", "bandwidths"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.bands):
                problems.append(f"{name}: expected {len(self.bands)} values (one per band), "
                                f"got {len(value)}")
        if len(set(self.bands)) != len(self.bands):
            problems.append(f"bands: names must be unique, got {list(self.bands)}")
        if self.stats is not None and self.bands:
            missing = [b for b in self.bands if b not in self.stats]
            if missing:
                problems.append(f"stats: no entry for bands {missing}")
        problems += _stats_problems(self.stats, self.normalisation) + _gsd_problems(self.gsd)
        if self.patch_size is not None and self.patch_size <= 0:
            problems.append(f"patch_size: expected a positive int, got {self.patch_size}")
        elif self.input_size is not None and (min(self.input_size) <= 0 or (
                self.patch_size and any(v % self.patch_size for v in self.input_size))):
            what = f"multiples of patch_size {self.patch_size}" if self.patch_size else "sizes"
            problems.append(f"input_size: expected positive {what}, got {self.input_size}")
        if problems:
            raise ValueError("invalid InputContract: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) of the stored fields (not ``any_bands``)."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()
                if k not in _NOT_STORED}

    def band_nodata(self, band: str) -> float | None:
        """The raw nodata value of ``band``: the one number of the contract (for any band), or
        the band's own from a per-band ``nodata`` (None for a band it does not hold)."""
        if not isinstance(self.nodata, tuple):
            return self.nodata
        return self.nodata[self.bands.index(band)] if band in self.bands else None

    def band_units(self, band: str) -> str | None:
        """The units of ``band``'s raw pixels: the one string of the contract (for any band),
        or the band's own from per-band ``units`` (None for a band it does not hold)."""
        if not isinstance(self.units, tuple):
            return self.units
        return self.units[self.bands.index(band)] if band in self.bands else None

    def subset(self, bands: Sequence[str]) -> InputContract:
        """This contract for ``bands``, some of its own in any order: each band's wavelength,
        bandwidth, statistics and (per-band) nodata value and units follow it; every other
        field is kept. For an encoder that takes any bands (``any_bands``) it is the contract
        of an input with only those bands, e.g. ``normalise_input(raw, contract.subset(names))``.
        A ValueError names the bands the contract lacks."""
        names = name_tuple(bands, "bands")
        unknown = [b for b in names if b not in self.bands]
        if unknown or not names:
            raise ValueError(f"bands: expected some of the contract's bands {list(self.bands)}, "
                             f"got {list(names)}" + (f" ({unknown} not among them)"
                                                     if unknown else ""))
        at = [self.bands.index(b) for b in names]

        def pick(values: tuple[float | None, ...] | None) -> tuple[float | None, ...] | None:
            return None if values is None else tuple(values[i] for i in at)

        stats = None if self.stats is None else {b: dict(self.stats[b]) for b in names
                                                 if b in self.stats}
        nodata = pick(self.nodata) if isinstance(self.nodata, tuple) else self.nodata
        units = pick(self.units) if isinstance(self.units, tuple) else self.units
        return replace(self, bands=names, wavelengths=pick(self.wavelengths),
                       bandwidths=pick(self.bandwidths), stats=stats, nodata=nodata,
                       units=units)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "InputContract") -> InputContract:
        """Inverse of :meth:`to_dict`. Every problem is a ValueError that names ``where`` (what
        holds the dict, e.g. ``"FOLDER/config.json: eofm_contract"``) and the field: not a
        mapping, unknown keys, a single string for ``bands``/``sensors``, values of the wrong
        type or that disagree."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected a mapping of contract fields, got a "
                             f"{type(d).__name__}")
        known = {f.name for f in fields(cls)} - _NOT_STORED
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {sorted(known)}")
        for name, what in (("sensors", "sensor ids"), ("bands", "band names")):
            if d.get(name) is not None:
                name_tuple(d[name], f"{where}.{name}", what)
        wrong = [f"{where}.{k}: expected {_FIELD_TYPES[k][1]}, got {type(v).__name__} "
                 f"{v!r:.60}" for k, v in d.items()
                 if v is not None and not _FIELD_TYPES[k][0](v)]
        if wrong:
            raise ValueError("; ".join(wrong))
        bad = (_stats_problems(d.get("stats"), d.get("normalisation"), f"{where}.stats")
               + _gsd_problems(d.get("gsd"), f"{where}.gsd"))
        if bad:
            raise ValueError("; ".join(bad))
        try:
            return cls(**d)
        except ValueError as e:
            if where == "InputContract":
                raise
            raise ValueError(f"{where}: {e}") from None
        except (TypeError, AttributeError) as e:  # e.g. a number where a list belongs
            raise ValueError(f"{where}: a field has the wrong type ({e})") from None


_NOT_STORED = frozenset({"any_bands"})  # fields derived from the encoder, not from config.json


def _listlike(v: object) -> bool:
    """A list, tuple or array of values (not a string or a mapping)."""
    return isinstance(v, Iterable) and not isinstance(v, (str, bytes, Mapping))


def _is_number(v: object) -> bool:
    """A real number (a bool is not one)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _stats_problems(stats: Mapping[str, Any] | None, normalisation: str | None,
                   at: str = "stats") -> list[str]:
    """What makes per-band ``stats`` ({band: {statistic: value}}) unusable to normalise with,
    one message per value, each naming ``at.<band>.<statistic>``: a value that is not a
    finite number (null is allowed: a statistic not recorded), a ``std`` <= 0, and, for
    ``percentile`` normalisation, a ``p98`` not above ``p2`` (a scale <= 0). Such statistics
    would give NaN inputs or silently flip a band's sign (``(x - mean) / std``)."""
    out: list[str] = []
    for band, entry in (stats or {}).items():
        if not isinstance(entry, Mapping):
            continue  # not a mapping: refused as a wrong type where the dict is read
        for key, v in entry.items():
            if v is not None and not (_is_number(v) and math.isfinite(v)):
                out.append(f"{at}.{band}.{key}: expected a finite number (or null), got "
                           f"{type(v).__name__} {v!r:.40}")
            elif key == "std" and v is not None and v <= 0:
                out.append(f"{at}.{band}.std: expected a standard deviation > 0 to normalise "
                           f"with, got {v!r}")
        lo, hi = entry.get("p2"), entry.get("p98")
        if (normalisation == "percentile" and _is_number(lo) and _is_number(hi)
                and math.isfinite(lo) and math.isfinite(hi) and hi - lo <= 0):
            out.append(f"{at}.{band}.p98: expected a value above p2 ({lo!r}) for percentile "
                       f"normalisation (scale p98 - p2 > 0), got {hi!r}")
    return out


def _gsd_problems(gsd: object, at: str = "gsd") -> list[str]:
    """A message naming ``at`` unless ``gsd`` is None or a finite number of metres > 0."""
    if gsd is None or (_is_number(gsd) and math.isfinite(gsd) and gsd > 0):  # type: ignore[arg-type,operator]
        return []
    return [f"{at}: expected a finite number of metres > 0 (or null), got {gsd!r:.40}"]


def _checked_nodata(value: object, n_bands: int, problems: list[str]
                    ) -> float | tuple[float | None, ...] | None:
    """``InputContract.nodata`` as stored: None or a number unchanged (old contracts keep
    their exact value), a per-band list as a tuple of floats and Nones; a value that is not
    finite (NaN, +-inf) becomes None (:func:`_finite_or_none`). A list that is not one number
    or None per band (``n_bands`` of them) is a problem appended to ``problems`` (the value
    then comes back unchanged)."""
    if value is None or isinstance(value, numbers.Real):
        return _finite_or_none(value)
    if not _listlike(value):
        problems.append(f"nodata: expected a number, or a list of one number or null per band, "
                        f"got {type(value).__name__} {value!r:.60}")
        return value
    values = list(value)
    wrong = [v for v in values if v is not None and not _is_number(v)]
    if wrong:
        problems.append(f"nodata: expected one number or null per band, got {wrong!r:.60} "
                        f"among {values!r:.80}")
        return value
    if len(values) != n_bands or not values:
        problems.append(f"nodata: expected {n_bands} values (one per band), got {len(values)}"
                        + ("" if n_bands else "; a contract without bands takes one number"))
        return value
    return tuple(_finite_or_none(None if v is None else float(v)) for v in values)


def _checked_units(value: object, n_bands: int, problems: list[str]
                   ) -> str | tuple[str | None, ...] | None:
    """``InputContract.units`` as stored: None or a string unchanged, a per-band list as a
    tuple of strings and Nones. A list that is not one string or None per band (``n_bands``
    of them) is a problem appended to ``problems`` (the value then comes back unchanged)."""
    if value is None or isinstance(value, str) or not _listlike(value):
        return value  # a wrong type is refused where the dict is read (from_dict)
    values = list(value)
    if any(v is not None and not isinstance(v, str) for v in values):
        problems.append(f"units: expected one string or null per band, got {values!r:.80}")
        return value
    if len(values) != n_bands or not values:
        problems.append(f"units: expected {n_bands} values (one per band), got {len(values)}"
                        + ("" if n_bands else "; a contract without bands takes one string"))
        return value
    return tuple(values)


def _finite_or_none(value: float | None) -> float | None:
    """A nodata value as the contract keeps it: None for one that is not finite. A NaN nodata
    says no more than None: normalising masks every non-finite pixel of float data as invalid
    anyway (``eofm.models.normalise._band_nodata``: ``~torch.isfinite(x)`` for float pixels;
    integer pixels hold none). Kept as NaN it was written to config.json as ``NaN`` (not
    JSON: the Hub's parser refuses it) and, as NaN != NaN, made a contract unequal to
    itself after a round trip."""
    if value is not None and not math.isfinite(value):
        return None
    return value


_LIST = (_listlike, "a list")
_NUMBER = (lambda v: isinstance(v, numbers.Real), "a number")
_NODATA = (lambda v: isinstance(v, numbers.Real) or (
    _listlike(v) and all(x is None or _is_number(x) for x in v)),
    "a number, or a list of one number or null per band")
_TEXT = (lambda v: isinstance(v, str), "a string")
_UNITS = (lambda v: isinstance(v, str) or (
    _listlike(v) and all(x is None or isinstance(x, str) for x in v)),
    "a string, or a list of one string or null per band")
_FIELD_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "sensors": _LIST, "bands": _LIST, "wavelengths": _LIST, "bandwidths": _LIST, "gsd": _NUMBER,
    "units": _UNITS, "processing_level": _TEXT, "nodata": _NODATA, "normalisation": _TEXT,
    "stats": (lambda v: isinstance(v, Mapping), "a mapping {band: {statistic: value}}"),
    "input_size": (lambda v: isinstance(v, numbers.Integral) or _listlike(v),
                   "a size or a list [H, W]"),
    "patch_size": (lambda v: isinstance(v, numbers.Integral), "an integer"),
    "objective": _TEXT, "data": _TEXT,
}  # what :meth:`InputContract.from_dict` accepts per field (None is always allowed)


def name_tuple(value: Sequence[str], field: str, what: str = "band names") -> tuple[str, ...]:
    """``value`` as a tuple of names; a single string (which would split into its characters,
    "B02" -> "B", "0", "2") is refused with a ValueError naming ``field``."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{field}: expected a list of {what}, got the string {value!r}; "
                         f"write [{value!r}] for a single one")
    return tuple(value)


def encoder_contract(contract: InputContract | None, bands: tuple[str, ...],
                     input_size: tuple[int, int], patch_size: int, owner: str) -> InputContract:
    """``contract`` checked against an encoder's bands, input size (its ``img_size``) and patch
    size (``owner`` names what fixes them in errors), or a minimal contract from those when
    None. What the given contract leaves out and the encoder knows is filled in (a copy): its
    ``bands`` (when the encoder has fixed bands; empty bands would mean "any bands" and switch
    the band check off), ``input_size`` and ``patch_size``. The contract returned has
    ``any_bands`` from the owner: True for empty ``bands`` (it takes any bands: a
    wavelength-conditioned tokenizer), False otherwise (a copy when the given one said
    otherwise). Every mismatch is reported in one ValueError, as is a contract that does not
    hold with the encoder's bands filled in (e.g. ``stats`` without an entry for one)."""
    if contract is None:
        return InputContract(bands=bands, input_size=input_size, patch_size=patch_size,
                             any_bands=not bands)
    problems = []
    if bands and contract.bands and tuple(contract.bands) != bands:
        problems.append(f"bands {list(contract.bands)} differ from the {owner}'s {list(bands)}")
    if contract.patch_size is not None and contract.patch_size != patch_size:
        problems.append(f"patch_size {contract.patch_size} differs from the {owner}'s "
                        f"{patch_size}")
    size = contract.input_size
    if size is not None and (size[0] % patch_size or size[1] % patch_size):
        problems.append(f"input_size {size} is not a multiple of the {owner}'s patch size "
                        f"{patch_size}")
    if size is not None and tuple(size) != tuple(input_size):
        problems.append(f"input_size {size} differs from the encoder's img_size "
                        f"{tuple(input_size)} (build it with img_size={list(size)}, or give "
                        f"the contract input_size={list(input_size)})")
    if problems:
        raise ValueError("contract: " + "; ".join(problems))
    return _filled(contract, bands, input_size, patch_size, owner)


def _filled(contract: InputContract, bands: tuple[str, ...], input_size: tuple[int, int],
            patch_size: int, owner: str) -> InputContract:
    """``contract`` with the encoder's ``bands`` (when it has fixed bands), ``input_size`` and
    ``patch_size`` where it has none, and ``any_bands`` from the encoder (empty ``bands``); the
    same object when nothing changes. A contract invalid with these filled in is a ValueError
    naming what was filled in from the ``owner``."""
    fill: dict[str, Any] = {}
    if bands and not contract.bands:
        fill["bands"] = tuple(bands)
    if contract.input_size is None:
        fill["input_size"] = tuple(input_size)
    if contract.patch_size is None:
        fill["patch_size"] = patch_size
    takes_any = not bands
    if contract.any_bands != takes_any:
        fill["any_bands"] = takes_any
    if not fill:
        return contract
    try:
        return replace(contract, **fill)
    except ValueError as e:
        given = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}"
                          for k, v in fill.items() if k != "any_bands")
        raise ValueError(f"contract: with the {owner}'s {given} filled in (the contract gives "
                         f"none): {e}") from None


def pair_size(size: int | Sequence[int]) -> tuple[int, int]:
    """int or (H, W) -> (H, W)."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _differs(a: float, b: float, rtol: float) -> bool:
    """True when a and b differ beyond rtol (relative to the larger magnitude)."""
    return not math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)


def _both_nan(a: object, b: object) -> bool:
    """True when a and b are both float NaN (a NaN nodata value matches a NaN nodata value)."""
    return all(isinstance(v, float) and math.isnan(v) for v in (a, b))


def _levels(level: str) -> set[str]:
    """The levels of a processing level, "+"-joined for pooled data ("L1C+L2A")."""
    return {p.strip() for p in str(level).split("+") if p.strip()}


def _check_bands(expected: Sequence[str], bands: Sequence[str], any_bands: bool = False
                 ) -> list[str]:
    """Missing, unexpected and reordered bands; with ``any_bands`` (the encoder takes any of
    ``expected`` in any order) unexpected ones only: they have no statistics."""
    extra = [b for b in bands if b not in expected]
    unexpected = ([f"unexpected band(s) {extra} not in the contract {list(expected)}"]
                  if extra else [])
    if any_bands:
        return unexpected
    out = []
    missing = [b for b in expected if b not in bands]
    if missing:
        out.append(f"missing band(s) {missing}: the contract expects {list(expected)}, "
                   f"the batch has {list(bands)}")
    out += unexpected
    common_expected = [b for b in expected if b in bands]
    common_given = [b for b in bands if b in expected]
    if common_expected != common_given:
        out.append(f"different band order: the contract expects {common_expected}, "
                   f"the batch has {common_given}")
    return out


def _check_stats(contract: InputContract, bands: Sequence[str] | None,
                 stats: Mapping[str, Mapping[str, float]] | None, rtol: float) -> list[str]:
    """Statistics absent on either side (a band's entry missing or empty), of different kinds
    (no statistic in common, e.g. percentiles against mean/std), or different beyond rtol;
    nothing when the caller gave no ``stats`` (None: not checked, like every other argument of
    :func:`check_input`)."""
    if stats is None:
        return []
    if contract.stats is None:
        return ["statistics absent: the contract carries no normalisation statistics, so the "
                "batch's normalisation cannot be verified"]
    out = []
    names = list(bands) if bands is not None else list(contract.stats)
    absent = [b for b in names if b in contract.stats and b not in stats]
    if absent:
        out.append(f"statistics absent for band(s) {absent} in the batch's statistics")
    for b in names:
        if b not in contract.stats or b not in stats:
            continue
        ours = {k: v for k, v in contract.stats[b].items() if v is not None}
        theirs = {k: v for k, v in (stats[b] or {}).items() if v is not None}
        if not theirs:
            out.append(f"statistics absent for band {b!r} in the batch's statistics (an "
                       f"empty entry; the contract has {sorted(ours)})")
            continue
        if not ours:
            out.append(f"statistics absent for band {b!r} in the contract (an empty entry), "
                       f"so the batch's {sorted(theirs)} cannot be verified")
            continue
        if not set(ours) & set(theirs):  # e.g. p2/p98 against mean/std: nothing compared
            out.append(f"statistics of a different kind for band {b!r}: the contract has "
                       f"{sorted(ours)}, the batch {sorted(theirs)} (no statistic in common, "
                       f"so the normalisation cannot be verified)")
            continue
        for key, ref in ours.items():
            got = theirs.get(key)
            if got is None:
                continue
            if _differs(float(got), float(ref), rtol):
                out.append(f"statistics differ for band {b!r} {key}: contract {ref:g}, "
                           f"batch {float(got):g}")
    return out


def _same_nodata(a: float | None, b: float | None) -> bool:
    """Whether two nodata values agree: equal, both NaN, or either unknown (None)."""
    return a is None or b is None or a == b or _both_nan(a, b)


def _check_nodata(contract: InputContract, bands: Sequence[str] | None,
                  nodata: float | Sequence[float | None] | None) -> list[str]:
    """The batch's ``nodata`` (one number, or one value per band of ``bands``) against the
    contract's, band by band for the bands both have; a band without a value on either side
    (None) is not compared. Two single numbers give the message they always gave."""
    if nodata is None or contract.nodata is None:
        return []
    if not _listlike(nodata) and not isinstance(contract.nodata, tuple):
        return ([] if _same_nodata(nodata, contract.nodata) else
                [f"different nodata: the contract expects {contract.nodata!r}, the batch has "
                 f"{nodata!r}"])
    if _listlike(nodata):
        values = list(nodata)
        if bands is None or len(values) != len(bands):
            raise ValueError(f"nodata: a per-band list needs bands= of as many names, got "
                             f"{len(values)} values and "
                             + ("no bands" if bands is None else f"{len(bands)} bands"))
        names = list(bands)
    else:
        names = list(bands) if bands is not None else list(contract.bands)
        values = [nodata] * len(names)
    pairs = [(b, contract.band_nodata(b), v) for b, v in zip(names, values, strict=True)
             if not contract.bands or b in contract.bands]
    differ = [(b, ref, got) for b, ref, got in pairs if not _same_nodata(ref, got)]
    if not differ:
        return []
    refs, gots = [d[1] for d in differ], [d[2] for d in differ]
    uniform = len({repr(r) for r in refs}) == 1 and len({repr(g) for g in gots}) == 1
    if uniform and len(differ) == len(pairs):  # every band: one value against another
        return [f"different nodata: the contract expects {refs[0]!r}, the batch has "
                f"{gots[0]!r}"]
    return [f"different nodata for band(s) {[d[0] for d in differ]}: the contract expects "
            f"{refs}, the batch has {gots}"]


def _check_band_units(contract: InputContract, bands: Sequence[str] | None,
                      units: str | None) -> list[str]:
    """The batch's ``units`` (one string) against a contract's per-band units, for the
    contract bands among ``bands`` (every contract band when None); a band whose units the
    contract does not know (None) is not compared."""
    if units is None:
        return []
    names = [b for b in (contract.bands if bands is None else bands) if b in contract.bands]
    differ = [(b, u) for b in names if (u := contract.band_units(b)) is not None and u != units]
    if not differ:
        return []
    return [f"different units for band(s) {[b for b, _ in differ]}: the contract expects "
            f"{[u for _, u in differ]}, the batch has {units!r}"]


def check_input(contract: InputContract, *, bands: Sequence[str] | None = None,
                size: int | Sequence[int] | None = None,
                stats: Mapping[str, Mapping[str, float]] | None = None,
                gsd: float | None = None,
                nodata: float | Sequence[float | None] | None = None,
                normalisation: str | None = None, units: str | None = None,
                processing_level: str | None = None, stats_rtol: float = 0.05,
                raise_on_mismatch: bool = False) -> list[str]:
    """Compare a batch's metadata with the contract; return one message per mismatch.

    Checks: missing/unexpected bands and band order (with ``contract.any_bands``, the encoder
    takes any of its bands in any order: unexpected bands only; no band check with empty
    ``contract.bands``),
    input size (different from the trained size, or not a multiple of the patch size),
    with ``stats`` given: statistics absent (on the contract, or for a band in ``stats``), of
    another kind (no statistic in common with the contract's) or different beyond
    ``stats_rtol``, and GSD/nodata/normalisation/units/processing level when both sides give them
    (a processing level matches a "+"-joined contract level that includes it; nodata is
    compared band by band, by name, when either side has one value per band: ``nodata`` may be
    one number or a list of one value per band of ``bands``, None for a band without one;
    ``units`` against a contract's per-band units are those of the bands given).
    ``stats`` uses the manifest form ``{band: {"mean": .., "std": ..}}``. ``bands`` is a list
    of names (a single string is refused, naming ``bands``). Arguments left None are not
    checked. With ``raise_on_mismatch`` a non-empty result raises one ValueError instead.
    """
    problems: list[str] = []
    if bands is not None:
        bands = list(name_tuple(bands, "bands"))
    if bands is not None and contract.bands:
        problems += _check_bands(contract.bands, list(bands), contract.any_bands)
    if size is not None:
        hw = pair_size(size)
        if contract.input_size is not None and hw != contract.input_size:
            problems.append(f"different size: the contract expects {contract.input_size}, "
                            f"the batch has {hw}")
        p = contract.patch_size
        if p and (hw[0] % p or hw[1] % p):
            problems.append(f"size {hw} is not a multiple of the patch size {p}")
    problems += _check_stats(contract, bands, stats, stats_rtol)
    if gsd is not None and contract.gsd is not None and _differs(gsd, contract.gsd, 0.01):
        problems.append(f"different GSD: the contract expects {contract.gsd:g} m, "
                        f"the batch has {gsd:g} m")
    problems += _check_nodata(contract, bands, nodata)
    if isinstance(contract.units, tuple):  # per band: the units of the bands given
        problems += _check_band_units(contract, bands, units)
    for name, value in (("normalisation", normalisation),
                        *(() if isinstance(contract.units, tuple) else (("units", units),)),
                        ("processing_level", processing_level)):
        ref = getattr(contract, name)
        if value is None or ref is None or value == ref or _both_nan(value, ref):
            continue
        if name == "processing_level" and _levels(value) <= _levels(ref):
            continue  # one of the levels the encoder was pretrained on
        problems.append(f"different {name}: the contract expects {ref!r}, the batch has {value!r}")
    if raise_on_mismatch and problems:
        raise ValueError("input does not match the encoder's contract: " + "; ".join(problems))
    return problems


__all__ = ["InputContract", "check_input"]
