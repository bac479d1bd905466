"""``eofm-shard``: build, inspect, verify and re-compute statistics of EO shard datasets."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .command import error, run_command, stdout_may_close
from .layouts import LAYOUTS, LayoutOptions

if TYPE_CHECKING:
    from .manifest import Manifest


def _bands_item(text: str) -> tuple[str, list[str]]:
    """One ``--bands`` value: ``s2=B04,B03,B02`` -> ("s2", ["B04", "B03", "B02"]); anything
    else is a parser error (exit 2, with the usage line)."""
    mod, sep, names = text.partition("=")
    bands = [n.strip() for n in names.split(",") if n.strip()]
    if not sep or not mod.strip() or not bands:
        raise argparse.ArgumentTypeError(
            f"expected MODALITY=B1,B2,... (e.g. s2=B04,B03,B02; the modality names the input's "
            f"s2, s1, hsi, landsat, rgb, ...), got {text!r}")
    dups = sorted({b for b in bands if bands.count(b) > 1})
    if dups:
        raise argparse.ArgumentTypeError(f"expected each band once, got {dups} more than once "
                                         f"in {text!r}")
    return mod.strip(), bands


def _bands_arg(values: Sequence[tuple[str, list[str]]] | None) -> dict[str, list[str]]:
    """Parsed ``--bands`` values -> {"s2": ["B04", "B03", "B02"]}; a modality given twice is
    refused (the second would silently replace the first)."""
    out: dict[str, list[str]] = {}
    for mod, names in values or []:
        if mod in out:
            raise ValueError(f"--bands: modality {mod!r} given twice ({','.join(out[mod])} and "
                             f"{','.join(names)}); give each modality's bands once, in order")
        out[mod] = names
    return out


def _size(text: str) -> int:
    """A byte count: ``256M`` (K, M, G: powers of 1024; a trailing ``B`` allowed, any case) or
    a plain whole number of bytes; anything else is a parser error naming what was expected
    (argparse would name this function instead: ``invalid _size value``)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    t = text.strip().lower().rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, OverflowError):  # 10X, 16Q, 1.5 (no unit), nanM, infG
        raise argparse.ArgumentTypeError(
            f"expected a size like 256M or 16G (K, M, G: powers of 1024) or a whole number of "
            f"bytes, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The full command-line interface."""
    p = argparse.ArgumentParser(prog="eofm-shard", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="raw rasters -> webdataset shards + manifest, or zarr",
                       description="Read raw EO rasters (layout detected or forced), resample "
                       "bands to one grid, tile, drop tiles over the nodata limit, pair "
                       "modalities, attach labels and write shards with a manifest.")
    b.add_argument("source", nargs="+", help="input folder (or file for multiband/array "
                   "layouts); several inputs are pooled into one dataset (each input's layout "
                   "is detected on its own; sample keys get the input's folder name in front); "
                   "inputs that each hold another modality of the same <location>/<season> "
                   "folders (SSL4EO-S12 s1 + s2a) are paired by location and season order")
    b.add_argument("--out", required=True, help="output dataset folder (or .zarr store), "
                   "apart from every input (not an input nor inside one)")
    b.add_argument("--layout", choices=sorted(LAYOUTS), help="force an input layout "
                   "(default: detected)")
    b.add_argument("--format", choices=["wds", "zarr"], default=None,
                   help="webdataset tar shards (default) or a zarr v3 store (default when "
                   "--out ends in .zarr)")
    b.add_argument("--sensor", help="sensor id for per_band/multiband/array inputs "
                   "(e.g. s2_l1c, s2_l2a, s1_grd, landsat8_oli_tirs, enmap_hsi, rgb); the "
                   "bigearthnet layout's are fixed (s2_l2a, s1_grd: another is refused)")
    b.add_argument("--sensors-yaml", type=Path, help="YAML file of user-defined sensors")
    b.add_argument("--file-bands", help="comma-separated band names in the order the input "
                   "files store them (multiband/array/eurosat/enmap layouts; refused for "
                   "per_band/bigearthnet, whose files are named by band; without it multiband "
                   "GeoTIFFs whose band descriptions name the sensor's bands are read in "
                   "that order, other files in the sensor's order, with a warning and a "
                   "note in meta.json); names or aliases of the --sensor's bands, any case; one per "
                   "file band")
    b.add_argument("--bands", action="append", metavar="MOD=B1,B2", type=_bands_item,
                   help="keep these bands, in this order, for a modality (repeatable); MOD is "
                   "a modality of the input (s2, s1, hsi, landsat, rgb; case-sensitive), a "
                   "modality the input lacks is refused")
    b.add_argument("--tile", type=int, help="tile size in pixels (default: whole raster)")
    b.add_argument("--stride", type=int, help="tile stride in pixels (default: tile size)")
    b.add_argument("--max-nodata", type=float, default=0.5,
                   help="drop tiles whose nodata share exceeds this (default 0.5)")
    b.add_argument("--max-cloud", type=float, metavar="F",
                   help="drop tiles whose cloud_fraction (share of valid pixels the source's "
                   "quality mask flags: Sentinel-2 SCL, Major-TOM cloud_mask, Landsat BQA or "
                   "Collection 2 QA_PIXEL, "
                   "EnMAP QL cloud/shadow) exceeds F; tiles without a mask are kept. The "
                   "manifest counts them as dropped_cloud (default: keep every tile)")
    b.add_argument("--stack", metavar="MODS[=NAME]",
                   help="write paired modalities as one, bands in the order given, e.g. "
                   "'s2,s1' (modality s2s1: B01..B12, VV, VH, float32; valid where every part "
                   "is); its sensor is the registry's composite, e.g. s2_l2a+s1_grd; NAME "
                   "must not be a modality's name")
    b.add_argument("--cloud-as-nodata", action="store_true",
                   help="fold pixels the quality mask flags (cloud, shadow, cirrus, mask fill) "
                   "into the modality's valid mask, so losses skip them (default: only record "
                   "cloud_fraction in meta.json)")
    b.add_argument("--resample", choices=["exact", "nearest"], default="exact",
                   help="bands at different resolutions: 'exact' (grids must nest; default) or "
                   "'nearest' (sample at fine pixel centres, for grids that do not nest; "
                   "paired modalities on different grids, e.g. SSL4EO-S12 S1 and S2, are "
                   "sampled on one of them; 'exact' refuses them, naming what differs)")
    b.add_argument("--s1-linear-to-db", action="store_true",
                   help="Sentinel-1 (any sensor declared in dB) given as linear power: convert "
                   "at ingest, before statistics, to dB = 10*log10(power); power 0 and nodata "
                   "become nodata. Input that is already dB (negative pixels) is refused. "
                   "Recorded in the manifest (extra.s1_linear_to_db); without it linear-looking "
                   "input is only warned about")
    b.add_argument("--order-seed", type=int, default=0, metavar="N",
                   help="items are written in a random order drawn with seed N (default 0), "
                   "so each shard holds a mix of the dataset (classes, regions) that a "
                   "reader's shuffle buffer can mix further; the same seed gives the same "
                   "item order for any --workers/--num-writers and the same shards for the "
                   "same --num-writers (recorded in the manifest, extra.order)")
    b.add_argument("--keep-order", action="store_true",
                   help="write items in key order instead (shards then hold runs of "
                   "neighbouring keys: for EuroSAT, one class per shard)")
    b.add_argument("--nan-policy", choices=["error", "nodata"], default="error",
                   help="NaN/inf pixels: fail (default) or treat as nodata")
    b.add_argument("--max-raster-bytes", type=_size, metavar="SIZE",
                   help="refuse an input file whose header declares more decoded bytes than "
                   "this, before decoding it (decompression bombs: a small compressed file "
                   "can declare a huge raster), e.g. 16G (default 4G)")
    b.add_argument("--s2-offset", action="append", metavar="auto|none|-1000|INPUT=MODE",
                   help="Sentinel-2 processing-baseline offset removed at ingest so shards hold "
                   "reflectance x 10000: 'auto' (default) reads metadata.json / MTD_MSIL*.xml "
                   "or the product id (_N0400_ and later: -1000; unknown baselines such as "
                   "N9999: none, and a product whose pixels look offset is warned about), "
                   "'none' never corrects, '-1000' corrects every Sentinel-2 input (refused "
                   "when no input is Sentinel-2); give one such mode, and repeat with "
                   "INPUT=MODE to decide one input (as given, or its folder name)")
    b.add_argument("--seg-dir", type=Path, help="folder of segmentation rasters with the "
                   "same file stems as the inputs")
    b.add_argument("--classes", type=Path, help="text file of class names, one per line "
                   "(default: sorted names found)")
    b.add_argument("--shard-size", type=_size, default=256 * 2**20,
                   help="target shard size, e.g. 256M (default)")
    b.add_argument("--shard-samples", type=int, default=10_000,
                   help="maximum samples per shard (default 10000)")
    b.add_argument("--workers", type=int, default=1, help="writer processes (default 1)")
    b.add_argument("--num-writers", type=int, help="total writers when running one writer "
                   "per machine (with --writer-id; then `eofm-shard merge`)")
    b.add_argument("--writer-id", type=int, help="run only this writer, 0..N-1 (N: --num-writers)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing dataset "
                   "(only what a build wrote is removed: a folder holding anything else is "
                   "refused)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")

    for name, text in (("inspect", "summary: samples, modalities, bands, labels, statistics"),
                       ("verify", "checksums, decodability, shapes and each sample's "
                                  "recorded bands and sensor against the manifest")):
        s = sub.add_parser(name, help=text, description=text)
        if name == "inspect":
            s.add_argument("dataset")
            s.add_argument("--json", action="store_true", help="print the manifest as JSON")
        else:
            s.add_argument("dataset", help="a local dataset folder or zarr store (it reads "
                           "every shard file: not a URL)")
            s.add_argument("--no-decode", action="store_true", help="sizes and checksums only "
                           "(no sample is read)")
    s = sub.add_parser("stats", help="recompute per-band statistics from the pixels",
                       description="Recompute per-band statistics (count, mean, std, min, "
                       "max, percentiles, nodata fraction; valid pixels only) by reading every "
                       "sample; prints them as JSON, or with --write stores them in the "
                       "manifest.")
    s.add_argument("dataset", help="a local dataset folder or zarr store (not a URL)")
    s.add_argument("--write", action="store_true", help="update the manifest")
    s.add_argument("--sensors-yaml", type=Path, help="YAML file of user-defined sensors (only "
                   "for datasets built before manifests recorded them in extra.user_sensors)")
    s = sub.add_parser("merge", help="merge the parts of writers run separately "
                       "(--writer-id) into one manifest",
                       description="Join the parts written by `eofm-shard build --num-writers N "
                       "--writer-id I` (one run per writer, e.g. one per machine) into one "
                       "dataset manifest with combined statistics; run once, after every "
                       "writer has finished.")
    s.add_argument("dataset")
    s = sub.add_parser("preview", help="contact sheet PNG of the first samples (band order, "
                       "stretch, nodata and clouds at a glance)",
                       description="Draw the first samples (shard order, no shuffle) as a grid "
                       "of tiles: true colour by band name (false colour VV,VH,VV-VH for SAR, "
                       "else the bands nearest 650/560/470 nm), stretched with the "
                       "manifest's p2..p98, invalid pixels magenta; FILE.json beside it lists "
                       "every tile's key, labels, cloud fraction and grid position.")
    s.add_argument("dataset")
    s.add_argument("--out", required=True, help="output PNG file (FILE.json is written beside it)")
    s.add_argument("--samples", type=int, default=16, help="samples to show (default 16)")
    s.add_argument("--modality", help="show only this modality (default: every modality, "
                   "one row block each)")
    s.add_argument("--bands", action="append", metavar="[MOD=]B1,B2,B3",
                   help="display bands instead of the default: B1,B2,B3 (RGB) or B1 (grey); "
                   "MOD=B1,B2,B3 for one of several modalities (repeatable)")
    s.add_argument("--cols", type=int, default=8, help="tiles per row (default 8)")
    s.add_argument("--size", type=int, metavar="PX", help="resample every tile (nearest) to "
                   "PX x PX (default: native size, smaller tiles padded)")
    s.add_argument("--sensors-yaml", type=Path, help="YAML file of user-defined sensors "
                   "(for datasets built with one)")
    return p


def _flag_file_error(flag: str, path: Path, e: OSError | UnicodeDecodeError) -> ValueError:
    """The error for a file a flag names that cannot be read (``[Errno 2] No such file`` alone
    does not say which option was wrong)."""
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return ValueError(f"{flag}: expected a readable text file, got {path} ({why})")


def _read_flag_file(flag: str, path: Path) -> str:
    """The text of the file a flag names; ValueError naming the flag when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _flag_file_error(flag, path, e) from e


def _classes_arg(path: Path) -> list[str]:
    """The class names of a ``--classes`` file, one per line (blank lines skipped); a name
    given twice is refused, naming the file, the name and both line numbers (the second would
    otherwise be a class index no label maps to)."""
    classes: list[str] = []
    first: dict[str, int] = {}
    for number, line in enumerate(_read_flag_file("--classes", path).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first:
            raise ValueError(f"--classes {path}: expected each class name once, got {name!r} "
                             f"on lines {first[name]} and {number}")
        first[name] = number
        classes.append(name)
    return classes


def _file_bands_arg(text: str | None) -> list[str] | None:
    """``--file-bands B04,B03,B02`` -> ["B04", "B03", "B02"]; None when not given. An empty
    value or entry (``''``, ``B04,,B03``) is refused, quoting the value as given (it used to
    count as not given: the sensor's order assumed)."""
    if text is None:
        return None
    names = [x.strip() for x in text.split(",")]
    if not all(names):
        raise ValueError(f"--file-bands: expected band names in file order, separated by "
                         f"commas (e.g. B04,B03,B02), got {text!r}")
    return names


def _build_format(a: argparse.Namespace) -> str:
    """``build``'s output format: ``--format``, else ``zarr`` when ``--out`` ends in .zarr."""
    return a.format or ("zarr" if str(a.out).rstrip("/").endswith(".zarr") else "wds")


def _build_config(a: argparse.Namespace):
    from .build import BuildConfig
    from .ingest import IngestOptions

    fmt = _build_format(a)
    classes = _classes_arg(a.classes) if a.classes is not None else None
    return BuildConfig(
        source=a.source[0], more_sources=a.source[1:], out=a.out, layout=a.layout, format=fmt,
        ingest=IngestOptions(tile=a.tile, stride=a.stride, max_nodata=a.max_nodata,
                             bands=_bands_arg(a.bands), nan_policy=a.nan_policy,
                             resample=a.resample, max_cloud=a.max_cloud,
                             cloud_as_nodata=a.cloud_as_nodata,
                             s1_linear_to_db=a.s1_linear_to_db,
                             **({} if a.max_raster_bytes is None
                                else {"max_raster_bytes": a.max_raster_bytes})),
        layout_options=LayoutOptions(
            sensor=a.sensor, seg_dir=a.seg_dir, file_bands=_file_bands_arg(a.file_bands)),
        shard_bytes=a.shard_size, shard_samples=a.shard_samples, workers=a.workers,
        num_writers=a.num_writers, writer_id=a.writer_id, classes=classes,
        overwrite=a.overwrite, progress=not a.quiet and sys.stderr.isatty(),
        s2_offset=a.s2_offset or "auto", stack=a.stack,
        order_seed=None if a.keep_order else a.order_seed,
    )


def _recompute_stats(dataset: str, write: bool) -> Manifest:
    """``eofm-shard stats``: :func:`.checks.recompute_stats` (which refuses what would fail
    only after every shard was read before reading one); another error reading or writing a
    file (no permission, I/O) names the file and the reason in one line; a full disk or quota
    stays the out-of-space error (status 1)."""
    from . import checks
    from .outputs import out_of_space

    try:
        return checks.recompute_stats(dataset, write=write)
    except OSError as e:  # not a full disk, and naming a file: say which and why, in one line
        if out_of_space(e) is not None or not e.filename:
            raise
        raise ValueError(f"{e.filename}: {e.strerror or e}") from e


INTERRUPTED_STATUS = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))


