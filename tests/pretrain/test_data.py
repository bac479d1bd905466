"""Device-side data helpers of the pretraining runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eofm.pretrain.data import radiometric_jitter


def test_radiometric_jitter_is_per_sample_and_band_and_keeps_nodata_zero() -> None:
    x = torch.ones(4, 3, 8, 8)
    valid = torch.ones(4, 8, 8, dtype=torch.bool)
    valid[0, :2] = False
    assert radiometric_jitter(x, valid, 0.0, 0.0) is x  # off: untouched
    out = radiometric_jitter(x, valid, 0.3, 0.5, torch.Generator().manual_seed(0))
    per = out[:, :, 4, 4]  # one value per (sample, band): constant over valid pixels
    assert torch.equal(out[1], per[1][:, None, None].expand(3, 8, 8))
    assert per.unique().numel() == 12
    assert ((per >= 1 * 0.7 - 0.5) & (per <= 1 * 1.3 + 0.5)).all()
    assert (out[0, :, :2] == 0).all()
    again = radiometric_jitter(x, valid, 0.3, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # reproducible from the step's generator


@pytest.mark.parametrize(("affinity", "cpus", "local", "want"), [
    (64, 64, 8, 7),  # a whole node shared by its 8 ranks
    (4, 64, 8, 3),  # a SLURM task pinned to its own 4 CPUs
    (1, 64, 1, 1),  # never fewer than one worker
    (128, 128, 1, 8),  # never more than eight
])
def test_auto_workers_follow_the_cpus_of_this_rank(monkeypatch: pytest.MonkeyPatch, affinity: int,
                                                   cpus: int, local: int, want: int) -> None:
    from eofm.pretrain import data as D

    monkeypatch.setattr(D.os, "sched_getaffinity", lambda pid: set(range(affinity)),
                        raising=False)
    monkeypatch.setattr(D.os, "cpu_count", lambda: cpus)
    assert D.resolve_workers(-1, local) == want
    assert D.resolve_workers(3, local) == 3  # an explicit count is kept


def test_worker_count_below_auto_is_refused() -> None:
    from eofm.pretrain.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"data.num_workers: expected >= 0, or -1 for auto, "
                                          r"got -2"):
        load_config(None, ["data.path=/x", "data.num_workers=-2"])


def test_training_batches_are_full_and_an_epoch_without_one_is_refused(sample_data, tmp_path
                                                                       ) -> None:
    """The training loader drops each worker's partial last batch (54 samples in batches of 8:
    6 full, 6 left out); a micro-batch larger than every worker's part is refused up front."""
    from eofm.data_shards.build import BuildConfig, build
    from eofm.data_shards.ingest import IngestOptions
    from eofm.pretrain.config import ConfigError, load_config
    from eofm.pretrain.data import build_loader

    ds = tmp_path / "ben"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(ds), shard_samples=7,
                      ingest=IngestOptions(tile=40), progress=False))
    base = [f"data.path={ds}", "data.modalities=[s2]", "data.num_workers=0"]
    loader, _ = build_loader(load_config(None, [*base, "data.batch_size=8"]), 0, 1)
    assert [len(b["__key__"]) for b in loader] == [8] * 6 and len(loader) == 6
    with pytest.raises(ConfigError, match=r"micro-batch of 32 samples .* so an epoch holds no "
                                          r"full batch"):
        build_loader(load_config(None, [*base, "data.batch_size=64"]), 0, 2)


