"""Linear probe and kNN on frozen features, their metrics, folds, and the band-statistics baseline.

Everything is deterministic: the linear classifier trains full-batch with L-BFGS (in float64)
to convergence from a fixed start, folds and splits are drawn from a seeded generator, and kNN
has no randomness.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeAlias

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import LabelledData

WEIGHT_DECAYS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
MAX_ITER = 10_000  # L-BFGS iterations per fit, a generous cap: fits stop at GRAD_TOL first
GRAD_TOL = 1e-6  # converged: the objective's largest |partial derivative| is at most this
CHANGE_TOL = 0.0  # no loss-change stop (near the minimum a step gains ~|grad|^2/wd, under
# any fixed tolerance); L-BFGS still stops on a zero step (a stall: then not converged)
HISTORY = 50  # L-BFGS memory: fewer iterations than 20 at small weight decays
KNN_K = (10, 20)
KNN_TEMPERATURE = 0.07
SMALL_WORK = 5e7  # multiply-adds per step below which one thread is fastest


# ---------------------------------------------------------------- metrics
def _ap(y: np.ndarray, s: np.ndarray) -> float | None:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds; None without positives."""
    if not y.any():
        return None
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(y: np.ndarray, scores: np.ndarray) -> float | None:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds; None (undefined) without
    a positive, and without a negative too: every ranking then scores 1.0, whatever the
    scores (a test fold of tiles of one image gives each of its labels no negative)."""
    y = np.asarray(y).astype(bool).ravel()
    if y.all():
        return None
    return _ap(y, np.asarray(scores, np.float64).ravel())


def class_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Top-1 and balanced accuracy, per-class recall (None if absent) and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    support = confusion.sum(axis=1)
    per_class = [float(confusion[c, c] / support[c]) if support[c] else None
                 for c in range(num_classes)]
    present = [v for v in per_class if v is not None]
    return {"accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
            "balanced_accuracy": float(np.mean(present)) if present else 0.0,
            "per_class": per_class, "confusion": confusion.tolist()}


MACRO_LEFT_OUT = ("macro_left_out_no_positive", "macro_left_out_no_negative")


def multilabel_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict:
    """BigEarthNet-style micro mAP (all (sample, class) decisions pooled) and macro mAP.

    Macro mAP is the mean AP over the classes with both a positive and a negative (AP is
    undefined otherwise, :func:`average_precision`); None when no class has both (not 0 or
    1). ``per_class`` holds each class's AP (None where undefined), ``macro_map_classes`` the
    number averaged, and ``macro_left_out_no_positive`` / ``macro_left_out_no_negative`` how
    many classes were left out and why (a class with no sample at all counts as no positive).
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, np.float64)
    per_class = [average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])]
    present = [v for v in per_class if v is not None]
    micro = _ap(y_true.ravel(), scores.ravel())
    no_pos = int((~y_true.any(axis=0)).sum())
    no_neg = int((y_true.all(axis=0) & y_true.any(axis=0)).sum())
    return {"micro_map": micro if micro is not None else 0.0,
            "macro_map": float(np.mean(present)) if present else None, "per_class": per_class,
            "macro_map_classes": len(present), MACRO_LEFT_OUT[0]: no_pos,
            MACRO_LEFT_OUT[1]: no_neg}


def _score(kind: str, y: np.ndarray, logits: np.ndarray) -> dict:
    """Metrics of logits (or scores) against labels."""
    if kind == "class":
        return class_metrics(y, logits.argmax(axis=1), logits.shape[1])
    return multilabel_metrics(y, logits)


def headline(kind: str) -> str:
    """The metric a sweep is chosen on and a table leads with."""
    return "accuracy" if kind == "class" else "micro_map"


