"""``eofm-probe --run RUN_DIR``: probe accuracy over a pretraining run's checkpoints, as a curve.

Every complete checkpoint of the run (oldest first) is probed the way ``eofm-probe`` probes an
export: its encoder rebuilt with its input contract (:func:`~.export.encoder_from_checkpoint`),
frozen features, the linear probe and kNN over the same stratified folds. The random-init and
band-statistics baselines do not change along a run and are computed once. ``OUT/curve.jsonl``
gets one line per checkpoint (step, training wall-clock ``elapsed_s`` when the run recorded it,
the training loss last logged by then, the headline scores), appended as each finishes, so a
rerun, or ``--watch`` on a run still training, probes only what is new. A rerun extends a curve
only with the settings it was made with (data, ``--pool``, ``--lastn``, tile grouping,
``--s2-offset``, ``--override-contract``, folds, seed, kNN k: stored in its baselines record),
else it is refused (status 2): checked from the command line before anything is probed or
opened (also when nothing is new, which would otherwise return the old curve as this rerun's),
and again on the opened data once a new checkpoint is probed. ``OUT/curve.png`` plots the
scores against the step with the baselines as dashed lines (``curve_time.png`` against
training minutes, to compare runs at equal wall-clock), and ``OUT/curve.md`` tabulates them.
kNN columns keep their names (``knn20_micro_map``) in curve.jsonl, whose records also hold the
neighbour counts kNN used (``knn_k_used``: k capped at a fold's training size); the table and
the plots name a capped k as the probe's report does (``knn20_micro_map (k=16)``).
The random-init baseline of a network with BatchNorm has its running statistics re-estimated
on the labelled data first (:func:`~.random_baseline.random_init`; ``random_init_batchnorm``).

``--watch`` polls the run every ``--poll`` seconds and stops once it has probed the run's final
checkpoint (step = the run's total steps) or after ``--timeout`` minutes. Checkpoints the run
prunes (``runtime.keep_last_k``) before the watcher reaches them are missed, and said to be.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from eofm.data_shards.manifest import atomic_write_text
from eofm.data_shards.remote import without_credentials
from eofm.data_shards.s2_baseline import parse_mode as parse_s2_offset
from eofm.models.probe_table import knn_used, ungrouped_tiles
from eofm.pretrain.checkpoint import CheckpointManager

from .datasets import LabelledData, open_labelled
from .export import encoder_from_checkpoint, load_checkpoint
from .features import Preprocess, apply_contract, extract_features, note_adapter_bypass
from .plot import Series, line_chart
from .probe import KNN_K, band_stats_features, headline
from .probe_protocol import cross_validate
from .random_baseline import batchnorm_note, random_init
from .report import METHODS, UNGROUPED_SHORT

log = logging.getLogger(__name__)
CURVE = "curve.jsonl"


def run_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the run's checkpoints, oldest first: plain files and complete
    DeepSpeed folders (consolidated when probed)."""
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    return sorted(CheckpointManager(folder, rank=0).every_checkpoint())


