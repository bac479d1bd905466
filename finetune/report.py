"""Probe report rendering: fold aggregation, the printed table, report.md and a confusion PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eofm.data_shards.png import write_png
from eofm.models.probe_table import (
    LABELS,
    METHODS,
    macro_notes,
    macro_sentences,
    probe_table,
    ungrouped_tiles,
)

from .plot import INK, WHITE, draw_text, text_up, text_width
from .probe import MACRO_LEFT_OUT


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


def _defined_mean_std(values: Sequence[float | None]) -> dict:
    """:func:`mean_std` of the folds where the metric is defined (not None), with their count
    ``folds_scored``; mean and std None when it is defined in no fold."""
    kept = [v for v in values if v is not None]
    stats = mean_std(kept) if kept else {"mean": None, "std": None}
    return {**stats, "folds_scored": len(kept)}


FOLD_KEYS = ("best", "k", "converged", "macro_map_classes",
             *MACRO_LEFT_OUT)  # kept per fold besides scores


def aggregate(folds: Sequence[dict], kind: str) -> dict:
    """Mean/std over folds of the summary metrics, per-class means, summed confusion.

    Multi-label macro mAP is undefined in a fold where no class has both a positive and a
    negative (:func:`~.probe.multilabel_metrics`): its mean is over the folds where it is
    defined (``folds_scored``), None when it is in none; each fold keeps how many classes it
    left out and why."""
    out: dict = {k: mean_std([f[k] for f in folds]) if k != "macro_map"
                 else _defined_mean_std([f[k] for f in folds]) for k in scalar_keys(kind)}
    out["per_class"] = _per_class_mean(folds)
    if kind == "class":
        out["confusion"] = np.sum([f["confusion"] for f in folds], axis=0).tolist()
    out["folds"] = [{k: f[k] for k in (*scalar_keys(kind), *FOLD_KEYS) if k in f}
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


# the table title's flag of a split tile by tile (:func:`ungrouped_tiles`)
UNGROUPED_SHORT = "tiles of one image on both sides of splits: optimistic"


def format_table(report: dict) -> str:
    """The plain-text table eofm-probe prints."""
    header, rows = table_rows(report)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    d = report["data"]
    ungrouped = f", {UNGROUPED_SHORT}" if ungrouped_tiles(report) else ""
    title = (f"eofm-probe: {report['encoder']} on {d['source']} ({d['samples']} samples, "
             f"{len(d['classes'])} classes, {split_name(report)}{ungrouped}, "
             f"pool {report['pool']}, {report['feature_dim']['pretrained']}-d features)")
    return "\n".join([title, line(header), *[line(r) for r in rows], *paired_lines(report),
                      *macro_notes(report), *[f"note: {n}" for n in data_notes(report)]])


def split_name(report: dict) -> str:
    """How the probe was scored, short: "5-fold" or "fixed test set"."""
    return "fixed test set" if report.get("test_data") else f"{report['folds']}-fold"


def grouping_warning(report: dict) -> str | None:
    """The warning eofm-probe prints (and report.md gives) when :func:`ungrouped_tiles`: how
    many tiles of how many images, what it does to the scores and the fix; None otherwise."""
    if not ungrouped_tiles(report):
        return None
    return (f"--no-group-tiles: the {report['data']['samples']} samples are tiles of "
            f"{report['source_images']} images, split tile by tile: {UNGROUPED_SHORT} "
            "(tiles of one image share labels and, overlapping, pixels across the folds); "
            "without --no-group-tiles each image's tiles stay in one fold")


def data_notes(report: dict) -> list[str]:
    """Lines on samples the data's build dropped (``data`` and ``test_data``
    ``dropped_samples.note``, :meth:`~.datasets.LabelledData.describe`); empty without any."""
    out = []
    for key in ("data", "test_data"):
        dropped = (report.get(key) or {}).get("dropped_samples")
        if isinstance(dropped, dict) and dropped.get("note"):
            out.append(str(dropped["note"]))
    return out


def _split_md(report: dict) -> str:
    """How the probe was scored, for report.md."""
    if report.get("test_data"):
        t = report["test_data"]
        return (f"fit on it, scored once on the fixed test set `{t['source']}` "
                f"({t['samples']} samples; no spread: one split)")
    return (f"{report['folds']}-fold stratified cross-validation{_grouping(report)}, "
            "mean ± sample std (n - 1) over folds")


def _split_md_warning(report: dict) -> str:
    """report.md's bold warning after the split (:func:`ungrouped_tiles`), "" without one."""
    return f" **{grouping_warning(report)}.**" if ungrouped_tiles(report) else ""