# ---------------------------------------------------------------- folds
def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0,
                     groups: Sequence[str] | np.ndarray | None = None) -> list[np.ndarray]:
    """Indices of ``folds`` disjoint test folds covering every sample, stratified by class
    (multilabel: by each sample's rarest positive label). Sizes differ by at most one.

    With ``groups`` (one id per sample, e.g. the image a tile was cut from) whole groups are
    assigned to folds, so neighbouring tiles of one image never sit on both sides of a split;
    a group's stratum is that of its first sample, and fold sizes then follow group sizes.
    """
    labels = np.asarray(labels)
    n = len(labels)
    strata = _strata(labels)
    if groups is None:
        units = np.arange(n)
    else:
        if len(groups) != n:
            raise ValueError(f"groups: expected one per sample ({n}), got {len(groups)}")
        _, units = np.unique(np.asarray(groups), return_inverse=True)
    n_units = int(units.max()) + 1 if n else 0
    if not 2 <= folds <= n_units:
        what = "samples" if groups is None else "groups (source images)"
        if n_units < 2:  # no fold count can split one unit
            raise ValueError(f"folds: cross-validation needs at least 2 {what}, the data has "
                             f"{n_units}; use more data")
        raise ValueError(f"folds: expected 2..{n_units} (the number of {what}), got {folds}")
    first = np.full(n_units, -1, np.int64)
    for i in range(n - 1, -1, -1):
        first[units[i]] = i
    unit_strata = strata[first]
    rng = np.random.default_rng([seed, 0xF01D])
    unit_fold = np.empty(n_units, np.int64)
    offset = 0
    for s in np.unique(unit_strata):
        idx = rng.permutation(np.flatnonzero(unit_strata == s))
        unit_fold[idx] = (offset + np.arange(len(idx))) % folds
        offset += len(idx)
    assign = unit_fold[units]
    return [np.sort(np.flatnonzero(assign == f)) for f in range(folds)]


def _strata(labels: np.ndarray) -> np.ndarray:
    """One stratum per sample: the class, or the rarest positive label (-1 for none)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    freq = labels.sum(axis=0)
    rare = np.where(labels > 0, freq[None, :], np.inf)
    return np.where(labels.any(axis=1), rare.argmin(axis=1), -1)


def too_few_to_split(train: np.ndarray, groups: Sequence[str] | np.ndarray | None,
                     where: str = "the training data", folds: bool = False) -> str | None:
    """Why the ``train`` indices cannot give the linear probe a validation slice: they hold
    one sample, or with ``groups`` the tiles of one source image only (a slice of whole
    images needs two); None when they can. ``folds``: a cross-validation fold's training part
    (fewer folds leave it more images, and the message says so)."""
    fewer = ", or fewer --folds" if folds else ""
    if groups is None:
        if len(train) >= 2:
            return None
        return (f"{where} holds {len(train)} sample(s): the linear probe's validation slice "
                f"needs at least 2; expected more samples{fewer}")
    names = np.unique(np.asarray(groups)[np.asarray(train, np.int64)])
    if len(names) >= 2:
        return None
    which = f"one source image, {str(names[0])!r}" if len(names) else "no source image"
    return (f"{where} holds the {len(train)} tile(s) of {which}: all tiles of an image stay "
            "on one side of every split, and the linear probe's validation slice needs whole "
            "images from at least 2; pass --no-group-tiles (its tiles may then fall on both "
            f"sides of a split){', more images' if folds else ' or more images'}{fewer}")


def check_fold_training(splits: Sequence[np.ndarray], n: int,
                        groups: Sequence[str] | np.ndarray | None = None) -> None:
    """ValueError unless every cross-validation fold of ``splits`` (test indices over ``n``
    samples) leaves its training part at least 2 samples, or with ``groups`` the tiles of at
    least 2 source images (:func:`too_few_to_split`): checked before anything is fitted."""
    for f, test in enumerate(splits):
        train = np.setdiff1d(np.arange(n), test)
        where = f"cross-validation fold {f + 1} of {len(splits)}: its training part"
        if reason := too_few_to_split(train, groups, where, folds=True):
            raise ValueError(reason)


def train_val_split(labels: np.ndarray, train: np.ndarray, parts: int, seed: int = 0,
                    groups: Sequence[str] | np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Split ``train`` indices into (fit, val): val is one stratified ``1/parts`` slice
    (whole groups when ``groups`` is given, as :func:`stratified_folds`). ValueError when
    ``train`` holds one sample, or the tiles of one source image (:func:`too_few_to_split`)."""
    if reason := too_few_to_split(train, groups):
        raise ValueError(reason)
    sub_groups = None if groups is None else np.asarray(groups)[train]
    units = len(train) if sub_groups is None else len(np.unique(sub_groups))
    parts = max(2, min(parts, units))
    val_f = stratified_folds(np.asarray(labels)[train], parts, seed, sub_groups)[0]
    mask = np.zeros(len(train), bool)
    mask[val_f] = True
    return train[~mask], train[mask]


