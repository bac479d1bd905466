"""The labelled data a fine-tuning task reads (``data.path``, ``data.test_path``): class and
multi-label sets, or per-pixel targets, with labels of another kind refused before the
samples are read, naming both kinds and what to change. Of a dataset with several modalities
the one ``data.modality`` names is read, else the one holding most of the encoder's bands (as
eofm-probe picks); data the encoder's contract refuses, read so from such a dataset, is
refused naming its modalities and ``data.modality`` (:func:`contract_preprocess`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eofm.data_shards.manifest import MANIFEST_NAME, Manifest, load_manifest
from eofm.data_shards.remote import redact
from eofm.models import InputContract
from eofm.pretrain import distributed as dist

from .datasets import LabelledData, open_labelled
from .features import Preprocess, apply_contract
from .finetune_config import TaskConfig
from .tasks import DENSE, DenseData, open_dense

__all__ = ["Data", "check_num_classes", "contract_preprocess", "dataset_modalities",
           "kind_mismatch", "label_kind", "num_outputs", "open_task_data",
           "refuse_sparse_classes", "target_norm", "target_valid"]

Data = LabelledData | DenseData

LABEL_KIND = {"classification": "class", "multilabel": "multilabel",
              "segmentation": "segmentation", "regression": "segmentation"}  # manifest kinds
KIND_WORDS = {"class": "class labels (one class per sample)",
              "multilabel": "multi-labels (several classes per sample)",
              "segmentation": "per-pixel targets (eofm-shard build --seg-dir)",
              "none": "no labels"}
TASKS_OF_KIND = {"class": "classification", "multilabel": "multilabel",
                 "segmentation": "segmentation or regression"}


def _manifest(path: str) -> Manifest | None:
    """The manifest of the eofm dataset at ``path`` (tar shards or a zarr store), read before
    the samples; None for anything else (a raw folder, or no dataset: opening it says why)."""
    p = Path(path)
    if (p / MANIFEST_NAME).is_file():
        return load_manifest(p)
    if (p / "zarr.json").is_file():
        from eofm.data_shards.zarr_store import ZarrDataset

        return ZarrDataset(p, check=False).manifest  # the manifest only: no chunk reads
    return None


def label_kind(path: str) -> str | None:
    """The labels kind an eofm dataset's manifest records ("class", "multilabel",
    "segmentation" or "none"), read before the samples; None for anything else (a raw folder,
    whose layout gives its labels when it is built, or no dataset: opening it says why)."""
    manifest = _manifest(path)
    if manifest is None:
        return None
    return manifest.labels.kind if manifest.labels is not None else "none"


def dataset_modalities(path: str) -> list[str] | None:
    """The modalities of the eofm dataset at ``path``, in its manifest's order; None for a raw
    folder (its layout gives them when it is built)."""
    manifest = _manifest(path)
    return None if manifest is None else list(manifest.modalities)


def kind_mismatch(path: str, task: str, got: str, test_of: str | None = None) -> str:
    """Why data at ``path`` with labels of kind ``got`` cannot serve ``task``, naming both
    kinds and what to change; ``test_of``: ``path`` is data.test_path, the test set of the
    training data at ``test_of`` (which has the task's kind)."""
    want = LABEL_KIND[task]
    has, needs = KIND_WORDS.get(got, f"{got!r} labels"), KIND_WORDS[want]
    if test_of is not None:
        return (f"data.test_path {path}: has {has}, data.path {test_of} has {needs} (task.kind "
                f"{task}); expected a test set labelled like data.path: build it the way "
                "data.path was built, or leave data.test_path unset to hold out "
                "data.test_fraction of data.path")
    fix = (f"set task.kind (--task) to {TASKS_OF_KIND[got]}" if got in TASKS_OF_KIND
           else "build the dataset from a labelled layout")
    if want == "segmentation" and got != "segmentation":
        fix += ", or build the data with per-pixel targets (eofm-shard build --seg-dir)"
    if task not in DENSE and got not in ("class", "multilabel"):  # no per-sample label at all
        needs = f"class or multilabel labels for task.kind {task} (--task)"
        return f"data.path {path}: expected {needs}, the data has {has}; {fix}"
    return f"data.path {path}: task.kind {task} (--task) needs {needs}, the data has {has}; {fix}"


def open_task_data(path: str, task: str, modality: str | None,
                   s2_offset: str = "auto", *, prefer_bands: Sequence[str] | None = None,
                   progress: bool = True, test_of: str | None = None) -> Data:
    """Labelled data for ``task``: class/multi-label sets, or per-pixel targets. ``modality``
    (``data.modality``) picks one of several modalities; unset, the only one or the one holding
    most of ``prefer_bands`` (the encoder's contract bands; ties and no bands: the first).
    ``progress`` (``logging.progress``): the progress bar of a raw folder's build, on the main
    rank. ``test_of``: the training data's path when ``path`` is its data.test_path. Labels of
    another kind are a ValueError that names both kinds (:func:`kind_mismatch`)."""
    kind = label_kind(path)
    if kind is not None and kind != LABEL_KIND[task]:
        raise ValueError(kind_mismatch(path, task, kind, test_of))
    if task in DENSE:
        return open_dense(path, modality=modality, prefer_bands=prefer_bands)
    data = open_labelled(path, modality=modality, prefer_bands=prefer_bands,
                         progress=progress and dist.is_main_process(), s2_offset=s2_offset)
    if data.kind != LABEL_KIND[task]:  # a raw folder: its layout gave the labels
        raise ValueError(kind_mismatch(path, task, data.kind, test_of))
    return data


def contract_preprocess(data: Data, contract: InputContract, *, path: str,
                        modality: str | None, override: bool = False,
                        field: str = "data.path") -> Preprocess:
    """:func:`~eofm.finetune.features.apply_contract` of ``data``, read from ``path`` (the
    config's ``field``) with ``data.modality`` = ``modality``. Its refusal (a ValueError) of
    data read from a dataset of several modalities with ``modality`` unset also names the
    modality read, lists the dataset's modalities and says to set data.modality: the
    encoder may take another one than the one holding most of its bands, or none of them."""
    try:
        return apply_contract(data, contract, override=override)
    except ValueError as e:
        mods = dataset_modalities(path) if modality is None else None
        if not mods or len(mods) < 2:
            raise
        picked = (f"the one holding most of the encoder's bands {list(contract.bands)}"
                  if contract.bands else "the first")
        raise ValueError(
            f"{e}\n{field} {redact(path)}: has modalities {mods} and data.modality is unset, so "
            f"{data.modality!r} was read, {picked}; expected a modality whose bands the "
            f"encoder takes: set data.modality to one of {mods}, or pass data that has the "
            "encoder's bands") from None


def check_num_classes(t: TaskConfig, data: Data) -> int:
    """How many classes ``data`` names (``data.classes``), refusing (ValueError) a
    ``t.num_classes`` set to another count: the head would have another number of outputs
    than the class names its export records."""
    k = len(data.classes)
    if t.num_classes is not None and t.num_classes != k:
        raise ValueError(f"task.num_classes={t.num_classes} but the data has {k} "
                         f"classes {list(data.classes)} ({data.source}); expected {k} (or "
                         f"leave task.num_classes unset)")
    return k


def num_outputs(t: TaskConfig, data: Data, test_data: Data) -> int:
    """The head's outputs for task ``t``: the classes of ``data`` (``t.num_classes``, when set,
    must agree), 1 for regression; for segmentation the class list when the data names its
    classes (``t.num_classes``, when set, must agree), else ``t.num_classes`` or the largest
    target value + 1 (refused when the values are too sparse for that:
    :func:`refuse_sparse_classes`), with every valid target of ``data`` and ``test_data``
    checked to lie in range (a ValueError naming the values outside it)."""
    if t.kind == "regression":
        return 1
    if t.kind != "segmentation":
        return check_num_classes(t, data)
    named = check_num_classes(t, data) if data.classes else 0
    seen: set[int] = set()
    for d in {id(data): data, id(test_data): test_data}.values():
        for i in range(len(d)):
            y = d.target(i)
            seen |= {int(v) for v in np.unique(y[target_valid(y, t.ignore_value)])}
    if not named and t.num_classes is None:
        refuse_sparse_classes(seen)
    k = named or t.num_classes or (max(seen) + 1 if seen else 1)
    bad = sorted(v for v in seen if not 0 <= v < k)
    if bad:  # named classes fix the count: only task.ignore_value is left to set
        fix = "task.ignore_value" if named else "task.num_classes or task.ignore_value"
        raise ValueError(f"segmentation targets hold values {bad[:10]} outside 0..{k - 1} "
                         f"({k} classes); set {fix}")
    return k


def refuse_sparse_classes(seen: set[int]) -> None:
    """ValueError when segmentation target values ``seen`` (the valid ones, with neither
    class names nor ``task.num_classes`` to count the classes) would make a head of
    ``max + 1`` classes mostly never seen: more than twice as many as the distinct values, or
    with 255 (the usual "unlabelled" mark) above a gap. Such a value is far more often a
    no-label mark than a class; the message names the values, task.ignore_value and
    task.num_classes."""
    if not seen:
        return
    k, top = max(seen) + 1, max(seen)
    if k <= 2 * len(seen) and not (255 in seen and k > len(seen)):
        return
    values = sorted(seen)
    shown = f"{values[:10]}{' ...' if len(values) > 10 else ''}"
    mark = 255 if 255 in seen else top
    raise ValueError(
        f"segmentation targets hold {len(values)} distinct values {shown}, the largest {top}: "
        f"counted as classes 0..{top} that is a {k}-class head, {k - len(values)} of its "
        f"classes never seen, with {mark} scored as a class; expected class indices 0..K-1. "
        f"Set task.ignore_value={mark} if {mark} marks unlabelled pixels, or "
        f"task.num_classes={k} if there are {k} classes")


def target_valid(y: np.ndarray, ignore_value: float | None) -> np.ndarray:
    """Bool mask of the valid pixels of a dense target ``y``: finite (float targets) and not
    ``task.ignore_value``, compared in ``y``'s own dtype (numpy's rule for a Python number, and
    torch's): the one test of statistics, class counts and the training batch alike."""
    keep = np.isfinite(y) if y.dtype.kind == "f" else np.ones(y.shape, bool)
    if ignore_value is not None:
        keep &= y != ignore_value
    return keep


def target_norm(t: TaskConfig, data: Data, train_idx: Sequence[int]) -> tuple[float, float]:
    """(mean, std) of the valid regression targets of ``data``'s training samples
    ``train_idx`` (``t.standardise_targets``); (0, 1) for other tasks or without it."""
    if t.kind != "regression" or not t.standardise_targets:
        return 0.0, 1.0
    # each sample masked in its own dtype first: widened to float64, a float32 nodata such as
    # -3.4028235e38 no longer equals the value typed (and went into the statistics)
    ys = np.concatenate([y[target_valid(y, t.ignore_value)].astype(np.float64)
                         for y in (data.target(int(i)) for i in train_idx)])
    if not len(ys):
        raise ValueError(f"{data.source}: no valid regression target in the train split")
    return float(ys.mean()), float(ys.std()) or 1.0
