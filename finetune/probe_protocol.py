"""The probe's evaluation protocols over extracted features: stratified k-fold
cross-validation (:func:`cross_validate`) or a fixed held-out test set (:func:`fixed_split`),
each fitting the linear probe's sweep on a validation slice and scoring kNN, with the tiles of
one source image kept on one side of every split; :func:`check_splits` refuses, before any
feature is extracted, splits that cannot be drawn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .datasets import LabelledData
from .probe import (
    KNN_K,
    check_fold_training,
    knn,
    linear_probe,
    stratified_folds,
    too_few_to_split,
    train_val_split,
)
from .report import aggregate

__all__ = ["check_splits", "cross_validate", "fixed_split"]


def cross_validate(features: dict[str, np.ndarray], labels: np.ndarray, kind: str,
                   num_classes: int, folds: int, seed: int,
                   ks: Sequence[int] = KNN_K,
                   groups: Sequence[str] | None = None,
                   progress: bool = False) -> dict[str, dict]:
    """Per method: linear-probe and kNN scores over stratified folds, aggregated; with
    ``groups`` whole groups (tiles of one image) stay on one side of every split;
    ``progress``: a bar over the fits (one per fold and feature set)."""
    from tqdm import tqdm

    splits = stratified_folds(labels, folds, seed, groups)
    check_fold_training(splits, len(labels), groups)
    per: dict[str, dict] = {m: {"linear": [], "knn": {str(k): [] for k in ks}} for m in features}
    with tqdm(total=len(splits) * len(features), desc="cross-validation", unit="fit",
              disable=not progress, leave=False) as bar:
        for f, test in enumerate(splits):
            train = np.setdiff1d(np.arange(len(labels)), test)
            fit, val = train_val_split(labels, train, max(folds - 1, 4), seed + 1 + f, groups)
            for m, x in features.items():
                bar.set_postfix_str(f"fold {f + 1}/{len(splits)} {m}", refresh=False)
                per[m]["linear"].append(linear_probe(x[fit], labels[fit], x[val], labels[val],
                                                     x[test], labels[test], kind,
                                                     num_classes=num_classes))
                for k in ks:
                    per[m]["knn"][str(k)].append(knn(x[train], labels[train], x[test],
                                                     labels[test], k, num_classes=num_classes))
                bar.update(1)
    return {m: {"linear": aggregate(r["linear"], kind),
                "knn": {k: aggregate(v, kind) for k, v in r["knn"].items()},
                "feature_dim": int(features[m].shape[1])} for m, r in per.items()}


def fixed_split(features: dict[str, np.ndarray], labels: np.ndarray,
                test_features: dict[str, np.ndarray], test_labels: np.ndarray, kind: str,
                num_classes: int, seed: int, ks: Sequence[int] = KNN_K,
                groups: Sequence[str] | None = None,
                progress: bool = False) -> dict[str, dict]:
    """Per method: linear-probe and kNN scores on a fixed test set, as :func:`cross_validate`
    returns them with one fold: the sweep's validation set is a stratified 1/4 slice of the
    training data (whole ``groups``), the chosen setting refit on all of it; kNN uses it all.
    ``progress``: a bar over the fits (one per feature set)."""
    from tqdm import tqdm

    train = np.arange(len(labels))
    fit, val = train_val_split(labels, train, 4, seed + 1, groups)
    out = {}
    for m, x in tqdm(features.items(), total=len(features), desc="probes", unit="fit",
                     disable=not progress, leave=False):
        t = test_features[m]
        lin = linear_probe(x[fit], labels[fit], x[val], labels[val], t, test_labels, kind,
                           num_classes=num_classes)
        nn = {str(k): aggregate([knn(x, labels, t, test_labels, k, num_classes=num_classes)],
                                kind) for k in ks}
        out[m] = {"linear": aggregate([lin], kind), "knn": nn, "feature_dim": int(x.shape[1])}
    return out


def check_splits(data: LabelledData, groups: Sequence[str] | None, folds: int, seed: int,
                 fixed: bool) -> None:
    """Before any feature is extracted: a ValueError when the splits cannot be drawn, with
    ``groups`` (tiles of one image together) as :func:`cross_validate` and
    :func:`fixed_split` draw them: ``fixed`` (a --test-data set), when the training data is
    one sample or the tiles of one source image; else when a fold's training part is
    (:func:`~.probe.check_fold_training`), or there are fewer samples or images than folds."""
    if fixed:
        where = f"--data {data.source}"
        if reason := too_few_to_split(np.arange(len(data)), groups, where):
            raise ValueError(reason)
        return
    splits = stratified_folds(data.labels, folds, seed, groups)
    check_fold_training(splits, len(data), groups)