# ---------------------------------------------------------------- linear probe
def _standardise(train: np.ndarray, *others: np.ndarray,
                 dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Centre and scale every array by the training features' mean and std, in ``dtype``."""
    t = torch.as_tensor(train, dtype=dtype)
    mean, std = t.mean(dim=0), t.std(dim=0, unbiased=False).clamp_min(1e-6)
    return [(torch.as_tensor(a, dtype=dtype) - mean) / std for a in (train, *others)]


def _loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean softmax cross-entropy (class) or one-vs-rest BCE (multilabel)."""
    if kind == "class":
        return F.cross_entropy(logits, y)
    return F.binary_cross_entropy_with_logits(logits, y)


Params: TypeAlias = tuple[torch.Tensor, torch.Tensor]  # (W, b)


class ConvergenceWarning(UserWarning):
    """A linear-probe fit stopped (iteration cap or stall) before its gradient tolerance."""


def _scaling(train: np.ndarray) -> Params:
    """Per-feature mean and std (at least 1e-6) of the training features."""
    t = torch.as_tensor(train, dtype=torch.float32)
    return t.mean(dim=0), t.std(dim=0, unbiased=False).clamp_min(1e-6)


def _scaled(a: np.ndarray, scale: Params) -> torch.Tensor:
    """Features standardised by ``scale`` (:func:`_scaling`), in float64 for the fit."""
    mean, std = scale
    return ((torch.as_tensor(a, dtype=torch.float32) - mean) / std).double()


def _rescaled(params: Params, old: Params, new: Params) -> Params:
    """(W, b) on features standardised by ``old`` turned into the same linear function of
    features standardised by ``new``: x_old = (m_new - m_old + s_new x_new) / s_old."""
    w, b = params
    (m_old, s_old), (m_new, s_new) = old, new
    w_new = w * (s_new / s_old).double()[:, None]
    return w_new, b + ((m_new - m_old) / s_old).double() @ w


def _fit(x: torch.Tensor, y: torch.Tensor, kind: str, wd: float, init: Params,
         max_iter: int) -> tuple[Params, dict]:
    """Minimise loss + wd/2 |W|^2 (bias free) with full-batch L-BFGS from ``init`` until the
    largest |partial derivative| is at most :data:`GRAD_TOL` (or ``max_iter`` iterations, or
    a stall): (W, b) and the fit's record ``{weight_decay, converged, grad_norm,
    iterations}``, ``grad_norm`` the final gradient's max-norm. Warns
    (:class:`ConvergenceWarning`) when the fit did not converge."""
    w, b = (t.clone().requires_grad_(True) for t in init)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=HISTORY,
                            tolerance_grad=GRAD_TOL, tolerance_change=CHANGE_TOL,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(x @ w + b, y, kind) + 0.5 * wd * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    closure()  # the gradient where the fit stopped
    grad = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
    record = {"weight_decay": wd, "converged": grad <= GRAD_TOL, "grad_norm": grad,
              "iterations": int(opt.state[w]["n_iter"])}
    if not record["converged"]:
        warnings.warn(f"linear probe: L-BFGS stopped at weight decay {wd:g} after "
                      f"{record['iterations']} iterations (cap max_iter={max_iter}) with "
                      f"max |gradient| {grad:.2e}, expected at most {GRAD_TOL:g}: the fit did "
                      "not reach the objective's minimum and its scores may depend on the "
                      "optimiser", ConvergenceWarning, stacklevel=2)
    return (w.detach(), b.detach()), record


@contextmanager
def _threads_for(work: float) -> Iterator[None]:
    """One intra-op thread for small problems (thread start-up and contention cost more than
    the arithmetic: 25x slower on a loaded 2-core machine); torch's setting otherwise."""
    before = torch.get_num_threads()
    if work < SMALL_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _targets(y: np.ndarray, kind: str) -> torch.Tensor:
    """Labels as the loss wants them: int64 indices or float64 multi-hot (BCE computes in
    the target's dtype: float32 targets would cap the fit's precision)."""
    return (torch.as_tensor(y, dtype=torch.int64) if kind == "class"
            else torch.as_tensor(y, dtype=torch.float64))