def test_auto_workers_on_a_many_core_node_leave_no_epoch_empty(scene_tiles_32, monkeypatch
                                                              ) -> None:
    """The quickstart's batch of 32 on a small dataset (144 tiles) on a 16-CPU GPU node: auto
    would start 8 workers of 18 samples each, none holding a full batch, and the run would be
    refused. Auto starts no more workers than the rank has full batches (4); an explicit count
    is still the user's and still refused when it leaves every worker short."""
    from eofm.pretrain import data as D
    from eofm.pretrain.config import ConfigError, load_config

    monkeypatch.setattr(D.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(D.os, "cpu_count", lambda: 16)
    base = [f"data.path={scene_tiles_32}", "data.batch_size=32"]
    loader, _ = D.build_loader(load_config(None, [*base, "data.num_workers=-1"]), 0, 1)
    assert loader.num_workers == 144 // 32 and len(loader) == 4
    with pytest.raises(ConfigError, match=r"\(8 workers\), so an epoch holds no full batch"):
        D.build_loader(load_config(None, [*base, "data.num_workers=8"]), 0, 1)


def test_loaders_that_cannot_fit_in_shared_memory_are_refused_before_the_first_batch(
        scene_tiles_32, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """A container's 64 MiB /dev/shm and batches that need more: refused up front with the
    numbers (workers would die later with 'Bus error'); more than is free only warns; the
    sample size is the chosen bands in the stored dtype plus the valid mask, at the crop."""
    from collections import namedtuple

    from eofm.data_shards import shared_memory as S
    from eofm.data_shards.manifest import load_manifest
    from eofm.pretrain.config import ConfigError, load_config
    from eofm.pretrain.data import build_loader, sample_bytes

    if not Path(S.SHM_PATH).is_dir():
        pytest.skip(f"no {S.SHM_PATH} on this machine")
    m = load_manifest(scene_tiles_32)
    assert sample_bytes(m, "s2", ["B02", "B03", "B04"], None) == 32 * 32 * (3 * 2 + 1)
    assert sample_bytes(m, "s2", ["B02"], 16) == 16 * 16 * 3
    Usage = namedtuple("Usage", "total used free")
    base = [f"data.path={scene_tiles_32}", "data.bands={s2: [B02, B03, B04, B08]}",
            "data.batch_size=8", "data.num_workers=2"]
    need = 4 * (2 * 2 + 1) * 8 * 32 * 32 * 9  # 4 ranks x 5 batches x 8 x 32^2 x 9 bytes
    monkeypatch.setattr(S.shutil, "disk_usage", lambda p: Usage(need - 1, 0, need - 1))
    with pytest.raises(ConfigError, match=r"data.num_workers: 4 rank\(s\) on this node x 5 "
                                          r"batches in flight .* but /dev/shm holds"):
        build_loader(load_config(None, base), 0, 1, local_world_size=4)
    monkeypatch.setattr(S.shutil, "disk_usage", lambda p: Usage(need, need - 1, 1))
    with caplog.at_level("WARNING"):
        loader, _ = build_loader(load_config(None, base), 0, 1, local_world_size=4)
    assert "MiB free of" in caplog.text and loader.num_workers == 2
    monkeypatch.setattr(S.shutil, "disk_usage", lambda p: Usage(need, 0, need))
    caplog.clear()
    build_loader(load_config(None, [*base, "data.num_workers=0"]), 0, 1, local_world_size=4)
    assert "shared memory" not in caplog.text


def test_bands_without_usable_statistics_name_the_dataset_and_the_way_out(
        scene_tiles_32: Path, tmp_path: Path) -> None:
    """A band whose statistics give no scale (constant, or all nodata) stops the run before the
    first step, naming data.path, the band, and both ways out (drop it from data.bands, or
    recompute wrong statistics); before, the message named neither the dataset nor a fix."""
    import json
    import shutil

    from eofm.pretrain.config import load_config
    from eofm.pretrain.data import build_loader

    ds = tmp_path / "ds"
    shutil.copytree(scene_tiles_32, ds)
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["modalities"]["s2"]["stats"]["B02"]["std"] = 0.0
    (ds / "manifest.json").write_text(json.dumps(manifest))
    cfg = load_config(None, [f"data.path={ds}", "data.num_workers=0"])
    with pytest.raises(ValueError) as e:
        build_loader(cfg, 0, 1)
    assert str(e.value) == (
        f"data.path {ds}: s2 bands ['B02'] have no usable statistics (all nodata or constant); "
        f"leave them out of data.bands, or if the statistics are wrong, recompute them with "
        f"`eofm-shard stats {ds} --write`")
    bands = [b for b in manifest["modalities"]["s2"]["bands"] if b != "B02"]
    _, info = build_loader(load_config(None, [f"data.path={ds}", "data.num_workers=0",
                                              f"data.bands.s2=[{','.join(bands)}]"]), 0, 1)
    assert "B02" not in info.bands


def test_a_band_empty_in_one_tile_reaches_the_model_as_its_mean_not_its_fill() -> None:
    """EnMAP's B127 may be empty in a product (``may_be_empty``): ingest then leaves it out of
    the tile's valid mask, so its pixels stay valid, and prepare_batch fed (-32768 - mean) /
    std (about -10^4) to the model and the MAE target. Now such band-pixels are 0, the band
    mean, from the manifest's per-band nodata values carried in ``BandInfo.nodata``."""
    import numpy as np

    from eofm.data_shards.ingest import validity
    from eofm.data_shards.manifest import Manifest, ModalityInfo
    from eofm.pretrain.data import band_info, prepare_batch

    stats = {b: {"count": 10, "mean": 4.0, "std": 2.0, "min": 0.0, "max": 9.0}
             for b in ("B126", "B127", "B128")}
    manifest = Manifest({"hsi": ModalityInfo("enmap_hsi", ["B126", "B127", "B128"], "int16",
                                             [3, 4, 4], [-32768.0, -32768.0, None], 30.0,
                                             stats)})
    info = band_info(manifest, "hsi", ["B127", "B126"])
    raw = np.full((2, 4, 4), 8, np.int16)
    raw[0] = -32768  # B127 all nodata in this product
    valid, empty = validity(raw, [-32768.0, -32768.0], may_be_empty=[0])
    assert empty == [0] and valid.all()  # by design: the tile is kept, its pixels valid
    batch = {"hsi": torch.from_numpy(raw)[None], "hsi_valid": torch.from_numpy(valid)[None]}
    x, v = prepare_batch(batch, info, torch.device("cpu"))
    assert (x[0, 0] == 0).all() and (x[0, 1] == 2).all() and v.all()
    assert info.nodata == (-32768.0, -32768.0)  # in the fed order
    assert band_info(manifest, "hsi", ["B128"]).nodata == (None,)
    assert info.to_device(torch.device("cpu")).nodata == info.nodata


def test_auto_workers_agree_across_ranks_of_different_nodes(scene_tiles_32: Path,
                                                            monkeypatch) -> None:
    """data.num_workers=-1 on nodes with different CPU counts: each rank's own count would give
    epochs of different lengths (every worker drops its partial last batch), so by epochs a
    different total of steps and lr curve per rank, DDP replicas drifting, then a hang. Every
    rank takes the fewest (here the other rank, on a smaller node, could start 1 worker; the
    collective itself runs on two real ranks in test_distributed_flags)."""
    from eofm.pretrain import data as D
    from eofm.pretrain.config import load_config

    monkeypatch.setattr(D, "_auto_workers", lambda local_world_size: 5)
    monkeypatch.setattr(D, "all_gather_object", lambda n: [n, 1])
    cfg = load_config(None, [f"data.path={scene_tiles_32}", "data.batch_size=8",
                             "data.num_workers=-1"])
    assert D.build_loader(cfg, 0, 1)[0].num_workers == 1
    explicit = load_config(None, [f"data.path={scene_tiles_32}", "data.batch_size=8",
                                  "data.num_workers=3"])
    assert D.build_loader(explicit, 0, 1)[0].num_workers == 3  # an explicit count is kept