@contextmanager
def stops_as_ctrl_c() -> Iterator[None]:
    """Within it, SIGTERM and SIGUSR1 stop the command as Ctrl-C does (a KeyboardInterrupt:
    ``build --workers``' pool terminates its writer processes on the way out, none is left
    writing into ``--out``); later ones are ignored while it cleans up. Signals another
    handler owns are left alone (``eofm-pretrain``'s ``data.build_from`` build cuts it short
    its own way); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS
                if signal.getsignal(s) is signal.SIG_DFL}
    for s in previous:
        signal.signal(s, interrupt)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupted_line(a: argparse.Namespace) -> str:
    """The one line for subcommand ``a.command`` stopped by Ctrl-C: what a re-run does."""
    if a.command != "build":
        return "interrupted"
    if _build_format(a) == "zarr":
        return ("interrupted; a zarr store is put in place only when complete (an existing one "
                "is kept): rerun to build it")
    return "interrupted; rerun to continue from finished writers"


@stdout_may_close
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the exit status: 0 done, 2 refused input, 1 when the disk or the quota is
    full (:mod:`.command`) or when ``verify`` finds problems, 130 when stopped by Ctrl-C,
    SIGTERM or SIGUSR1 (:func:`stops_as_ctrl_c`)."""
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = a.out if a.command in ("build", "preview") else a.dataset
    prog = f"eofm-shard {a.command}"
    try:
        # OSError: an unreadable input (a full disk is told apart: status 1)
        with stops_as_ctrl_c():
            return run_command(prog, lambda: _run(a), out=out,
                               refused=(ValueError, RuntimeError, OSError))
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback (build cleans up on its way)
        error(prog, _interrupted_line(a))
        return INTERRUPTED_STATUS


