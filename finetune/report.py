"""Probe report rendering: fold aggregation, the printed table, report.md and a confusion PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eofm.data_shards.png import write_png
from eofm.models.probe_table import LABELS, METHODS, probe_table


def scalar_keys(kind: str) -> tuple[str, str]:
    """The two summary metrics of a label kind."""
    return ("accuracy", "balanced_accuracy") if kind == "class" else ("micro_map", "macro_map")


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value) of fold scores."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def _per_class_mean(folds: Sequence[dict]) -> list[float | None]:
    """Per-class score averaged over the folds where the class was scored."""
    out = []
    for c in range(len(folds[0]["per_class"])):
        vals = [f["per_class"][c] for f in folds if f["per_class"][c] is not None]
        out.append(float(np.mean(vals)) if vals else None)
    return out


def aggregate(folds: Sequence[dict], kind: str) -> dict:
    """Mean/std over folds of the summary metrics, per-class means, summed confusion."""
    out: dict = {k: mean_std([f[k] for f in folds]) for k in scalar_keys(kind)}
    out["per_class"] = _per_class_mean(folds)
    if kind == "class":
        out["confusion"] = np.sum([f["confusion"] for f in folds], axis=0).tolist()
    out["folds"] = [{k: f[k] for k in (*scalar_keys(kind), "best", "k") if k in f}
                    for f in folds]
    return out


def _paired(ours: Sequence[float], theirs: Sequence[float]) -> dict:
    """Fold-by-fold ``ours - theirs`` (the same test folds): mean, std, and how many folds
    were won, tied (within 1e-9) and lost."""
    d = np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)
    return {**mean_std(d), "min": float(d.min()), "won": int((d > 1e-9).sum()),
            "tied": int((abs(d) <= 1e-9).sum()), "lost": int((d < -1e-9).sum())}


def paired_differences(results: dict[str, dict], kind: str,
                       baselines: Sequence[str]) -> dict[str, dict]:
    """The encoder under test against each of ``baselines`` fold by fold: a fold's split is the
    same for every method, so the differences drop the spread that all methods share (a hard
    fold is hard for each); per baseline, the linear probe's and each kNN's headline metric.
    ``results`` as :func:`cross_validate` returns them (per-fold scores under ``folds``)."""
    a = scalar_keys(kind)[0]
    ours = results["pretrained"]
    out: dict[str, dict] = {}
    for base in baselines:
        theirs = results[base]
        out[base] = {
            "metric": a,
            "linear": _paired([f[a] for f in ours["linear"]["folds"]],
                              [f[a] for f in theirs["linear"]["folds"]]),
            "knn": {k: _paired([f[a] for f in ours["knn"][k]["folds"]],
                               [f[a] for f in theirs["knn"][k]["folds"]])
                    for k in ours["knn"]}}
    return out


def paired_lines(report: dict) -> list[str]:
    """One line per baseline: the encoder minus it, fold by fold (linear probe headline)."""
    out = []
    for base, p in (report.get("paired") or {}).items():
        lin = p["linear"]
        n = lin["won"] + lin["tied"] + lin["lost"]
        out.append(f"pretrained - {base}, fold by fold (linear {LABELS[p['metric']]}): "
                   f"{lin['mean']:+.3f} ± {lin['std']:.3f} (worst fold {lin['min']:+.3f}); "
                   f"won {lin['won']}, tied {lin['tied']}, lost {lin['lost']} of {n} folds")
    return out


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per method, linear (two metrics) and kNN (headline per k); the model
    card shows the same table (:func:`eofm.models.probe_table.probe_table`)."""
    return probe_table(report)


def format_table(report: dict) -> str:
    """The plain-text table eofm-probe prints."""
    header, rows = table_rows(report)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    d = report["data"]
    title = (f"eofm-probe: {report['encoder']} on {d['source']} ({d['samples']} samples, "
             f"{len(d['classes'])} classes, {split_name(report)}, pool {report['pool']}, "
             f"{report['feature_dim']['pretrained']}-d features)")
    return "\n".join([title, line(header), *[line(r) for r in rows], *paired_lines(report)])


