"""The table of an eofm-probe report: one row per method, linear probe and kNN, mean ± std.

Pure (a report dict in, strings out), so both eofm-probe's printed table and report.md
(``eofm.finetune.report``) and the model card (``eofm.models.card``, which must not import
``eofm.finetune``) build it from this one function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["LABELS", "MACRO_LEFT_OUT", "METHODS", "knn_label", "knn_used", "macro_notes",
           "macro_sentences", "mean_std_cell", "metric_keys", "probe_table", "ungrouped_tiles"]

METHODS = ("pretrained", "random_init", "band_stats")  # eofm-probe's report.json keys
LABELS = {"accuracy": "top-1", "balanced_accuracy": "bal-acc", "micro_map": "micro-mAP",
          "macro_map": "macro-mAP"}
# a multi-label fold's counts of the classes macro mAP left out (no positive, no negative
# among its test samples), as eofm-probe's report.json keeps them per fold
# (eofm.finetune.probe.MACRO_LEFT_OUT, which must name the same keys)
MACRO_LEFT_OUT = ("macro_left_out_no_positive", "macro_left_out_no_negative")


def metric_keys(report: Mapping[str, Any]) -> tuple[str, str]:
    """The report's two summary metrics: (micro_map, macro_map) for multi-label data (its
    ``data.kind``, or the metric names found), else (accuracy, balanced_accuracy)."""
    data = report.get("data") if isinstance(report.get("data"), Mapping) else {}
    linear = report["pretrained"]["linear"]
    multilabel = data.get("kind") == "multilabel" or "micro_map" in linear
    return ("micro_map", "macro_map") if multilabel else ("accuracy", "balanced_accuracy")


def mean_std_cell(m: Any) -> str:
    """"0.812 ± 0.041" of a {mean, std} mapping; a dash when absent; "0.655 (1 fold)" when
    the value was defined in one fold only (``folds_scored``: a std of 0 would look exact)."""
    if not isinstance(m, Mapping) or not isinstance(m.get("mean"), (int, float)):
        return "-"
    if m.get("folds_scored") == 1:
        return f"{m['mean']:.3f} (1 fold)"
    return f"{m['mean']:.3f} ± {float(m.get('std') or 0.0):.3f}"


def _span_cell(m: Any) -> str:
    """"0.700 - 0.750" of a {min, max} mapping; a dash when absent."""
    ok = isinstance(m, Mapping) and "min" in m and "max" in m
    return f"{m['min']:.3f} - {m['max']:.3f}" if ok else "-"


def _knn(r: Mapping[str, Any]) -> Mapping[str, Any]:
    """A method's (or the seeds') kNN results, {k: metrics}; empty when absent."""
    return r.get("knn") if isinstance(r.get("knn"), Mapping) else {}


def knn_used(report: Mapping[str, Any], k: str) -> list[int]:
    """The distinct neighbour counts kNN-``k`` actually used over the report's methods and
    folds, ascending (``knn``'s per-fold ``k``: ``k`` capped at the training split's size);
    empty when the report does not record them."""
    used = set()
    for m in METHODS:
        r = report.get(m)
        res = _knn(r).get(k) if isinstance(r, Mapping) else None
        folds = res.get("folds") if isinstance(res, Mapping) else None
        for f in folds if isinstance(folds, list) else []:
            if isinstance(f, Mapping) and isinstance(f.get("k"), int):
                used.add(f["k"])
    return sorted(used)


def knn_label(report: Mapping[str, Any], k: str) -> str:
    """"kNN-20", or "kNN-20 (k=4)" when the training splits were smaller than 20 and kNN used
    fewer neighbours ("(k=4-5)" when that differed across folds)."""
    used = knn_used(report, k)
    if not used or used == [int(k)]:
        return f"kNN-{k}"
    span = str(used[0]) if len(used) == 1 else f"{used[0]}-{used[-1]}"
    return f"kNN-{k} (k={span})"


def probe_table(report: Mapping[str, Any], *, names: Mapping[str, str] | None = None,
                capitalise: bool = False, seeds_name: str = "random_init x{n} (range)"
                ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of an eofm-probe report: per method (:data:`METHODS`), the linear
    probe's two summary metrics and each kNN's headline metric, mean ± std over folds; then,
    when the report has several random-init seeds, the range of their per-seed means.

    ``names``: row labels per method (default the method keys); ``capitalise``: "Method",
    "Linear ..." in the header; ``seeds_name``: the seeds row's label, ``{n}`` the seed count.
    A kNN column names the k actually used when it was capped (:func:`knn_label`). Absent
    values are dashes.
    """
    a, b = metric_keys(report)
    ks = [str(k) for k in report.get("knn_k") or report["pretrained"].get("knn") or []]
    method, linear = ("Method", "Linear") if capitalise else ("method", "linear")
    header = [method, f"{linear} {LABELS[a]}", f"{linear} {LABELS[b]}",
              *[f"{knn_label(report, k)} {LABELS[a]}" for k in ks]]
    names = names or {}
    rows = []
    for m in METHODS:
        r = report[m]
        rows.append([names.get(m, m), mean_std_cell(r["linear"].get(a)),
                     mean_std_cell(r["linear"].get(b)),
                     *[mean_std_cell((_knn(r).get(k) or {}).get(a)) for k in ks]])
    seeds = report.get("random_init_seeds")
    if isinstance(seeds, Mapping) and seeds.get("seeds"):
        lin = seeds.get("linear") if isinstance(seeds.get("linear"), Mapping) else {}
        rows.append([seeds_name.format(n=len(seeds["seeds"])), _span_cell(lin.get(a)),
                     _span_cell(lin.get(b)),
                     *[_span_cell((_knn(seeds).get(k) or {}).get(a)) for k in ks]])
    return header, rows