def _run(a: argparse.Namespace) -> int:
    """Run subcommand ``a.command``; its status."""
    from . import checks

    if getattr(a, "sensors_yaml", None):
        from .sensors import load_sensors_yaml

        try:
            load_sensors_yaml(a.sensors_yaml)
        except (OSError, UnicodeDecodeError) as e:  # unreadable: say which flag
            raise _flag_file_error("--sensors-yaml", a.sensors_yaml, e) from e
    if a.command == "build":
        from .build import build

        t0 = time.perf_counter()
        m = build(_build_config(a))
        if m is None:
            print(f"writer {a.writer_id} done; run `eofm-shard merge` when all writers are")
            return 0
        dt = time.perf_counter() - t0
        n = m.extra.get("samples", m.sample_count)
        print(checks.summary(a.out))
        print(f"\nwrote {n} samples in {dt:.1f} s ({n / dt:.1f} tiles/s)")
    elif a.command == "merge":
        from .merge import merge

        merge(a.dataset)
        print(checks.summary(a.dataset))
    elif a.command == "inspect":
        if a.json:
            print(json.dumps(checks.open_manifest(a.dataset).to_dict(), indent=1))
        else:
            print(checks.summary(a.dataset))
    elif a.command == "verify":
        problems = checks.verify(a.dataset, decode=not a.no_decode)
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        if problems:
            return 1
        print(f"OK {a.dataset}")
    elif a.command == "preview":
        from .preview import format_report, parse_bands, preview

        print(format_report(preview(a.dataset, a.out, samples=a.samples,
                                    modality=a.modality, bands=parse_bands(a.bands),
                                    cols=a.cols, size=a.size)))
    elif a.command == "stats":
        m = _recompute_stats(a.dataset, a.write)
        print(checks.summary(a.dataset) if a.write else json.dumps(
            {k: v.stats for k, v in m.modalities.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