def split_name(report: dict) -> str:
    """How the probe was scored, short: "5-fold" or "fixed test set"."""
    return "fixed test set" if report.get("test_data") else f"{report['folds']}-fold"


def _split_md(report: dict) -> str:
    """How the probe was scored, for report.md."""
    if report.get("test_data"):
        t = report["test_data"]
        return (f"fit on it, scored once on the fixed test set `{t['source']}` "
                f"({t['samples']} samples; no spread: one split)")
    return (f"{report['folds']}-fold stratified cross-validation{_grouping(report)}, "
            "mean ± std over folds")


def _md_row(cells: Sequence[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def _grouping(report: dict) -> str:
    """How folds were formed when tiles of one image were kept together."""
    g = report.get("fold_groups")
    if g is None or g == report["data"]["samples"]:
        return ""
    return f" with the tiles of each of {g} images kept in one fold"


def _band_stats(report: dict) -> str:
    """What the band_stats baseline's features are ("mean and std")."""
    names = list(report.get("band_stats_features") or ("mean", "std"))
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]


def markdown(report: dict, confusion_png: str | None) -> str:
    """report.md: the table, per-class linear scores, preprocessing differences."""
    header, rows = table_rows(report)
    d, pre = report["data"], report["preprocess"]
    lines = ["# eofm-probe report", "",
             f"Encoder `{report['encoder']}` ({report['architecture']}), data `{d['source']}` "
             f"({d['samples']} samples, {len(d['classes'])} classes, {d['kind']}), "
             f"{_split_md(report)}. `random_init`: an untrained encoder of the same "
             f"architecture; `band_stats`: each band's {_band_stats(report)} of the raw "
             "pixels (no encoder).", "",
             *([f"Labels regrouped by the `{d['label_set']}` label set "
                f"({d['unlabelled_samples']} samples left without a label).", ""]
               if d.get("label_set") else []),
             _md_row(header), _md_row(["---"] * len(header)), *[_md_row(r) for r in rows], ""]
    if report.get("paired"):
        lines += ["Fold by fold (every method is scored on the same test folds, so these "
                  "differences are free of the spread the folds share; seeds: `random_init_seeds` "
                  "in report.json):", "", *[f"- {x}" for x in paired_lines(report)], ""]
    metric = "recall" if d["kind"] == "class" else "AP"
    lines += [f"## Per-class linear-probe {metric}", "",
              _md_row(["class", *METHODS]), _md_row(["---"] * (1 + len(METHODS)))]
    for c, name in enumerate(d["classes"]):
        vals = [report[m]["linear"]["per_class"][c] for m in METHODS]
        lines.append(_md_row([name, *["-" if v is None else f"{v:.3f}" for v in vals]]))
    lines += ["", "## Preprocessing (from the encoder's input contract)", "",
              f"Bands fed: {', '.join(pre['bands'])}; size {pre['size']}; normalisation "
              f"{pre['method']}."]
    for title, key in (("Fixed by preprocessing", "fixed"), ("Noted", "notes"),
                       ("OVERRIDDEN (--override-contract)", "overridden")):
        if pre[key]:
            lines += ["", f"{title}:", *[f"- {p}" for p in pre[key]]]
    if confusion_png:
        lines += ["", "## Confusion matrix (pretrained, linear probe, all folds)", "",
                  f"![confusion]({confusion_png})"]
    return "\n".join(lines) + "\n"


def confusion_png(confusion: Sequence[Sequence[int]], path: str | Path, cell: int = 16) -> None:
    """Write the row-normalised confusion matrix as a white-to-blue PNG (rows: true class)."""
    m = np.asarray(confusion, np.float64)
    frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    img = np.repeat(np.repeat(frac, cell, axis=0), cell, axis=1)
    rgb = np.stack([255 * (1 - img), 255 * (1 - 0.6 * img), np.full_like(img, 255)], axis=-1)
    write_png(path, rgb.astype(np.uint8))


__all__ = ["METHODS", "aggregate", "confusion_png", "format_table", "markdown", "mean_std",
           "paired_differences", "paired_lines", "scalar_keys", "table_rows"]