def read_curve(path: Path) -> list[dict[str, Any]]:
    """The records of ``curve.jsonl`` (a line cut short by a kill is ignored)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: ignoring an incomplete line", path)
    return out


def _append(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to the curve file ``path``, durably; its folder (``--out``) is made
    here, at the curve's first write, so a refused run leaves no folder behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(without_credentials(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def logged_losses(run: Path) -> dict[int, float]:
    """``{step: training loss}`` the run has logged so far (``metrics.jsonl``; the last record
    of a step wins, as after a resume)."""
    path = run / "metrics.jsonl"
    out: dict[int, float] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r.get("step"), int) and isinstance(r.get("loss"), (int, float)):
            out[r["step"]] = float(r["loss"])
    return out


def loss_at(losses: dict[int, float], step: int) -> float | None:
    """The loss logged last at or before ``step``."""
    best = max((s for s in losses if s <= step), default=None)
    return None if best is None else losses[best]


def knn_k_used(results: dict[str, dict]) -> dict[str, list[int]]:
    """Per kNN k (``"20"``), the neighbour counts it used over the folds and methods of
    ``results`` (:func:`~.probe_protocol.cross_validate`'s), ascending: ``[20]``, or ``[16]`` when
    every fold's training part held only 16 samples."""
    ks = {k for r in results.values() for k in r.get("knn", {})}
    return {k: knn_used(results, k) for k in sorted(ks, key=int)}


def column_label(name: str, used: dict[str, list[int]]) -> str:
    """A curve column's label: ``name``, with the k kNN actually used when it was capped
    (``knn20_micro_map (k=16)``, ``(k=15-16)`` when folds differed), as the probe's report
    names it (:func:`~eofm.models.probe_table.knn_label`)."""
    k = name[3:].split("_", 1)[0] if name.startswith("knn") else None
    ks = used.get(k, []) if k is not None else []
    if not ks or ks == [int(k)]:
        return name
    return f"{name} (k={ks[0] if len(ks) == 1 else f'{ks[0]}-{ks[-1]}'})"


def curve_k_used(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The neighbour counts of every kNN k over a curve's records (``knn_k_used``; records
    written before it was stored have none)."""
    out: dict[str, set[int]] = {}
    for r in records:
        for k, used in (r.get("knn_k_used") or {}).items():
            out.setdefault(k, set()).update(used)
    return {k: sorted(v) for k, v in out.items()}


def _scores(result: dict[str, Any], kind: str) -> dict[str, float]:
    """Headline means of one method's cross-validated result: linear and each kNN k."""
    key = headline(kind)
    out = {f"linear_{key}": result["linear"][key]["mean"]}
    for k, r in result["knn"].items():
        out[f"knn{k}_{key}"] = r[key]["mean"]
    return out


class CurveProber:
    """Probes checkpoints of one run on one labelled dataset (data and folds fixed)."""

    def __init__(self, args: argparse.Namespace, device: str) -> None:
        self.args, self.device = args, device
        self.data: LabelledData | None = None
        self.pre: Preprocess | None = None
        self.contract: dict[str, Any] | None = None
        self.baseline: dict[str, Any] | None = None  # the baselines' record, once data is open

    def _features(self, encoder: Any, desc: str) -> np.ndarray:
        assert self.data is not None and self.pre is not None
        a = self.args
        feats, _ = extract_features(encoder, self.data, self.pre, pool=a.pool, n=a.lastn,
                                    batch_size=a.batch_size, device=self.device,
                                    progress=not a.quiet, desc=desc)
        return feats

    def _cv(self, feats: dict[str, np.ndarray]) -> dict[str, dict]:
        assert self.data is not None
        groups = self.data.groups if self.args.group_tiles else None
        return cross_validate(feats, self.data.labels, self.data.kind, len(self.data.classes),
                              self.args.folds, self.args.seed, groups=groups,
                              progress=not self.args.quiet)

    def prepare(self, encoder: Any) -> None:
        """Open the data for the first checkpoint's contract and score the baselines."""
        a = self.args
        self.data = open_labelled(a.data, modality=a.modality,
                                  prefer_bands=encoder.contract.bands, s2_offset=a.s2_offset,
                                  progress=not a.quiet)
        self.pre = apply_contract(self.data, encoder.contract, override=a.override_contract)
        note_adapter_bypass(self.pre, encoder)
        self.contract = encoder.contract.to_dict()

        model = random_init(encoder, a.seed, self.data, self.pre, batch_size=a.batch_size,
                            device=self.device, progress=not a.quiet)
        feats = {"random_init": self._features(model, "random_init"),
                 "band_stats": band_stats_features(self.data, self.pre.source_bands)}
        res = self._cv(feats)
        kind = self.data.kind
        bn = batchnorm_note(encoder, self.data)
        self.baseline = without_credentials(  # as curve.jsonl stores it: no user:token@
            {"baselines": {m: _scores(res[m], kind) for m in METHODS if m in res},
             "knn_k_used": knn_k_used(res),
             **({"random_init_batchnorm": bn} if bn else {}),
             "data": self.data.describe(), **args_setup(a), "preprocess": self.pre.to_dict(),
             # with group_tiles false and tiles of fewer images: curve.md and the charts say
             # the scores are optimistic (ungrouped_tiles), as eofm-probe's report does
             "source_images": len(set(self.data.groups))})

    def probe(self, step: int, path: Path, loss: float | None) -> dict[str, Any]:
        """The checkpoint's curve record (``loss``: the training loss logged by then)."""
        t0 = time.perf_counter()
        ckpt = load_checkpoint(path)
        encoder, _, _ = encoder_from_checkpoint(ckpt, data=self.args.pretrain_data,
                                                data_flag="--pretrain-data")
        encoder = encoder.to(self.device)
        if self.data is None:
            self.prepare(encoder)
        elif encoder.contract.to_dict() != self.contract:
            raise ValueError(f"{path}: its input contract differs from the run's earlier "
                             "checkpoints'; probe it on its own with eofm-export + eofm-probe")
        assert self.data is not None
        res = self._cv({"pretrained": self._features(encoder, f"step {step}")})
        rec = {"step": step, "elapsed_s": ckpt.get("elapsed_s"),
               "total_steps": ckpt.get("total_steps"),
               "train_loss": loss, **_scores(res["pretrained"], self.data.kind),
               "knn_k_used": knn_k_used(res),
               "seconds": round(time.perf_counter() - t0, 2)}
        return rec


def feature_setup(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that decide a curve's features and folds besides data, folds, seed and
    kNN k, as its baseline record stores them: ``pool``, ``lastn`` (the blocks ``--pool
    lastn`` concatenates; None for other pools, which ignore it), ``group_tiles``,
    ``s2_offset`` (as ``--s2-offset`` reads it: "auto" or a DN offset) and
    ``override_contract``."""
    return {"pool": args.pool, "lastn": args.lastn if args.pool == "lastn" else None,
            "group_tiles": bool(args.group_tiles), "s2_offset": parse_s2_offset(args.s2_offset),
            "override_contract": bool(args.override_contract)}


def args_setup(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of :data:`SETUP_KEYS` but the data, as the baselines record stores it:
    :func:`feature_setup`, ``folds``, ``seed`` and ``knn_k``. Known from the command line alone."""
    return {**feature_setup(args), "folds": args.folds, "seed": args.seed, "knn_k": list(KNN_K)}


def args_data(args: argparse.Namespace) -> dict[str, Any]:
    """What the command line alone says of the data the baselines record describes: its
    ``source`` (``--data`` as :func:`~.datasets.open_labelled` records it, credentials
    redacted as curve.jsonl stores them) and, when ``--modality`` is given, its ``modality``."""
    out: dict[str, Any] = {"source": without_credentials(str(Path(args.data)))}
    if args.modality is not None:
        out["modality"] = args.modality
    return out


SETUP_KEYS = ("data", "pool", "lastn", "group_tiles", "s2_offset", "override_contract",
              "folds", "seed", "knn_k")  # a curve is extended only when all of them match
LATER_KEYS = ("lastn", "group_tiles", "s2_offset", "override_contract")  # older curves lack them


def _implicit(stored: dict[str, Any], key: str) -> Any:
    """The value of ``key`` (one of :data:`LATER_KEYS`) that a curve written before it was
    stored was made with, as far as its record tells: the flag's default in every earlier
    version (``--lastn`` 4 under ``--pool lastn``, else None; tiles grouped; ``--s2-offset
    auto``), and ``--override-contract`` when its preprocessing lists overridden contract
    differences (else not). A curve made with another value passed on the command line cannot
    be told apart; the default is the value it most likely used."""
    if key == "lastn":
        return 4 if stored.get("pool") == "lastn" else None
    if key == "override_contract":
        pre = stored.get("preprocess")
        return bool(isinstance(pre, dict) and pre.get("overridden"))
    return {"group_tiles": True, "s2_offset": "auto"}.get(key)


# data fields that older curves' records lack (dropped_samples: only when a build dropped any)
DATA_LATER_KEYS = ("s2_offset", "dropped_samples")


def _data_as_recorded(stored: Any, now: Any) -> Any:
    """``now``'s data description without the fields of :data:`DATA_LATER_KEYS` that the
    ``stored`` one (written by an older eofm-probe) lacks: those cannot be compared."""
    if not isinstance(stored, dict) or not isinstance(now, dict):
        return now
    return {k: v for k, v in now.items() if k in stored or k not in DATA_LATER_KEYS}


def _same_setup(stored: dict[str, Any], now: dict[str, Any], path: Path, *,
                warn: bool = True) -> None:
    """Refuse to extend a curve made with other data, probe or feature settings
    (:data:`SETUP_KEYS`): its points would not be comparable. A key an older curve lacks is
    taken as :func:`_implicit` says that version used, and a rerun that would differ from it
    is refused; one that matches is accepted with a warning naming the assumed values
    (``warn=False``: not again, as :func:`check_rerun` has warned already)."""
    assumed = {k: _implicit(stored, k) for k in LATER_KEYS if k not in stored}
    then = {**stored, **assumed}
    now = {**now, "data": _data_as_recorded(stored.get("data"), now.get("data"))}
    diff = [k for k in SETUP_KEYS if then.get(k) != now.get(k)]
    if diff:
        def was(k: str) -> str:
            old = " (not recorded by the older eofm-probe that wrote it; assumed)" \
                if k in assumed else ""
            return f"{k}={then.get(k)!r}{old}, now {now.get(k)!r}"

        raise ValueError(f"{path}: was made with other {', '.join(diff)} "
                         f"({'; '.join(was(k) for k in diff)}); its points would not compare "
                         "with this run's: write this curve to another --out")
    if assumed and warn:
        log.warning("%s: written by an older eofm-probe that did not record %s; taken as %s, "
                    "the values this run uses (a curve made with other flags cannot be told "
                    "apart)", path, ", ".join(assumed),
                    ", ".join(f"{k}={v!r}" for k, v in assumed.items()))


def check_rerun(stored: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """Refuse, as :func:`_same_setup` does, a rerun whose command line differs from the
    settings the curve's baselines record ``stored`` was made with (:func:`args_setup`, and the
    data's source and any ``--modality`` given: :func:`args_data`), before anything is probed
    or opened: with no new checkpoint the old curve would otherwise be returned as this
    rerun's. The data as opened (its bands, samples, classes) is compared once a new checkpoint
    is probed."""
    data = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    now = {**args_setup(args), "data": args_data(args)}
    _same_setup({**stored, "data": {k: data.get(k) for k in now["data"]}}, now, path)


def write_outputs(out: Path, records: list[dict[str, Any]], run: str) -> None:
    """``curve.png`` and ``curve.md`` from the curve's records."""
    records, run = without_credentials(records), without_credentials(run)
    base = next((r for r in records if "baselines" in r), None)
    points = sorted((r for r in records if "step" in r), key=lambda r: r["step"])
    if base is None or not points:
        return
    names = [k for k in points[0] if k.startswith(("linear_", "knn")) and k != "knn_k_used"]
    used = curve_k_used([base, *points])
    label = {n: column_label(n, used) for n in names}
    series = [Series(label[n].replace("_", " "), [p[n] for p in points],
                     [p["step"] for p in points]) for n in names]
    lin = names[0]
    for m, scores in base["baselines"].items():
        series.append(Series(f"{m.replace('_', ' ')} {lin.replace('_', ' ')}", [scores[lin]]))
    y_label = f"{Path(str(base['data'].get('source', 'data'))).name} {lin.split('_', 1)[1]}"
    ungrouped = ungrouped_tiles(base)  # folds split tile by tile: every score optimistic
    if ungrouped:
        y_label += f" ({UNGROUPED_SHORT})"
    line_chart(out / "curve.png", series, x_label="step", y_label=y_label)
    if all(p.get("elapsed_s") is not None for p in points):  # for equal wall-clock comparisons
        minutes = [p["elapsed_s"] / 60.0 for p in points]
        timed = [Series(s.name, s.y, minutes if s.x is not None else None) for s in series]
        line_chart(out / "curve_time.png", timed, x_label="training minutes", y_label=y_label)
    head = ["step", "elapsed_s", "train_loss", *(label[n] for n in names)]
    lines = [f"# Probe accuracy along `{run}`", "",
             f"Data `{base['data'].get('source')}`, {base['folds']}-fold cross-validation, "
             f"features `{base['pool']}`. Baselines (constant along the run): "
             + "; ".join(f"{m}: " + ", ".join(f"{column_label(k, used)} {v:.3f}"
                                             for k, v in s.items())
                         for m, s in base["baselines"].items()) + ".", "",
             *([f"**--no-group-tiles: {base['data'].get('samples')} tiles of "
                f"{base['source_images']} images, tiles of one image on both sides of the "
                "folds' splits: every score here is optimistic.**", ""] if ungrouped else []),
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for p in points:
        el, loss = p.get("elapsed_s"), p.get("train_loss")
        lines.append("| " + " | ".join([str(p["step"]), "-" if el is None else f"{el:.0f}",
                                        "-" if loss is None else f"{loss:.4f}",
                                        *(f"{p[n]:.3f}" for n in names)]) + " |")
    lines += ["", "![curve](curve.png)", ""]
    if (out / "curve_time.png").is_file():
        lines += ["![curve against training time](curve_time.png)", ""]
    atomic_write_text(out / "curve.md", "\n".join(lines))


def run_curve(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """Probe every new checkpoint of ``args.run`` (and keep watching with ``args.watch``);
    returns the curve's records."""
    run, out = Path(args.run), Path(args.out)
    if not run.is_dir():
        raise ValueError(f"--run: {run} is not a pretraining run directory")
    path = out / CURVE  # out is made at the first write (_append): a refusal leaves none
    records = read_curve(path)
    done = {r["step"] for r in records if "step" in r}
    stored = next((r for r in records if "baselines" in r), None)
    if stored is not None:  # before probing, and before returning the old curve unchanged
        check_rerun(stored, args, path)
    prober = CurveProber(args, device)
    deadline = time.monotonic() + 60.0 * args.timeout if args.timeout else None
    probed = False
    while True:
        found = [(s, c) for s, c in run_checkpoints(run) if s not in done]
        if not found and not done and not args.watch:
            raise ValueError(f"--run: no checkpoint in {run}/checkpoints (step_*.pt)")
        losses = logged_losses(run) if found else {}
        for step, ckpt in found:
            try:
                rec = prober.probe(step, ckpt, loss_at(losses, step))
            except FileNotFoundError:  # pruned by the run between listing and reading
                log.warning("%s: pruned by the run before it could be probed", ckpt)
                continue
            if stored is None:
                stored = prober.baseline
                _append(path, stored)
                records.append(stored)
            elif not probed:  # this process scored the baselines again: same data too?
                _same_setup(stored, prober.baseline, path, warn=False)
            _append(path, rec)
            records.append(rec)
            done.add(step)
            probed = True
            log.info("step %d: %s", step, {k: v for k, v in rec.items() if k.startswith(
                ("linear_", "knn"))})
            write_outputs(out, records, str(run))
        finished = any(r.get("total_steps") is not None and r["step"] >= r["total_steps"]
                       for r in records if "step" in r)
        if not args.watch or finished or (deadline is not None and time.monotonic() > deadline):
            break
        time.sleep(args.poll)
    if not probed:  # nothing new: the pictures and table still follow the records
        write_outputs(out, records, str(run))
    return records