def ungrouped_tiles(report: Mapping[str, Any]) -> bool:
    """Whether an eofm-probe report's cross-validation folds put tiles of one image on both
    sides of a split: tile grouping off (report.json ``group_tiles`` false, ``eofm-probe
    --no-group-tiles``) while its samples are tiles of fewer source images (``source_images``
    < ``data.samples``). Neighbouring tiles share labels and, overlapping, pixels: the scores
    are optimistic. False with a fixed test set (``test_data``: scored on other data; only
    the sweep's fit/validation split is then drawn tile by tile) and for a report without
    those fields (written before they were recorded)."""
    images = report.get("source_images")
    data = report.get("data")
    samples = data.get("samples") if isinstance(data, Mapping) else None
    return (report.get("group_tiles") is False and not report.get("test_data")
            and isinstance(images, int) and isinstance(samples, int) and images < samples)


def macro_notes(report: Mapping[str, Any]) -> list[str]:
    """Lines on multi-label macro mAP when some test fold left classes out of it (AP is
    undefined for a class without a positive or without a negative there, e.g. a fold of
    tiles cut from one image, which share their labels): per fold, how many and why; that
    it is undefined when no fold scored any class. Empty when nothing was left out (or for a
    report that does not record it). eofm-probe prints them under its table; report.md and
    the model card give them as sentences (:func:`macro_sentences`)."""
    folds = ((report.get("pretrained") or {}).get("linear") or {}).get("folds") or []
    if not folds or "macro_map_classes" not in folds[0]:
        return []
    no_pos, no_neg = ([int(f.get(k, 0)) for f in folds] for k in MACRO_LEFT_OUT)
    if not any(no_pos) and not any(no_neg):
        return []
    scored = [int(f["macro_map_classes"]) for f in folds]
    counts = ", ".join(f"{p} + {n}" for p, n in zip(no_pos, no_neg, strict=True))
    where = "on the test set" if len(folds) == 1 else "per fold"
    lines = [f"note: macro-mAP averages only classes with both a positive and a negative among "
             f"the test samples (otherwise AP is undefined: without a negative any scores give "
             f"1.0); left out (no positive + no negative) {where}: {counts}"]
    kept = sum(c > 0 for c in scored)
    if kept == 0:
        where, advice = (("the test set", "a test set of more images") if len(folds) == 1
                         else ("any test fold", "fewer --folds, more images, or --test-data"))
        lines.append(f"note: macro-mAP is undefined (shown as -): no class had both a positive "
                     f"and a negative in {where} (tiles of one image share their labels; use "
                     f"{advice})")
    elif kept < len(folds):
        lines.append(f"note: macro-mAP is the mean over the {kept} of {len(folds)} folds that "
                     "scored a class")
    return lines


def macro_sentences(report: Mapping[str, Any]) -> list[str]:
    """:func:`macro_notes` as sentences ("Macro-mAP averages only ..."), as report.md and the
    model card give them under the table."""
    out = []
    for note in macro_notes(report):
        text = note.removeprefix("note: ")
        out.append(text[:1].upper() + text[1:])
    return out