def _md_row(cells: Sequence[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def _grouping(report: dict) -> str:
    """How folds were formed when tiles of one image were kept together (tile by tile, with
    tiles of one image on both sides: :func:`_split_md_warning`)."""
    if ungrouped_tiles(report):
        return " tile by tile (`--no-group-tiles`)"
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
             f"{_split_md(report)}.{_split_md_warning(report)} `random_init`: an untrained "
             "encoder of the same "
             f"architecture (a BatchNorm network's running statistics estimated on the data, "
             f"as an export's were on its own); `band_stats`: each band's {_band_stats(report)} of the raw "
             "pixels (no encoder).", "",
             *([f"Labels regrouped by the `{d['label_set']}` label set "
                f"({d['unlabelled_samples']} samples left without a label).", ""]
               if d.get("label_set") else []),
             _md_row(header), _md_row(["---"] * len(header)), *[_md_row(r) for r in rows], ""]
    for sentence in macro_sentences(report):  # as the model card gives them
        lines += [sentence, ""]
    for note in data_notes(report):  # starts with the data's path: not capitalised
        lines += [f"Note: {note}.", ""]
    if report.get("paired"):
        lines += ["Fold by fold (every method is scored on the same test folds, so these "
                  "differences are free of the spread the folds share; seeds: `random_init_seeds` "
                  "in report.json):", "", *[f"- {x}" for x in paired_lines(report)], ""]
    metric = "recall" if d["kind"] == "class" else "AP"
    lines += [f"## Per-class linear-probe {metric}", "",
              *([f"Each class's {metric} is the mean of its per-fold {metric}s (the confusion "
                 "matrix pools the folds' predictions, so its diagonal can differ a little).",
                 ""] if not report.get("test_data") else []),
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


NAME_CHARS = 18  # class names longer than this are cut, ending in ".."


def _short(name: str, limit: int = NAME_CHARS) -> str:
    """``name`` cut to ``limit`` characters (the last two "..") when longer."""
    return name if len(name) <= limit else name[:limit - 2] + ".."


def _shares(m: np.ndarray) -> np.ndarray:
    """Row shares of a confusion matrix (rows without samples: zeros)."""
    return m / np.maximum(m.sum(axis=1, keepdims=True), 1)


def _cell_text(count: float, share: float) -> str:
    """A cell's percent of its row: blank for none, "<1" for under half a percent."""
    if count <= 0:
        return ""
    pct = round(100 * share)
    return "<1" if pct == 0 else str(pct)


def _layout(n: int, cell: int | None) -> tuple[int, int, bool]:
    """(cell size, font scale, whether cells carry their percent) for ``n`` classes: large
    type up to 12 classes, small type beyond; cells shrink past 40 classes and then hold
    colour only (under 16 pixels "100" does not fit)."""
    scale = 2 if n <= 12 else 1
    if cell is None:
        cell = 32 if scale == 2 else (18 if n <= 40 else max(6, min(18, 720 // n)))
    return cell, scale, cell >= text_width("100", scale) + 4


def _colour(share: np.ndarray) -> np.ndarray:
    """White (0) to blue (1), (..., 3) uint8."""
    return np.stack([255 * (1 - share), 255 * (1 - 0.6 * share), np.full_like(share, 255)],
                    axis=-1).astype(np.uint8)


GRID, NO_SAMPLES = (200, 200, 200), (235, 235, 235)
SCALE_CAPTION = "colour: share of the row, 0% white .. 100% blue; blank: none; grey: no samples"


def _draw_cells(img: np.ndarray, m: np.ndarray, left: int, top: int, size: int, scale: int,
                with_text: bool) -> None:
    """The grid at (left, top): each cell coloured by its row share, the percent in it when
    ``with_text``; rows without samples grey; thin grid lines."""
    n, line = len(m), 5 * scale
    frac = _shares(m)
    rgb = _colour(frac)
    empty = m.sum(axis=1) == 0
    for r in range(n):
        y0 = top + r * size
        for c in range(n):
            x0 = left + c * size
            img[y0:y0 + size, x0:x0 + size] = NO_SAMPLES if empty[r] else rgb[r, c]
            text = _cell_text(m[r, c], frac[r, c]) if with_text else ""
            if text:
                ink = WHITE if frac[r, c] > 0.55 else INK
                draw_text(img, x0 + (size - text_width(text, scale)) // 2,
                          y0 + (size - line) // 2, text, ink, scale)
    grid = n * size
    for k in range(n + 1):
        img[top + k * size - (k == n), left:left + grid] = GRID
        img[top:top + grid, left + k * size - (k == n)] = GRID


def _paste(img: np.ndarray, x: int, y: int, part: np.ndarray) -> None:
    """Copy ``part`` into ``img`` with its top-left corner at (x, y), cut at the edges."""
    h, w = min(part.shape[0], img.shape[0] - y), min(part.shape[1], img.shape[1] - x)
    img[y:y + h, x:x + w] = part[:h, :w]


def _draw_scale(img: np.ndarray, x: int, y: int, length: int) -> None:
    """The colour scale at (x, y): "0%", a white-to-blue bar of ``length``, "100%", and
    under it what the colours and blanks mean."""
    x0 = x + text_width("0%") + 4
    draw_text(img, x, y + 2, "0%")
    img[y:y + 8, x0:x0 + length] = _colour(np.linspace(0.0, 1.0, length))[None]
    img[y:y + 8, x0 - 1] = img[y:y + 8, x0 + length] = INK
    draw_text(img, x0 + length + 4, y + 2, "100%")
    draw_text(img, x, y + 14, SCALE_CAPTION)


def confusion_png(confusion: Sequence[Sequence[int]], path: str | Path,
                  classes: Sequence[str] | None = None, *, cell: int | None = None) -> dict:
    """Write the confusion matrix as a PNG: rows the true class, columns the predicted one,
    each cell white-to-blue by its share of the row (the true class's samples or pixels)
    with that share in percent written in it where it fits (blank: none; rows without any
    grey), axis titles, the total and a colour scale around it.

    ``classes`` (class ``i``'s name at ``i``) label both axes (names cut to :data:`NAME_CHARS`
    characters; upper case is drawn lower by the pixel font); a class without a name (none
    given, or a segmentation ``task.num_classes`` beyond the named ones) by its index. Many
    classes give smaller type and cells (:func:`_layout`). Returns what it drew: ``labels``,
    ``cell`` (pixels), ``scale`` (font), ``cell_text`` (percent in cells), ``size`` (H, W).
    """
    m = np.asarray(confusion, np.float64)
    n = len(m)
    if m.ndim != 2 or m.shape != (n, n) or n == 0:
        raise ValueError(f"confusion: expected a non-empty square matrix, got shape {m.shape}")
    names = list(classes or [])
    labels = [_short(str(names[i])) if i < len(names) else str(i) for i in range(n)]
    size, s, with_text = _layout(n, cell)
    pad, line, grid = 6, 5 * s, n * size
    label_w = max(text_width(x, s) for x in labels)
    title = f"confusion matrix, {int(m.sum())} in all; a cell: % of its row (the true class)"
    left = pad + line + pad + label_w + pad  # "true class" (turned), the names, the grid
    top = pad + 5 + pad
    names_y = top + grid + pad  # the predicted classes' names, turned, under the columns
    axis_y = names_y + label_w + pad
    scale_y = axis_y + line + 2 * pad
    height = scale_y + 14 + 5 + pad
    width = max(left + grid, pad + text_width(title), pad + text_width(SCALE_CAPTION),
                left + text_width("predicted class", s)) + pad
    img = np.full((height, width, 3), 255, np.uint8)
    draw_text(img, pad, pad, title)
    _draw_cells(img, m, left, top, size, s, with_text)
    for i, label in enumerate(labels):
        y0 = top + i * size + (size - line) // 2
        draw_text(img, left - pad - text_width(label, s), y0, label, scale=s)
        up = text_up(label, scale=s)
        _paste(img, left + i * size + (size - up.shape[1]) // 2, names_y, up)
    up = text_up("true class", scale=s)
    _paste(img, pad, top + max((grid - up.shape[0]) // 2, 0), up)
    draw_text(img, left + max((grid - text_width("predicted class", s)) // 2, 0), axis_y,
              "predicted class", scale=s)
    room = width - 2 * pad - text_width("0%") - text_width("100%") - 8
    _draw_scale(img, pad, scale_y, min(max(grid, 100), room))
    write_png(path, img)
    return {"labels": labels, "cell": size, "scale": s, "cell_text": with_text,
            "size": (height, width)}


__all__ = ["METHODS", "NAME_CHARS", "UNGROUPED_SHORT", "aggregate", "confusion_png",
           "data_notes", "format_table", "grouping_warning", "macro_notes", "markdown", "mean_std", "paired_differences", "paired_lines",
           "scalar_keys", "table_rows", "ungrouped_tiles"]
