"""``eofm-probe``: linear-probe and kNN evaluation of a frozen encoder on labelled data.

Features are extracted once per encoder (the one under test, a random-init encoder of the same
architecture, and each band's mean and std as a no-encoder baseline), preprocessed from the
encoder's input contract. Stratified k-fold cross-validation: each fold is the test set once;
a stratified 1/max(k-1, 4) slice of the other folds is the validation set of the linear
probe's sweep (the chosen setting is then refit on all of them); kNN uses all of them.
The random-init encoder of a network with BatchNorm (a ResNet) has its running statistics
re-estimated on all the images of --data before its features are extracted (with
cross-validation the test folds' images too, once for every fold: no labels are read, and the
pretrained encoder's statistics come from its own training data, not from these images; never
--test-data), as an export's were tracked on its training data (report.json
``random_init_batchnorm``).
With --no-group-tiles on tiles of fewer images, tiles of one image fall on both sides of the
folds: report.json records ``group_tiles`` and ``source_images``, and the table title,
report.md, the model card and a printed warning say the scores are optimistic. Samples the
data's build dropped (its manifest's ``dropped_*`` counters) are noted likewise.
The table is printed and REPORT_DIR/report.json (+ report.md, confusion.png) written;
report.json records the encoder's weights digest (``encoder_weights_sha256``) and input
contract, by which ``eofm-export --evaluation`` checks the report is of the export it writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eofm.data_shards.command import REFUSED, error, run_command, stdout_may_close
from eofm.data_shards.label_sets import LABEL_SETS
from eofm.data_shards.manifest import atomic_write_text
from eofm.data_shards.outputs import unwritable_reason
from eofm.data_shards.remote import without_credentials

from .datasets import (
    LabelledData,
    align_classes,
    check_test_images,
    open_labelled,
    same_pixels,
)
from .evaluation_check import WEIGHTS_DIGEST, weights_digest
from .features import (
    POOLS,
    Preprocess,
    apply_contract,
    extract_features,
    note_adapter_bypass,
)
from .probe import (
    BAND_STATS,
    KNN_K,
    band_stats_features,
)
from .probe_protocol import check_splits, cross_validate, fixed_split  # re-exported
from .random_baseline import (  # re-exported: their public home before the split
    RANDOM_SEED_PREFIX,
    batchnorm_note,
    random_init,
    random_seed_keys,
    random_seed_range,
)
from .report import (
    METHODS,
    confusion_png,
    format_table,
    grouping_warning,
    markdown,
    paired_differences,
)

CONFUSION_PNG = "confusion.png"  # beside report.json, single-label reports only


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``eofm-probe`` (:func:`parse_args` adds the checks across flags)."""
    p = argparse.ArgumentParser(prog="eofm-probe", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--encoder",
                       help="export folder (eofm-export / save_pretrained) or Hub repo id "
                            "ORG/NAME")
    which.add_argument("--run", metavar="RUN_DIR",
                       help="a pretraining run: probe each of its checkpoints, oldest first, "
                            "into OUT/curve.jsonl, curve.png and curve.md (a rerun probes only "
                            "new ones)")
    p.add_argument("--data", required=True,
                   help="labelled data: eofm-shard build output (shards or .zarr) or a "
                        "folder of GeoTIFFs in EuroSAT layout (class = folder)")
    p.add_argument("--out", required=True, help="report folder (report.json, report.md)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--test-data", default=None, metavar="PATH",
                   help="a fixed test set (e.g. an official split built with eofm-shard build): "
                        "probes fit on --data (its validation slice picks the sweep's setting) "
                        "and are scored once on PATH, instead of cross-validation")
    p.add_argument("--label-set", default=None, choices=sorted(LABEL_SETS),
                   help="regroup multi-labels by a published nomenclature first (bigearthnet19: "
                        "BigEarthNet's 43 CORINE names -> the 19 classes papers report)")
    p.add_argument("--pool", choices=POOLS, default="cls",
                   help="features: class token (cls), mean of patch tokens (mean), or the "
                        "class tokens of the last n blocks (lastn) (default cls)")
    p.add_argument("--lastn", type=int, default=4,
                   help="blocks concatenated by --pool lastn (default 4)")
    p.add_argument("--override-contract", action="store_true",
                   help="evaluate data that does not satisfy the encoder's input contract; "
                        "the report lists every difference")
    p.add_argument("--seed", type=int, default=0, help="folds, splits and random init")
    p.add_argument("--random-seeds", type=int, default=1, metavar="N",
                   help="random-init encoders with seeds SEED .. SEED+N-1; the table's "
                        "random_init row is seed SEED's and a further row gives the range of "
                        "the N means (default 1)")
    p.add_argument("--no-group-tiles", dest="group_tiles", action="store_false",
                   help="let tiles cut from one image fall on both sides of a split: "
                        "optimistic scores, flagged in the table, report and card (by default "
                        "all tiles of an image, keys <image>_r<row>_c<col>, share one fold)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per forward pass of feature extraction (default 64)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:0...")
    p.add_argument("--modality", default=None, help="modality of a multi-modal dataset")
    p.add_argument("--s2-offset", default="auto", metavar="auto|none|-1000",
                   help="Sentinel-2 baseline-04.00 DN offset when --data is a raw folder (as "
                        "`eofm-shard build --s2-offset`; default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--watch", action="store_true",
                   help="with --run: keep probing new checkpoints until the run's final one")
    p.add_argument("--poll", type=float, default=60.0,
                   help="with --watch: seconds between looks at the run (default 60)")
    p.add_argument("--timeout", type=float, default=None, metavar="MINUTES",
                   help="with --watch: stop after this long (default: at the final checkpoint)")
    p.add_argument("--pretrain-data", default=None, metavar="PATH",
                   help="with --run: the pretraining dataset, when it is no longer at the "
                        "run's data.path (checkpoints that store their contract need none)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments, checked across flags (argparse's error and status 2)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.random_seeds < 1:
        p.error(f"--random-seeds: expected at least 1, got {args.random_seeds}")
    if args.run is None and (args.watch or args.pretrain_data):
        p.error("--watch and --pretrain-data go with --run")
    if args.run is not None and (args.test_data or args.label_set):
        p.error("--test-data and --label-set go with --encoder")
    if args.run is not None and args.random_seeds != 1:
        p.error("--random-seeds: not with --run (the curve has one random-init baseline)")
    if args.poll <= 0:
        p.error(f"--poll: expected a positive number of seconds, got {args.poll}")
    given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}  # flags
    if not args.watch and {"--poll", "--timeout"} & given:
        p.error("--poll and --timeout go with --watch")
    if args.timeout is not None and args.timeout <= 0:
        p.error(f"--timeout: expected a positive number of minutes, got {args.timeout}")
    if args.seed < 0:
        p.error(f"--seed: expected a whole number >= 0, got {args.seed}")
    if args.pool != "lastn" and "--lastn" in given:
        p.error(f"--lastn: goes with --pool lastn, got --pool {args.pool}")
    if args.batch_size < 1:
        p.error(f"--batch-size: expected a positive number of images, got {args.batch_size}")
    if args.pool == "lastn" and args.lastn < 1:
        p.error(f"--lastn: expected at least 1 block (at most the encoder's depth), got "
                f"{args.lastn}")
    if reason := device_problem(args.device):
        p.error(f"--device: {reason}")
    return args


