"""``eofm-shard build``: raw archive folder -> webdataset shards (+ manifest) or a zarr store.

Items are written in a seeded random order (``order_seed``, default 0: a permutation of the
items sorted by key, drawn with ``numpy.random.default_rng(order_seed)``; ``None`` keeps key
order), so each shard holds a mix of the dataset (classes, regions) rather than a run of
neighbouring keys: a reader's shuffle buffer cannot mix a shard that holds one class. Keys are
unchanged; the tiles of one item stay together. The same inputs and options give the same
shards. The seed is in the plan record of every writer part (``order``), so a re-run or merge
never mixes writers of two orders. A zarr store is written in the same order (its statistics
equal a one-writer shard build's).

In write order, items are dealt round-robin to ``num_writers`` writers. Each writer writes its
own shards (``shard-WW-NNNNNN.tar``) and, once every shard is renamed into place, a part file
``.parts/writer-WW.json`` with its shard list, counters and mergeable statistics. The manifest
is the merge of all parts (:mod:`.merge`) and is written last, atomically. A writer can run in
its own process (``workers``) or on its own machine (``--writer-id``, then ``eofm-shard
merge``); a re-run skips writers whose part file is complete and checks out (the same plan
record: options, items, and the files and band order each item is read with), and never lists
a truncated shard.

Sentinel-2 inputs are written offset-free (reflectance x 10000): the plan decides each
product's processing-baseline offset (``s2_offset``: ``auto`` reads metadata or the product id,
``none`` or ``-1000`` force it; see :mod:`.s2_baseline`), ingest applies it, and the manifest's
``extra["s2_offset"]`` records per input what was found, where, and what was applied.

Several inputs pool into one dataset (``eofm-shard build A B ...``). A modality holds one band
list; inputs of different sensors pool into it only when band-compatible for those bands
(:func:`.pooling.pooling_problem`: e.g. Sentinel-2 L1C and L2A on their 12 shared bands, not
L1C's B10, never Sentinel-2 and Landsat). The manifest then keeps the first input's
``sensor`` and lists every sensor pooled in ``sensors``; each sample's ``meta.json`` names its
own sensor, and the counters ``samples[<modality>:<sensor>]`` give the mix.

A labelled dataset may hold unlabelled samples (e.g. EuroSAT class folders pooled with an
unlabelled scene): the class list is that of the labelled items, an unlabelled sample's shard
sample has no ``labels.npy`` and its zarr ``labels`` row is the fill value
(:func:`unlabelled_label`: class :data:`UNLABELLED_CLASS`, an all-zero multi-hot vector), and
the manifest's counter ``extra.counters[UNLABELLED_COUNTER]`` says how many there are.

With ``ingest.s1_linear_to_db`` (``--s1-linear-to-db``) the dB-declared modalities (Sentinel-1)
are converted from linear power at ingest; the manifest's ``extra["s1_linear_to_db"]`` says
which modalities and how (:func:`s1_db_record`).

``--out`` is checked before any input is read: it must lie apart from every input (neither an
input nor inside one: :func:`.build_out.check_out_apart`) and be a folder this job can
make; ``--overwrite`` removes only what a build writes and refuses a folder holding anything
else (:func:`.build_out.check_replaceable`). A build that fails or is interrupted removes the folders it
made while they are still empty; finished writers' shards and parts stay for the re-run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from . import s2_baseline
from .build_out import (
    PARTS,
    check_out_apart,
    check_replaceable,
    missing_folders,
    prepare_out,
    remove_if_empty,
)
from .codec import encode_json, encode_npy
from .ingest import (
    IngestOptions,
    ModalityPlan,
    TileSample,
    check_band_modalities,
    iter_tiles,
    plan_modality,
    stores_db,
)
from .layouts import LayoutOptions, SourceItem
from .manifest import LabelInfo, Manifest, atomic_write_text
from .manifest_fields import repeated
from .outputs import unwritable_reason
from .pooling import (
    discover_sources,
    input_of,
    modality_mismatch,
    pooling_problem,
    widen_hist_range,
)
from .sensors import get_sensor, user_sensor_records
from .stacking import Stack, stacked_stats_for
from .stats import BandStats
from .writer import ShardWriter, file_sha256

# The label of a sample without one in a labelled dataset, one convention for every format and
# reader (:func:`unlabelled_label`): a class dataset's is the class index UNLABELLED_CLASS (no
# class has it: indices are 0..K-1), a multilabel dataset's the all-zero multi-hot vector of
# MULTILABEL_DTYPE, the dtype every multi-hot label is written in (:func:`encode_label`).
UNLABELLED_CLASS = -1
MULTILABEL_DTYPE = np.dtype(np.uint8)
UNLABELLED_COUNTER = "unlabelled"  # build counter: samples of a labelled dataset without a label
# how readers (ShardDataset, ZarrDataset) give such a sample: "fill" with unlabelled_label, so
# every batch stacks (pretraining); "absent" without a label (evaluation refuses it, preview
# shows it unlabelled)
MISSING_LABELS = ("fill", "absent")


@dataclass
class BuildConfig:
    """Everything ``eofm-shard build`` was asked to do."""

    source: str
    out: str
    more_sources: list[str] = field(default_factory=list)  # further inputs, same layout rules
    layout: str | None = None
    format: str = "wds"  # "wds" | "zarr"
    ingest: IngestOptions = field(default_factory=IngestOptions)
    layout_options: LayoutOptions = field(default_factory=LayoutOptions)
    shard_bytes: int = 256 * 2**20
    shard_samples: int = 10_000
    workers: int = 1
    num_writers: int | None = None
    writer_id: int | None = None
    classes: list[str] | None = None
    overwrite: bool = False
    progress: bool = True
    s2_offset: str | list[str] = "auto"  # "auto" | "none" | "-1000", and/or "INPUT=MODE"
    #                                      entries: Sentinel-2 baseline offset (s2_baseline)
    stack: str | None = None  # "s2,s1[=NAME]": write paired modalities as one (stacking.py)
    order_seed: int | None = 0  # seed of the order items are written in (None: key order)

    def __post_init__(self) -> None:
        """Refuse counts that would be silently replaced or write nonsense (one-sample shards,
        an empty writer part); messages name the flag (``--shard-size`` is ``shard_bytes``,
        the others are the field names with dashes)."""
        _check_count("--shard-size (shard_bytes)", self.shard_bytes, 1,
                     "a positive number of bytes per shard, e.g. 256M")
        _check_count("--shard-samples", self.shard_samples, 1,
                     "a positive number of samples per shard")
        _check_count("--workers", self.workers, 1, "at least 1 writer process")
        if self.num_writers is not None:
            _check_count("--num-writers", self.num_writers, 1, "at least 1 writer")
        if self.writer_id is not None:
            _check_count("--writer-id", self.writer_id, 0, "a writer number from 0")
            if self.num_writers is not None and self.writer_id >= self.num_writers:
                raise ValueError(f"--writer-id: expected 0..{self.num_writers - 1} (one of the "
                                 f"--num-writers {self.num_writers} writers), got "
                                 f"{self.writer_id}")
        if self.order_seed is not None:
            _check_count("order_seed", self.order_seed, 0,
                         "a seed >= 0 for the order items are written in (None: key order)")
        if self.stack is not None:
            check_stack(self.stack)
        check_s2_offset(self.s2_offset)
        if self.classes is not None:
            dups = repeated(self.classes)
            if dups:
                raise ValueError(f"--classes: expected each class name once, got {dups} more "
                                 "than once")

    @property
    def sources(self) -> list[str]:
        """Every input, ``source`` first."""
        return [str(self.source), *map(str, self.more_sources)]

    def describe_sources(self) -> str:
        """The inputs as one line (the manifest's ``source``)."""
        return ", ".join(self.sources)


def _check_count(flag: str, value: object, least: int, expected: str) -> None:
    """ValueError naming ``flag`` unless ``value`` is a whole number >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise ValueError(f"{flag}: expected {expected}, got {value!r}")


def check_stack(text: str) -> Stack:
    """``--stack`` parsed before any input is read: refused when empty, with an empty entry
    (``s2,,s1``), an empty name after ``=`` (``s2,s1=``: it would silently become ``s2s1``)
    or a name that is one of its parts (``s2,s1=s2``: a modality ``s2`` holding radar bands);
    a name clashing with another modality of the inputs is refused by :meth:`.Stack.plan`."""
    spec, sep, name = str(text).partition("=")
    entries = [p.strip() for p in spec.split(",")]
    if not str(text).strip():
        raise ValueError(f"--stack: expected two or more modalities such as 's2,s1' (or "
                         f"'s2,s1=NAME'), got {text!r}")
    if "" in entries:
        raise ValueError(f"--stack: expected modality names separated by commas such as "
                         f"'s2,s1', got {text!r}, which has an empty entry")
    if sep and not name.strip():
        raise ValueError(f"--stack: expected a name after '=' ('{spec}=NAME'), or no '=' for "
                         f"the name {''.join(entries)!r}, got {text!r}")
    stack = Stack.parse(text)
    if stack.name in stack.parts:
        raise ValueError(f"--stack: expected a name for the stacked modality that is not one "
                         f"of its parts ({', '.join(stack.parts)}: the stack holds all their "
                         f"bands), got {text!r}; name it otherwise, e.g. "
                         f"'{spec}={''.join(stack.parts)}'")
    return stack


def check_s2_offset(spec: str | Sequence[str]) -> None:
    """``--s2-offset`` (``BuildConfig.s2_offset``) checked before any input is read: one mode
    for every input at most (``auto`` then ``-1000`` would otherwise both be recorded as the
    mode ``"auto -1000"`` with the last applied), each ``INPUT=MODE`` input once, every mode
    valid (:func:`.s2_baseline.parse_spec`)."""
    entries = [spec] if isinstance(spec, str) else list(spec)
    modes: list[str] = []
    inputs: dict[str, str] = {}
    for text in map(str, entries):
        key, sep, _ = text.rpartition("=")
        if not sep:
            modes.append(text)
        elif key.strip() in inputs:
            raise ValueError(f"--s2-offset: expected each input once, got input {key.strip()!r} "
                             f"given twice ({inputs[key.strip()]!r} and {text!r})")
        else:
            inputs[key.strip()] = text
    if len(modes) > 1:
        raise ValueError(f"--s2-offset: expected one mode for every input (auto, none or "
                         f"-1000; INPUT=MODE decides single inputs), got it given twice: "
                         f"{' and '.join(map(repr, modes))}")
    s2_baseline.parse_spec(spec)


@dataclass
class Plan:
    """What the build will produce, fixed before any pixel is read."""

    layout: str
    items: list[SourceItem]  # in write order (write_order): shards and zarr store alike
    modalities: dict[str, ModalityPlan]
    labels: LabelInfo | None
    s2_offset: dict | None = None  # s2_baseline.summarise record; None without S2 inputs
    sensors: dict[str, list[str]] = field(default_factory=dict)  # modality -> sensors pooled
    stack: Stack | None = None  # modalities written as one

    def outputs(self) -> dict[str, ModalityPlan]:
        """The modalities written (``modalities`` as read, with a stack's parts joined)."""
        return self.stack.plan(self.modalities, self.sensors) if self.stack else self.modalities

    def pooled(self, name: str) -> list[str] | None:
        """The sensors pooled into modality ``name`` (first input's first); None for one."""
        ids = self.sensors.get(name) or []
        return list(ids) if len(ids) > 1 else None

    def item_plans(self, item: SourceItem) -> dict[str, ModalityPlan]:
        """The modality plans for ``item``, each carrying the item's own sensor (pooled
        band-compatible inputs keep their sensor in the sample's ``meta.json``)."""
        out = {}
        for name, m in self.modalities.items():
            src = item.modalities.get(name)
            own = get_sensor(src.sensor).id if src is not None else m.sensor
            out[name] = m if own == m.sensor else replace(m, sensor=own)
        return out


def decide_s2_offsets(cfg: BuildConfig, items: Sequence[SourceItem]) -> dict | None:
    """Set each Sentinel-2 modality's offset correction (``cfg.s2_offset``), note it in the
    item's metadata, warn once about inputs of unknown baseline; returns the manifest record."""
    default, per = s2_baseline.parse_spec(cfg.s2_offset)
    entries, roots = [], set()
    for item in items:
        for name, src in item.modalities.items():
            if src.sensor not in s2_baseline.S2_SENSORS:
                continue
            root = input_of(item, cfg.sources, name)
            roots.add(root)
            mode = s2_baseline.mode_for(root, default, per)
            src.correction = s2_baseline.resolve([p for p, _ in src.files], mode, root)
            item.meta["s2_offset"] = src.correction.to_dict()
            where = item.meta.get(f"{name}_source") or item.meta.get("source", item.key)
            entries.append((root, name, str(where), src.correction))
    unmatched = [k for k in per if not any(s2_baseline.names_input(k, r) for r in roots)]
    if unmatched:
        raise ValueError(f"s2_offset: {unmatched} name no Sentinel-2 input of this build; its "
                         f"Sentinel-2 inputs are {sorted(roots)}")
    if not entries:
        if default not in ("auto", 0):  # a forced offset no input would get: a wrong --sensor?
            found = sorted({f"{n} ({src.sensor})" for i in items
                            for n, src in i.modalities.items()})
            raise ValueError(f"--s2-offset: expected Sentinel-2 inputs (sensors "
                             f"{', '.join(sorted(s2_baseline.S2_SENSORS))}) to apply offset "
                             f"{default} to, got none: the modalities of "
                             f"{cfg.describe_sources()} are {', '.join(found)}; drop "
                             "--s2-offset, or pass --sensor when the input is Sentinel-2")
        return None
    spec = cfg.s2_offset if isinstance(cfg.s2_offset, str) else " ".join(cfg.s2_offset)
    record = s2_baseline.summarise(entries, spec)
    s2_baseline.warn_unknown(record)
    return record


def write_order(items: Sequence[SourceItem], seed: int | None) -> list[SourceItem]:
    """``items`` (sorted by key) in the order they are written: a permutation drawn with
    ``numpy.random.default_rng(seed)``, the same for the same items and seed on every machine
    and for every number of writers; ``seed=None`` keeps the given order."""
    if seed is None:
        return list(items)
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def make_plan(cfg: BuildConfig) -> Plan:
    """Discover items, decide Sentinel-2 offsets, resolve every modality's bands and the
    label space; ``Plan.items`` come in write order (:func:`write_order`, ``cfg.order_seed``).

    Inputs of different sensors pool into one modality when band-compatible
    (:func:`.pooling.pooling_problem`); the modality's plan is that of the first input (in the order
    given) and ``Plan.sensors`` lists every sensor pooled, first input's first.
    """
    layout, items = discover_sources(cfg.sources, cfg.layout, cfg.layout_options)
    check_band_modalities(cfg.ingest.bands, {n for i in items for n in i.modalities})
    s2_record = decide_s2_offsets(cfg, items)
    rank = {src: i for i, src in enumerate(cfg.sources)}
    mods: dict[str, ModalityPlan] = {}
    sensors: dict[str, list[str]] = {}
    for item in sorted(items, key=lambda i: rank[input_of(i, cfg.sources)]):  # stable
        for name, src in item.modalities.items():
            try:
                p = plan_modality(name, src, cfg.ingest)
            except ValueError as e:  # e.g. --bands naming L1C's B10 with an L2A input
                raise type(e)(f"{item.meta.get('source', item.key)}: modality {name} "
                                 f"({src.sensor}): {e}") from None
            if name not in mods:
                mods[name], sensors[name] = p, [p.sensor]
                continue
            problem = pooling_problem(mods[name], p)
            if problem:
                raise ValueError(f"{item.meta.get('source', item.key)}: modality {name} {problem}")
            if p.sensor not in sensors[name]:
                sensors[name].append(p.sensor)
                mods[name] = widen_hist_range(mods[name], p)
    missing = [f"{i.key} (no {', '.join(sorted(set(mods) - set(i.modalities)))})"
               for i in items if set(i.modalities) != set(mods)]
    if missing:
        raise ValueError(f"{cfg.describe_sources()}: {len(missing)} item(s) lack some "
                         f"modalities ({sorted(mods)}): {', '.join(missing[:5])}; inputs hold "
                         f"{modality_mismatch(items, cfg.sources)}")
    labels = None
    kinds = {type(i.label).__name__ for i in items if i.label is not None}
    # the class list: the names of the labelled items (unlabelled ones, e.g. a scene pooled
    # with class folders, name none: they read as unlabelled_label)
    names = sorted({n for i in items for n in _label_names(i)})
    if any(i.seg is not None for i in items):
        labels = LabelInfo("segmentation", cfg.classes or [])
    elif kinds == {"str"}:
        labels = LabelInfo("class", cfg.classes or names)
    elif kinds == {"list"}:
        labels = LabelInfo("multilabel", cfg.classes or names)
    if labels is not None and labels.kind != "segmentation":
        unknown = sorted({n for i in items for n in _label_names(i)} - set(labels.classes))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the class list {labels.classes}")
    if cfg.ingest.s1_linear_to_db and not any(stores_db(m) for m in mods.values()):
        raise ValueError(f"--s1-linear-to-db: no modality of {cfg.describe_sources()} stores "
                         "dB (it converts Sentinel-1 linear power to dB); its modalities are "
                         f"{', '.join(f'{n} ({m.sensor})' for n, m in mods.items())}")
    stack = check_stack(cfg.stack) if cfg.stack is not None else None
    plan = Plan(layout, write_order(items, cfg.order_seed), mods, labels, s2_record, sensors,
                stack)
    plan.outputs()  # a stack that cannot be made fails here, before any pixel is read
    return plan


def _label_names(item: SourceItem) -> list[str]:
    if item.label is None:
        return []
    return [item.label] if isinstance(item.label, str) else list(item.label)


def encode_label(item: SourceItem, labels: LabelInfo | None) -> np.ndarray | None:
    """Class index (int64 scalar) or multi-hot vector (:data:`MULTILABEL_DTYPE`, K) for an
    item; None for an item without a label (shards store no ``labels.npy`` for it)."""
    if labels is None or item.label is None or labels.kind == "segmentation":
        return None
    if labels.kind == "class":
        return np.asarray(labels.classes.index(str(item.label)), np.int64)
    hot = np.zeros(len(labels.classes), MULTILABEL_DTYPE)
    for n in _label_names(item):
        hot[labels.classes.index(n)] = 1
    return hot


def unlabelled_label(labels: LabelInfo | None) -> np.ndarray | None:
    """The label a sample without one reads as in a dataset with the label space ``labels``:
    the class index :data:`UNLABELLED_CLASS` (int64 scalar, as :func:`encode_label`'s) for
    kind ``class``, an all-zero multi-hot vector (:data:`MULTILABEL_DTYPE`, K) for
    ``multilabel``; None without class or multilabel labels (segmentation targets are
    ``seg``). Readers fill it in (``ShardDataset``/``ZarrDataset`` ``missing_labels="fill"``)
    so every batch of a pooled dataset stacks; the zarr build stores it as the row."""
    if labels is None or labels.kind not in ("class", "multilabel"):
        return None
    if labels.kind == "class":
        return np.asarray(UNLABELLED_CLASS, np.int64)
    return np.zeros(len(labels.classes), MULTILABEL_DTYPE)


def sample_bytes(s: TileSample) -> dict[str, bytes | str]:
    """The webdataset sample for a tile (see the shard format in ARCHITECTURE.md)."""
    out: dict[str, bytes | str] = {"__key__": s.key, "meta.json": encode_json(s.meta)}
    for name, x in s.arrays.items():
        out[f"{name}.npy"] = encode_npy(x)
        if not s.valid[name].all():
            out[f"{name}.valid.npy"] = encode_npy(s.valid[name])
    if s.label is not None:
        out["labels.npy"] = encode_npy(s.label)
    if s.seg is not None:
        out["seg.npy"] = encode_npy(s.seg)
    return out


def new_stats(plan: Plan) -> dict[str, BandStats]:
    """Empty statistics for each planned modality."""
    return {n: stacked_stats_for(m.sensor, m.bands, m.nodata)
            or BandStats.create(m.bands, m.dtype, m.nodata, m.hist_range)
            for n, m in plan.outputs().items()}


def iter_samples(plan: Plan, cfg: BuildConfig, items: Sequence[SourceItem],
                 stats: dict[str, BandStats], counters: dict[str, int],
                 shapes: dict[str, set[tuple[int, ...]]],
                 bar: Any = None) -> Iterator[TileSample]:
    """Tiles of ``items`` in order; statistics, counters and shapes updated for kept tiles
    (``counters[UNLABELLED_COUNTER]``: the kept tiles of unlabelled items of a class or
    multilabel dataset, counted only when there is one)."""
    pooled = {name for name in plan.modalities if plan.pooled(name)}
    labelled = unlabelled_label(plan.labels) is not None
    for item in items:
        plans = plan.item_plans(item)
        mix = [sensor_counter(n, plans[n].sensor) for n in pooled]  # for `inspect`
        for s in iter_tiles(item, plans, cfg.ingest, encode_label(item, plan.labels), counters):
            if plan.stack is not None:
                s = plan.stack.apply(s)
            for name, x in s.arrays.items():  # clouds made nodata stay out of the statistics
                stats[name].update(x, ~s.valid[name] if cfg.ingest.cloud_as_nodata else None)
                shapes.setdefault(name, set()).add(x.shape)
            for key in mix:
                counters[key] = counters.get(key, 0) + 1
            if labelled and s.label is None:
                counters[UNLABELLED_COUNTER] = counters.get(UNLABELLED_COUNTER, 0) + 1
            counters["samples"] = counters.get("samples", 0) + 1
            yield s
        if bar is not None:
            bar.update(1)


def sensor_counter(modality: str, sensor: str) -> str:
    """The build counter of a pooled modality's samples from one sensor."""
    return f"samples[{modality}:{sensor}]"


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False)


def _part_path(out: Path, wid: int) -> Path:
    return out / PARTS / f"writer-{wid:02d}.json"


def _part_complete(out: Path, wid: int, num_writers: int, record: dict) -> bool:
    """A finished writer's part, from a run with the same options, whose shards all exist
    with the recorded checksum (an interrupted build re-run skips such writers)."""
    p = _part_path(out, wid)
    if not p.exists():
        return False
    part = json.loads(p.read_text())
    if part.get("num_writers") != num_writers or part.get("plan") != record:
        return False
    return all((out / s["name"]).exists() and file_sha256(out / s["name"]) == s["sha256"]
               for s in part["shards"])


def run_writer(cfg: BuildConfig, plan: Plan, wid: int, num_writers: int) -> dict:
    """Write the shards of writer ``wid`` and its part file; returns the part."""
    out = Path(cfg.out)
    prefix = f"shard-{wid:02d}"
    for stale in out.glob(f"{prefix}-*.tar*"):
        stale.unlink()
    items = plan.items[wid::num_writers]
    stats = new_stats(plan)
    counters: dict[str, int] = {}
    shapes: dict[str, set[tuple[int, ...]]] = {}
    t0 = time.perf_counter()
    with ShardWriter(out, prefix, cfg.shard_bytes, cfg.shard_samples, wid) as w, \
            _progress(len(items), f"writer {wid}", cfg.progress and wid == 0) as bar:
        for s in iter_samples(plan, cfg, items, stats, counters, shapes, bar):
            w.write(sample_bytes(s))
    shards = w.finished
    (out / PARTS).mkdir(exist_ok=True)
    for name, st in stats.items():
        st.save(out / PARTS / f"writer-{wid:02d}.{name}.npz")
    part = {"writer": wid, "num_writers": num_writers, "items": len(items),
            "plan": _plan_record(plan, cfg),
            "shards": [asdict(s) for s in shards], "counters": counters,
            "shapes": {k: sorted(map(list, v)) for k, v in shapes.items()},
            "seconds": time.perf_counter() - t0}
    atomic_write_text(_part_path(out, wid), json.dumps(part, indent=1))
    return part


def _writer_entry(args: tuple[BuildConfig, Plan, int, int]) -> dict:
    return run_writer(*args)


def build(cfg: BuildConfig) -> Manifest | None:
    """Run a build; returns the manifest (None when only one ``writer_id`` was asked for)."""
    check_out_apart(cfg)  # before any input is read
    # try_making: os.access alone says yes to root for /proc/x, whose mkdir fails
    if reason := unwritable_reason(cfg.out, try_making=True):
        raise ValueError(f"--out: {reason}; the dataset is written there: choose a folder "
                         "this job can write")
    check_replaceable(cfg)
    if cfg.format == "zarr":
        from .zarr_store import build_zarr

        return build_zarr(cfg)
    if cfg.format != "wds":
        raise ValueError(f"format: expected 'wds' or 'zarr', got {cfg.format!r}")
    out = Path(cfg.out)
    plan = make_plan(cfg)
    n = cfg.num_writers or max(1, min(cfg.workers, len(plan.items)))
    if cfg.writer_id is not None and cfg.writer_id >= n:  # num_writers None: BuildConfig can't
        raise ValueError(f"--writer-id: expected 0..{n - 1} (without --num-writers this build "
                         f"has {n} writer(s): --workers {cfg.workers} for {len(plan.items)} "
                         f"item(s)), got {cfg.writer_id}; pass --num-writers")
    made = missing_folders(out)  # this run makes them
    try:
        return _write(cfg, plan, out, n)
    except EmptyBuildError:
        if made:  # leave no folder of empty parts behind
            shutil.rmtree(out, ignore_errors=True)
            remove_if_empty(made[1:])
        raise
    except BaseException:  # a bad input, a full disk, Ctrl-C: no empty folder stays
        remove_if_empty(made)
        raise


def _write(cfg: BuildConfig, plan: Plan, out: Path, n: int) -> Manifest | None:
    """The writing part of :func:`build`: ``n`` writers' shards and parts into ``out``
    (writers whose part is complete skipped), then the merge unless one ``writer_id``."""
    prepare_out(cfg, out)
    wids = [cfg.writer_id] if cfg.writer_id is not None else list(range(n))
    for stale in [*out.glob("shard-*.tar*"), *out.glob(f"{PARTS}/writer-*")]:
        wid = int(stale.name.split("-")[1].split(".")[0])
        if wid >= n:  # left by an earlier run with more writers
            stale.unlink()
    record = json.loads(json.dumps(_plan_record(plan, cfg)))  # as it reads back from JSON
    todo = [w for w in wids if not _part_complete(out, w, n, record)]
    if cfg.workers > 1 and len(todo) > 1:
        with mp.get_context("spawn").Pool(min(cfg.workers, len(todo))) as pool:
            pool.map(_writer_entry, [(cfg, plan, w, n) for w in todo])
    else:
        for w in todo:
            run_writer(cfg, plan, w, n)
    if cfg.writer_id is not None:
        return None
    from .merge import merge  # here, not at the top: merge imports this module

    return merge(out)


def tile_record(cfg: BuildConfig) -> dict:
    """The manifest's ``tile`` entry: how tiles were cut and screened."""
    rec: dict = {"size": cfg.ingest.tile, "stride": cfg.ingest.stride or cfg.ingest.tile,
                 "max_nodata": cfg.ingest.max_nodata}
    if cfg.ingest.max_cloud is not None:  # cloud options only when set: default manifests
        rec["max_cloud"] = cfg.ingest.max_cloud  # stay as they were
    if cfg.ingest.cloud_as_nodata:
        rec["cloud_as_nodata"] = True
    return rec


def s1_db_record(plan: Plan, cfg: BuildConfig) -> dict | None:
    """The manifest's ``extra["s1_linear_to_db"]``: the modalities converted from linear power
    to dB at ingest and how; None when the build did not convert."""
    if not cfg.ingest.s1_linear_to_db:
        return None
    return {"modalities": [n for n, m in plan.modalities.items() if stores_db(m)],
            "formula": "dB = 10*log10(power)", "nonpositive_power": "nodata"}


def _plan_record(plan: Plan, cfg: BuildConfig) -> dict:
    """What the merge needs to know about the build, stored in every writer's part."""
    record = {
        "modalities": {n: asdict(m) for n, m in plan.outputs().items()},
        "labels": asdict(plan.labels) if plan.labels else None,
        "layout": plan.layout, "source": cfg.describe_sources(),
        "tile": tile_record(cfg),
        # seed None: key order. The digest of the keys in write order: writers on machines
        # whose numpy drew another permutation (no promise across versions) would lose some
        # items and write others twice; their parts differ here and the merge refuses them
        "order": {"seed": cfg.order_seed, "keys_sha256": hashlib.sha256(
            "\n".join(item.key for item in plan.items).encode()).hexdigest()},
        # what each item is read from and how: a re-run with another --file-bands (the same
        # files, another band order), --seg-dir, --nan-policy or --resample must not reuse a
        # finished writer's part (one dataset would hold two band orders); a part recorded
        # without this entry (an older build) never matches, so its writer is rebuilt
        "reads": {"items_sha256": reads_sha256(plan.items),
                  "nan_policy": cfg.ingest.nan_policy, "resample": cfg.ingest.resample},
    }
    if plan.s2_offset is not None:
        record["s2_offset"] = plan.s2_offset
    if plan.stack is not None:
        record["stack"] = {"name": plan.stack.name, "parts": list(plan.stack.parts)}
    pooled = {n: ids for n in plan.modalities if (ids := plan.pooled(n))}
    if pooled:
        record["sensors"] = pooled
    user = plan_user_sensors(plan)
    if user:
        record["user_sensors"] = user
    db = s1_db_record(plan, cfg)
    if db is not None:
        record["s1_linear_to_db"] = db
    return record


def item_reads(item: SourceItem) -> dict:
    """What the build reads for ``item``: per modality its sensor, every ``(file, band
    names)`` in the order read, quality files and Sentinel-2 offset; its label and seg raster."""
    mods: dict[str, dict] = {}
    for name, src in item.modalities.items():
        quality = src.quality
        mods[name] = {
            "sensor": src.sensor,
            "files": [[str(path), list(bands)] for path, bands in src.files],
            "quality": None if quality is None else {
                "kind": quality.kind, "files": [str(p) for p in quality.files]},
            "s2_offset": None if src.correction is None else src.correction.to_dict(),
        }
    return {"key": item.key, "modalities": mods, "label": item.label,
            "seg": None if item.seg is None else str(item.seg)}


def reads_sha256(items: Sequence[SourceItem]) -> str:
    """SHA-256 of :func:`item_reads` of ``items`` in the given (write) order."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item_reads(item), sort_keys=True, separators=(",", ":"),
                            default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def plan_user_sensors(plan: Plan) -> dict[str, dict]:
    """Definitions of the plan's sensors that are not built in (the manifest's
    ``extra.user_sensors``): a dataset built with ``--sensors-yaml`` reads without it."""
    ids = [m.sensor for m in plan.outputs().values()]
    ids += [sid for pooled in plan.sensors.values() for sid in pooled]
    return user_sensor_records(ids)


class EmptyBuildError(ValueError):
    """A build whose every tile was dropped: no dataset is written (a manifest of 0 samples
    would only fail later, in training)."""