def _num_out(kind: str, *ys: np.ndarray) -> int:
    """Output width: the number of classes seen, or the label vector length."""
    if kind == "class":
        return int(max(int(np.max(y)) for y in ys if len(y))) + 1
    return int(ys[0].shape[1])


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, kind: str, *,
                 num_classes: int | None = None,
                 weight_decays: Sequence[float] = WEIGHT_DECAYS,
                 max_iter: int = MAX_ITER) -> dict:
    """L2-regularised linear classifier on standardised features, its strength chosen on val.

    ``kind`` "class": softmax cross-entropy, metrics top-1/balanced accuracy; "multilabel":
    one-vs-rest BCE, micro/macro mAP. Each fit minimises loss + wd/2 |W|^2 with full-batch
    L-BFGS in float64 (no learning rate to tune: the line search sets the step) to
    convergence: the largest |partial derivative| at most :data:`GRAD_TOL`, within
    ``max_iter`` iterations. The sweep runs along the regularisation path, strongest first,
    each fit warm-started from the previous one, for speed. A converged fit is within
    |W - W*| <= GRAD_TOL / wd of the objective's minimum (strong convexity): at the weakest
    strengths (1e-4, 1e-5) on near-separable features that bound is loose, and a warm and a
    cold start can end apart (validation accuracy differing by a sample or two in a fold;
    the chosen strength and test scores matched scikit-learn's exact optimum in every fold
    checked). The chosen strength is refit on train + val,
    started from the sweep's solution for it, and scored on test. Ties on the val metric go
    to the lower val loss, then to the stronger regularisation.

    Returns the test metrics, ``sweep`` (per strength: val metric and loss), ``best`` (the
    chosen sweep row, with ``fits``: each fit's record, ``{"sweep": [...], "refit": {...}}``,
    of ``weight_decay``, ``converged``, ``grad_norm`` (the final gradient's max-norm) and
    ``iterations``) and ``converged`` (every fit converged). A fit that did not converge
    warns (:class:`ConvergenceWarning`).
    """
    if kind not in ("class", "multilabel"):
        raise ValueError(f"kind: expected 'class' or 'multilabel', got {kind!r}")
    k = num_classes or _num_out(kind, train_y, val_y, test_y)
    with _threads_for(float(train_x.size) * k):
        return _probe(train_x, train_y, val_x, val_y, test_x, test_y, kind, k,
                      sorted(weight_decays, reverse=True), max_iter)


def _probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
           test_x: np.ndarray, test_y: np.ndarray, kind: str, k: int,
           weight_decays: Sequence[float], max_iter: int) -> dict:
    """The sweep on val, the refit on train + val, the test scores (see linear_probe)."""
    key = headline(kind)
    scale = _scaling(train_x)
    xtr, xva = _scaled(train_x, scale), _scaled(val_x, scale)
    ytr, yva = _targets(train_y, kind), _targets(val_y, kind)
    params = (torch.zeros(xtr.shape[1], k, dtype=torch.float64),
              torch.zeros(k, dtype=torch.float64))
    sweep, fits, solutions = [], [], {}
    for wd in weight_decays:
        params, record = _fit(xtr, ytr, kind, wd, params, max_iter)
        solutions[wd] = params
        fits.append(record)
        with torch.no_grad():
            out = xva @ params[0] + params[1]
            loss = _loss(out, yva, kind).item() if len(val_y) else 0.0
        val = _score(kind, val_y, out.numpy())[key] if len(val_y) else 0.0
        sweep.append({"weight_decay": wd, "val": val, "val_loss": loss})
    best = min(sweep, key=lambda r: (-r["val"], r["val_loss"]))
    all_x = np.concatenate([train_x, val_x])
    all_scale = _scaling(all_x)
    xall, xte = _scaled(all_x, all_scale), _scaled(test_x, all_scale)
    all_y = _targets(np.concatenate([train_y, val_y]), kind)
    start = _rescaled(solutions[best["weight_decay"]], scale, all_scale)
    (w, b), refit = _fit(xall, all_y, kind, best["weight_decay"], start, max_iter)
    with torch.no_grad():
        logits = (xte @ w + b).numpy()
    converged = all(f["converged"] for f in (*fits, refit))
    return {**_score(kind, test_y, logits),
            "best": {**best, "fits": {"sweep": fits, "refit": refit}}, "sweep": sweep,
            "converged": converged}