def device_problem(device: str) -> str | None:
    """Why ``device`` (``--device``) cannot be used here, or None: "auto", "cpu", "cuda",
    "cuda:N" with that GPU present, or another device torch knows and has (e.g. "mps")."""
    if device == "auto":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return f"expected auto, cpu, cuda or cuda:N, got {device!r}"
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            return f"{device!r}: no CUDA GPU is available here; use auto or cpu"
        if dev.index is not None and dev.index >= n:
            return f"{device!r}: this machine has {n} CUDA GPU(s), cuda:0..cuda:{n - 1}"
        return None
    backend = getattr(torch.backends, dev.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        return f"{device!r}: no {dev.type} device here; expected auto, cpu, cuda or cuda:N"
    return None


def load_encoder(spec: str, device: str) -> torch.nn.Module:
    """An exported encoder with its contract, from a folder or the Hub."""
    from eofm.models.hub import from_pretrained

    return from_pretrained(spec, device=device)


def check_lastn(args: argparse.Namespace, encoder: torch.nn.Module) -> None:
    """With ``--pool lastn``: a ValueError when ``--lastn`` exceeds the encoder's depth (found
    before any data is read)."""
    blocks = getattr(encoder, "blocks", None)
    if args.pool == "lastn" and blocks is not None and not 0 < args.lastn <= len(blocks):
        raise ValueError(f"--lastn: expected 1..{len(blocks)} (the encoder {args.encoder}'s "
                         f"depth), got {args.lastn}")


def encoder_record(encoder: torch.nn.Module) -> dict:
    """What report.json records of the encoder under test, by which ``eofm-export
    --evaluation`` checks a report is of the export it writes: its architecture, weights
    digest (:func:`~.evaluation_check.weights_digest`) and input contract."""
    return {"architecture": encoder.model_name, WEIGHTS_DIGEST: weights_digest(encoder),
            "contract": encoder.contract.to_dict()}


def _features(args: argparse.Namespace, encoder: torch.nn.Module,
              sets: Sequence[tuple[LabelledData, Preprocess]], device: str
              ) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
    """Features of the three methods on each of ``sets`` (the training data first, then any
    fixed test set: each random-init encoder is drawn, and its BatchNorm statistics
    re-estimated on the training data, once for all of them), and the seconds each took."""
    feats: list[dict[str, np.ndarray]] = [{} for _ in sets]
    seconds: dict[str, float] = {}
    data, pre = sets[0]

    def extract(model: torch.nn.Module, key: str, desc: str) -> None:
        for out, (d, p) in zip(feats, sets, strict=True):
            out[key], _ = extract_features(
                model, d, p, pool=args.pool, n=args.lastn, batch_size=args.batch_size,
                device=device, progress=not args.quiet, desc=desc)

    def drawn(seed: int) -> torch.nn.Module:
        return random_init(encoder, seed, data, pre, batch_size=args.batch_size,
                           device=device, progress=not args.quiet)

    for method in METHODS:
        t0 = time.perf_counter()
        if method == "band_stats":
            for out, (d, p) in zip(feats, sets, strict=True):
                out[method] = band_stats_features(d, p.source_bands)
        else:
            extract(encoder if method == "pretrained" else drawn(args.seed), method, method)
        seconds[method] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for seed in range(args.seed + 1, args.seed + args.random_seeds):  # the further seeds
        extract(drawn(seed), f"{RANDOM_SEED_PREFIX}{seed}", f"random_init seed {seed}")
    if args.random_seeds > 1:
        seconds["random_init_more_seeds"] = time.perf_counter() - t0
    return feats, seconds


def _open(args: argparse.Namespace, path: str, encoder: torch.nn.Module) -> LabelledData:
    """Labelled data at ``path`` for ``encoder``, regrouped by ``--label-set`` if given."""
    data = open_labelled(path, modality=args.modality, prefer_bands=encoder.contract.bands,
                         s2_offset=args.s2_offset, progress=not args.quiet)
    return data.relabel(args.label_set) if args.label_set else data


def _align_test(train: LabelledData, test: LabelledData) -> LabelledData:
    """``test`` with its labels in ``train``'s class order, matched by name
    (:func:`~eofm.finetune.datasets.align_classes`: splits built apart list only the classes
    each holds); refused when the label kind or bands differ, the test set has classes the
    training data lacks (the probe could not learn them), or it shares any source image with
    the training data (:func:`~eofm.finetune.datasets.check_test_images`: the --data dataset
    itself, a copy of it or a part of one: kNN would find each sample itself)."""
    for field in ("kind", "bands"):
        a, b = getattr(train, field), getattr(test, field)
        if a != b:
            raise ValueError(f"{test.source}: --test-data {field} {b} differ from --data "
                             f"{train.source}'s {a}; expected the same task")
    test = align_classes(train, test, test_flag="--test-data", train_flag="--data",
                         learner="the probe")
    check_test_images(train.keys, test.keys, train=f"--data {train.source}",
                      test=f"--test-data {test.source}",
                      learner="the probes (kNN: each such sample finds itself)",
                      instead="build the test set from other images, or omit --test-data to "
                              "cross-validate --data over --folds",
                      same_pixels=same_pixels(train, test))
    return test


def write_report(out: Path, report: dict) -> None:
    """report.json, report.md and, for class labels, confusion.png, each atomically; a
    confusion.png of an earlier report is removed otherwise. ``report["confusion_png"]`` names
    the picture written with it (None without one): eofm-export embeds only that."""
    out.mkdir(parents=True, exist_ok=True)
    png = CONFUSION_PNG if report["data"]["kind"] == "class" else None
    if png:
        confusion_png(report["pretrained"]["linear"]["confusion"], out / png,
                      report["data"]["classes"])
    else:  # a stale picture of another report must not pass for this one's
        (out / CONFUSION_PNG).unlink(missing_ok=True)
    report["confusion_png"] = png
    shown = without_credentials(report)  # a data path may be a URL with user:token@
    atomic_write_text(out / "report.md", markdown(shown, png) + notes_md(shown))
    atomic_write_text(out / "report.json", json.dumps(shown, indent=1) + "\n")


def notes_md(report: dict) -> str:
    """report.md's closing notes on how the baselines were made (the random-init encoder's
    BatchNorm re-estimation); empty without any."""
    bn = report.get("random_init_batchnorm")
    if not isinstance(bn, dict) or not bn.get("note"):
        return ""
    return f"\n## Notes\n\n- {bn['note']}\n"


def run(args: argparse.Namespace) -> dict:
    """The whole evaluation; returns the report (also written to ``args.out``)."""
    t_start = time.perf_counter()
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    encoder = load_encoder(args.encoder, device)
    check_lastn(args, encoder)
    probed = encoder_record(encoder)
    t_load = time.perf_counter()
    data = _open(args, args.data, encoder)
    pre = apply_contract(data, encoder.contract, override=args.override_contract)
    note_adapter_bypass(pre, encoder)
    test = None
    if args.test_data:
        test = _open(args, args.test_data, encoder)
        test = _align_test(data, test)
        test_pre = apply_contract(test, encoder.contract, override=args.override_contract)
        note_adapter_bypass(test_pre, encoder)
    t_data = time.perf_counter()
    groups = data.groups if args.group_tiles else None
    check_splits(data, groups, args.folds, args.seed, fixed=test is not None)
    sets = [(data, pre), *([(test, test_pre)] if test is not None else [])]
    (feats, *more), seconds = _features(args, encoder, sets, device)
    if test is not None:
        test_feats = more[0]
        t_cv = time.perf_counter()
        results = fixed_split(feats, data.labels, test_feats, test.labels, data.kind,
                              len(data.classes), args.seed, groups=groups,
                              progress=not args.quiet)
    else:
        t_cv = time.perf_counter()
        results = cross_validate(feats, data.labels, data.kind, len(data.classes), args.folds,
                                 args.seed, groups=groups, progress=not args.quiet)
    seeds = random_seed_keys(results)
    paired = paired_differences(results, data.kind, ["random_init", *seeds, "band_stats"])
    seed_range = random_seed_range(results, data.kind, args.seed)
    report = {
        "encoder": str(args.encoder), **probed, "data": data.describe(),
        "preprocess": pre.to_dict(), "override_contract": bool(args.override_contract),
        "folds": args.folds if test is None else 1,
        "split": (f"{args.folds}-fold cross-validation" if test is None
                  else f"fixed test set {args.test_data}"),
        **({"test_data": test.describe(),
            "test_preprocess": test_pre.to_dict()} if test is not None else {}),
        "fold_groups": len(set(groups)) if groups is not None else None,
        # whether tiles of one image were kept on one side of every split, and of how many
        # images the samples are tiles (fewer than the samples with grouping off: the
        # report's scores are flagged optimistic, report.ungrouped_tiles)
        "group_tiles": bool(args.group_tiles), "source_images": len(set(data.groups)),
        "pool": args.pool, "lastn": args.lastn if args.pool == "lastn" else None,
        "seed": args.seed, "knn_k": list(KNN_K), "device": device,
        **({"random_init_batchnorm": bn} if (bn := batchnorm_note(encoder, data)) else {}),
        "feature_dim": {m: r["feature_dim"] for m, r in results.items()},
        "band_stats_features": list(BAND_STATS),  # per band, of the raw pixels
        **results,
        **({"random_init_seeds": seed_range} if seed_range else {}),
        "paired": paired,
        "seconds": {"load_encoder": t_load - t_start, "load_data": t_data - t_load,
                    **{f"features_{m}": s for m, s in seconds.items()},
                    "cross_validation": time.perf_counter() - t_cv,
                    "total": time.perf_counter() - t_start},
    }
    write_report(Path(args.out), report)
    return report


def _main_curve(args: argparse.Namespace) -> int:
    """``--run``: the curve over a run's checkpoints."""
    from .probe_curve import run_curve

    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    records = run_curve(args, device)
    out = Path(args.out)
    text = (out / "curve.md").read_text() if (out / "curve.md").is_file() else ""
    print("\n".join(line for line in text.splitlines() if line.startswith("|")))
    print(f"curve: {out / 'curve.jsonl'} ({sum('step' in r for r in records)} checkpoints), "
          f"{out / 'curve.png'}")
    return 0


@stdout_may_close
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``eofm-probe``; exit status 2 on a refused input, 1 with a message when
    the disk or the quota is full."""
    args = parse_args(argv)
    # up front, not after the features are computed; try_making: os.access says yes to root
    # where making the folder fails (/proc, some network mounts)
    if reason := unwritable_reason(args.out, try_making=True):
        error("eofm-probe", f"--out: {reason}")
        return REFUSED
    work = _main_curve if args.run is not None else _main_probe
    # OSError: an unreadable or unwritable file (a full disk is status 1), as eofm-export
    return run_command("eofm-probe", lambda: work(args), out=args.out,
                       refused=(ValueError, OSError),
                       interrupted="nothing half-written is kept; the same command runs it "
                                   "again (--run: the checkpoints not yet in curve.jsonl)")


def _main_probe(args: argparse.Namespace) -> int:
    """One encoder's probe: the report written, its table printed."""
    report = run(args)
    print(format_table(without_credentials(report)))
    if warning := grouping_warning(report):
        print(f"WARNING: {warning}")
    pre = report["preprocess"]
    for p in pre["overridden"]:
        print(f"OVERRIDDEN contract difference: {p}")
    for p in pre["notes"]:
        print(f"note: {p}")
    if report.get("random_init_batchnorm"):
        print(f"note: {report['random_init_batchnorm']['note']}")
    print(f"report: {Path(args.out) / 'report.json'} ({report['seconds']['total']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
