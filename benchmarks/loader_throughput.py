"""Loader throughput and shard write rate on real Sentinel-2 tiles (13 x 96 x 96 uint16).

Every reader is measured in its own subprocess (so each peak RSS is its own), side by side in
one run, on the same tiles cut from the 13-band L1C scene in ../shared/data (or the bundled
sample when ../shared is absent):

- ``eofm``: :class:`ShardLoader` over our shards (0 and 2 workers);
- ``tif_per_band``: the raw archive layout, one GeoTIFF per band at 10/20/60 m, resampled to
  10 m at read time (what training straight from an archive costs);
- ``tif_per_tile``: one 13-band GeoTIFF per tile;
- ``wds_stock``: a stock webdataset pipeline with its default decoders;
- ``ceiling``: a bare loop over the same tars, memory-mapped from the page cache and walked by
  hand, each tile copied once into a preallocated batch (no decoder, no pipeline).

Prints one JSON object per line (with ``machine``: benchmarks/table.py; ``bench`` names the
part: "shard_write", "loader", "ratios"). Usage: ``python benchmarks/loader_throughput.py
[--quick]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from table import Records

ROOT = Path(__file__).resolve().parents[1]
SCENES = [ROOT.parent / "shared" / "data" / "sentinel2_l1c_scene",
          ROOT / "data_shards" / "sample" / "sentinel2_l1c_scene"]
TILE, BATCH = 96, 64


def peak_mb() -> float:
    """This process's own peak RSS in MiB (``VmHWM``: ``ru_maxrss`` would include this
    driver's footprint, inherited across exec). DataLoader workers are forked and share most
    of it; their own peaks are not added."""
    from eofm.pretrain.metrics import peak_rss_mb

    return peak_rss_mb()


# ------------------------------------------------------------------ preparing the inputs
def prepare(work: Path, scene: Path) -> dict:
    """Build our shards (timed in a subprocess) and the GeoTIFF baselines from one scene."""
    ds = work / "shards"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "eofm.data_shards", "build", str(scene),
                           "--out", str(ds), "--tile", str(TILE), "--stride", str(TILE // 2),
                           "--shard-samples", "200",
                           "--quiet"], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr)
    from eofm.data_shards.manifest import load_manifest

    m = load_manifest(ds)
    in_bytes = sum(f.stat().st_size for f in scene.glob("s2_B*"))
    out_bytes = sum(s.bytes for s in m.shards)
    write = {"bench": "shard_write", "tiles": m.sample_count, "seconds": round(dt, 3),
             "tiles_per_s": round(m.sample_count / dt, 1),
             "in_MB_per_s": round(in_bytes / dt / 1e6, 1),
             "out_MB_per_s": round(out_bytes / dt / 1e6, 1),
             "includes": "python start-up, import, read, align, tile, stats, write, fsync",
             "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}
    _write_tifs(ds, work, scene)
    return write


def _write_tifs(ds: Path, work: Path, scene: Path) -> None:
    import tifffile

    from eofm.data_shards.reader import ShardDataset

    per_tile, per_band = work / "tif_tile", work / "tif_band"
    per_tile.mkdir()
    per_band.mkdir()
    data = ShardDataset(ds, shuffle_shards=False)
    bands = data.bands["s2"]
    gsd = {"B01": 60, "B09": 60, "B10": 60, "B05": 20, "B06": 20, "B07": 20, "B8A": 20,
           "B11": 20, "B12": 20}
    for s in data:
        key = s["__key__"]
        tifffile.imwrite(per_tile / f"{key}.tif", s["s2"])
        d = per_band / key
        d.mkdir()
        for i, b in enumerate(bands):
            f = gsd.get(b, 10) // 10
            tifffile.imwrite(d / f"{key}_{b}.tif", s["s2"][i, ::f, ::f])


# ------------------------------------------------------------------ readers (one per subprocess)
class TifPerTile:
    """Map-style dataset over one 13-band GeoTIFF per tile."""

    def __init__(self, folder: Path) -> None:
        self.files = sorted(folder.glob("*.tif"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        import tifffile

        return tifffile.imread(self.files[i])


class TifPerBand:
    """Map-style dataset over the archive layout: one file per band, resampled to 10 m."""

    def __init__(self, folder: Path) -> None:
        self.dirs = sorted(p for p in folder.iterdir() if p.is_dir())

    def __len__(self) -> int:
        return len(self.dirs)

    def __getitem__(self, i: int) -> np.ndarray:
        import tifffile

        out = np.empty((13, TILE, TILE), np.uint16)
        for c, f in enumerate(sorted(self.dirs[i].glob("*.tif"))):
            x = tifffile.imread(f)
            r = TILE // x.shape[0]
            out[c] = np.repeat(np.repeat(x, r, 0), r, 1) if r > 1 else x
        return out


def _ceiling_epoch(shards: list[Path]):
    """The bare loop: walk each memory-mapped tar by hand and copy every ``.s2.npy`` payload
    straight from the page cache into a preallocated batch: one copy per tile, no decoding
    beyond the npy header, no pipeline, no tensors."""
    import ast
    import mmap

    batch = np.empty((BATCH, 13, TILE, TILE), np.uint16)

    def epoch() -> int:
        n = 0
        for p in shards:
            with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                buf, off = memoryview(mm), 0
                while off + 512 <= len(buf) and buf[off] != 0:
                    name = bytes(buf[off:off + 100]).split(b"\0", 1)[0]
                    size = int(bytes(buf[off + 124:off + 136]).strip(b"\0 ") or b"0", 8)
                    data = off + 512
                    if name.endswith(b".s2.npy"):
                        hlen = int.from_bytes(buf[data + 8:data + 10], "little")
                        hdr = ast.literal_eval(bytes(buf[data + 10:data + 10 + hlen]).decode())
                        arr = np.frombuffer(buf[data + 10 + hlen:data + size],
                                            dtype=hdr["descr"]).reshape(hdr["shape"])
                        batch[n % BATCH] = arr
                        n += 1
                        del arr
                    off = data + (size + 511) // 512 * 512
                del buf
        return n
    return epoch


def _torch_epoch(dataset, workers: int):
    from torch.utils.data import DataLoader

    def epoch() -> int:
        return sum(len(b) for b in DataLoader(dataset, batch_size=BATCH, num_workers=workers))
    return epoch


def make_epoch(kind: str, work: Path, workers: int) -> Callable[[], int]:
    """Set up one reader (imports included) and return a function that reads one epoch."""
    ds = work / "shards"
    import torch  # noqa: F401  (every reader pays it, the ceiling too: import cost is not loader cost)

    if kind == "eofm":
        from eofm.data_shards.loader import ShardLoader
        from eofm.data_shards.reader import ShardDataset

        loader = ShardLoader(ShardDataset(ds, shuffle_buffer=0, modalities=["s2"]),
                             batch_size=BATCH, num_workers=workers)
        return lambda: sum(len(b["s2"]) for b in loader)
    if kind == "wds_stock":
        import webdataset as wds
        from torch.utils.data import DataLoader

        urls = sorted(str(p) for p in ds.glob("*.tar"))
        pipe = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode()
                .to_tuple("s2.npy").batched(BATCH))
        return lambda: sum(len(b) for (b,) in DataLoader(pipe, batch_size=None,
                                                         num_workers=workers))
    if kind == "ceiling":
        return _ceiling_epoch(sorted(ds.glob("*.tar")))
    if kind == "tif_per_tile":
        return _torch_epoch(TifPerTile(work / "tif_tile"), workers)
    if kind == "tif_per_band":
        return _torch_epoch(TifPerBand(work / "tif_band"), workers)
    raise ValueError(kind)


def run_one(kind: str, work: Path, workers: int, epochs: int) -> dict:
    """Measure one reader after one untimed warm-up epoch; returns its JSON record."""
    epoch = make_epoch(kind, work, workers)
    setup_mb = peak_mb()
    epoch()
    t0 = time.perf_counter()
    n = sum(epoch() for _ in range(epochs))
    dt = time.perf_counter() - t0
    return {"bench": "loader", "reader": kind, "workers": workers, "samples": n,
            "seconds": round(dt, 3), "samples_per_s": round(n / dt, 1),
            "peak_rss_MB": round(peak_mb(), 1),
            # what reading itself adds on top of the imports and set-up (workers' own peaks
            # are in peak_rss_MB, not here)
            "read_rss_MB": round(peak_mb() - setup_mb, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run everything; print JSON lines and a ratio summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs")
    ap.add_argument("--one", nargs=3, metavar=("KIND", "WORK", "WORKERS"), help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=0)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(a.one[0], Path(a.one[1]), int(a.one[2]), a.epochs)))
        return 0
    records = Records("loader_throughput")
    scene = next(p for p in SCENES if p.is_dir())
    work = Path(tempfile.mkdtemp(prefix="eofm-bench-"))
    try:
        write = prepare(work, scene)
        records.emit({**write, "scene": str(scene)})
        epochs = {"eofm": 5, "wds_stock": 3, "ceiling": 10, "tif_per_tile": 2, "tif_per_band": 1}
        results: dict[tuple[str, int], dict] = {}
        for workers in (0, 2):
            for kind, ep in epochs.items():
                if a.quick:
                    ep = max(1, ep // 3)
                if kind == "ceiling" and workers:
                    continue
                out = subprocess.run([sys.executable, __file__, "--one", kind, str(work),
                                      str(workers), "--epochs", str(ep)],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr)
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                results[(kind, workers)] = rec
                records.emit(rec)
        ceiling = results[("ceiling", 0)]["samples_per_s"]
        for workers in (0, 2):
            ours = results[("eofm", workers)]["samples_per_s"]
            records.emit({
                "bench": "ratios", "workers": workers, "eofm_samples_per_s": ours,
                "vs_tif_per_band": round(ours / results[("tif_per_band", workers)]["samples_per_s"], 2),
                "vs_tif_per_tile": round(ours / results[("tif_per_tile", workers)]["samples_per_s"], 2),
                "vs_wds_stock": round(ours / results[("wds_stock", workers)]["samples_per_s"], 2),
                "vs_ceiling_1proc": round(ours / ceiling, 2),
                "targets": {"vs_tif_per_band": 10, "vs_tif_per_tile": 10, "vs_wds_stock": 1.5,
                            "vs_ceiling_1proc": 0.5},
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return records.status()


if __name__ == "__main__":
    sys.exit(main())