# ---------------------------------------------------------------- kNN
def knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
        k: int, *, num_classes: int | None = None, temperature: float = KNN_TEMPERATURE,
        chunk: int = 1024) -> dict:
    """Cosine kNN: standardised, L2-normalised features; neighbours vote with weight
    exp(similarity / temperature) (DINO). Class labels (N,) or multi-hot (N, K) decide the
    metrics; ``k`` is capped at the training set size (reported as ``k``).

    Similarities, weights and votes are float64, the weights taken relative to each test
    sample's nearest neighbour (exp((sim - max) / temperature): the same scores, no
    overflow): at temperature 0.07 they span up to e^28, and in float32 the multi-label
    scores near 1 collapse onto one value, tying samples the votes rank apart (and so
    changing mAP). A score is the positive votes over the positive plus the negative ones,
    so a sample whose k neighbours all hold a label scores it exactly 1 (votes over the
    weights' sum, added in another order, came out 1 - eps, several such values, ranked by
    rounding noise instead of tied)."""
    kind = "class" if np.asarray(train_y).ndim == 1 else "multilabel"
    xtr, xte = (F.normalize(t, dim=1)
                for t in _standardise(train_x, test_x, dtype=torch.float64))
    k_eff = int(min(k, len(train_x)))
    n_out = num_classes or _num_out(kind, train_y, test_y)
    if kind == "class":
        ytr = F.one_hot(torch.as_tensor(train_y, dtype=torch.int64), n_out).double()
    else:
        ytr = torch.as_tensor(train_y, dtype=torch.float64)
    scores = []
    for start in range(0, len(xte), chunk):
        sim = xte[start:start + chunk] @ xtr.T
        top, idx = sim.topk(k_eff, dim=1)
        w = ((top - top[:, :1]) / temperature).exp()  # topk sorts: column 0 is each row's max
        y = ytr[idx]
        pos = (w[:, :, None] * y).sum(dim=1)
        neg = (w[:, :, None] * (1 - y)).sum(dim=1)  # pos + neg is the weights' sum, but
        scores.append(pos / (pos + neg))  # exactly 1 (0) when every neighbour is (not) one
    s = torch.cat(scores).numpy() if scores else np.zeros((0, n_out), np.float64)
    return {**_score(kind, test_y, s), "k": k_eff}


# ---------------------------------------------------------------- baseline features
BAND_STATS = ("mean", "std")  # the no-encoder baseline's features, per band
BAND_STATS_PERCENTILES = ("mean", "std", "p10", "p90")  # percentiles=True


def band_stats_features(data: LabelledData, bands: Sequence[str] | None = None, *,
                        percentiles: bool = False) -> np.ndarray:
    """(N, 2C) per-band mean and std of each sample's valid raw pixels (band-major: band 0's
    mean, std, band 1's ...); ``percentiles`` adds each band's p10 and p90 ((N, 4C), off by
    default: the baseline is per-band mean/std features).

    ``bands`` (dataset names) restricts and orders the bands; nodata and non-finite pixels
    are left out (a band with no valid pixel gives zeros).
    """
    names = list(bands) if bands is not None else list(data.bands)
    missing = [b for b in names if b not in data.bands]
    if missing:
        raise ValueError(f"bands: {missing} are not in the dataset's bands {data.bands}")
    idx = [data.bands.index(b) for b in names]
    nodata = [data.nodata[i] for i in idx]
    per_band = len(BAND_STATS_PERCENTILES if percentiles else BAND_STATS)
    out = np.zeros((len(data), per_band * len(idx)), np.float32)
    for n in range(len(data)):
        x = data.pixels(n)[idx].astype(np.float64).reshape(len(idx), -1)
        bad = ~np.isfinite(x)
        for c, nd in enumerate(nodata):
            if nd is not None:
                bad[c] |= x[c] == nd
        x = np.where(bad, np.nan, x)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nodata bands
            feats = [np.nanmean(x, 1), np.nanstd(x, 1)]
            if percentiles:
                feats += [np.nanpercentile(x, 10, axis=1), np.nanpercentile(x, 90, axis=1)]
        out[n] = np.nan_to_num(np.stack(feats, axis=1).ravel())  # (C, k) -> band-major
    return out


__all__ = ["BAND_STATS", "BAND_STATS_PERCENTILES", "CHANGE_TOL", "GRAD_TOL", "HISTORY", "KNN_K",
           "MACRO_LEFT_OUT", "MAX_ITER", "WEIGHT_DECAYS",
           "ConvergenceWarning",
           "average_precision", "band_stats_features",
           "check_fold_training", "class_metrics", "headline", "knn", "linear_probe",
           "multilabel_metrics", "stratified_folds", "too_few_to_split", "train_val_split"]
