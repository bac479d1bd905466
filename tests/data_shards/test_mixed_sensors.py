"""Pooling inputs of different but band-compatible sensors (Sentinel-2 L1C + L2A) into one
dataset: the build allows it only for band-compatible sensors, the manifest and every sample's
meta.json record the mix, and the pretraining contract names every sensor and level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eofm.data_shards import sensors as sensor_registry
from eofm.data_shards.build import BuildConfig, build, make_plan
from eofm.data_shards.checks import summary
from eofm.data_shards.ingest import IngestOptions, ModalityPlan
from eofm.data_shards.manifest import Manifest, ManifestError, load_manifest
from eofm.data_shards.pooling import pooling_problem
from eofm.data_shards.sensors import Sensor, get_sensor
from eofm.data_shards.tario import iter_samples

BANDS = ["B02", "B03", "B04", "B08"]  # 10 m bands: no resampling, a light build


def _cfg(sources: list[Path], out: Path, bands: list[str] | None = BANDS,
         tile: int = 128) -> BuildConfig:
    return BuildConfig(str(sources[0]), str(out), more_sources=[str(s) for s in sources[1:]],
                       ingest=IngestOptions(tile=tile, stride=tile, resample="nearest",
                                            bands={"s2": bands} if bands else {}),
                       progress=False)


@pytest.fixture(scope="module")
def l1c_l2a(sample_data: Path, shared_data: Path) -> list[Path]:
    """The bundled L1C scene (384 px) and SSL4EO-S12 L2A (2 seasons of 264 px)."""
    return [sample_data / "sentinel2_l1c_scene", shared_data / "ssl4eo_s12" / "s2a"]


@pytest.fixture(scope="module")
def pooled(l1c_l2a: list[Path], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed") / "pooled"
    build(_cfg(l1c_l2a, out))
    return out


def _sample_sensors(path: Path) -> dict[str, str]:
    """Sample key -> the s2 sensor its meta.json names."""
    out = {}
    for tar in sorted(path.glob("*.tar")):
        with open(tar, "rb") as f:
            for raw in iter_samples(f, str(tar)):
                out[raw["__key__"]] = json.loads(raw["meta.json"])["modalities"]["s2"]["sensor"]
    return out


def test_s2_and_l2a_sensors_are_band_compatible_on_their_shared_bands() -> None:
    l1c, l2a = get_sensor("s2_l1c"), get_sensor("s2_l2a")
    shared = [b for b in l1c.band_names if b in l2a.band_names]
    assert len(shared) == 12 and "B10" not in shared

    def plan(sensor: Sensor, bands: list[str]) -> ModalityPlan:
        return ModalityPlan(sensor.id, bands, sensor.dtype, [0.0] * len(bands), 10.0, None)

    assert pooling_problem(plan(l1c, shared), plan(l2a, shared)) is None
    l8, l9 = get_sensor("landsat8_oli_tirs"), get_sensor("landsat9_oli_tirs")
    assert pooling_problem(plan(l8, l8.band_names), plan(l9, l9.band_names)) is None
    # Landsat's names differ from Sentinel-2's (B2 vs B02), whatever the modality is called
    why = pooling_problem(plan(l1c, ["B02", "B03"]), plan(l8, ["B2", "B3"]))
    assert why is not None and "B2 only in landsat8_oli_tirs" in why


def test_pool_records_every_sensor(pooled: Path, l1c_l2a: list[Path]) -> None:
    m = load_manifest(pooled)
    s2 = m.modalities["s2"]
    assert s2.sensor == "s2_l1c" and s2.sensors == ["s2_l1c", "s2_l2a"]
    assert s2.sensor_ids == ["s2_l1c", "s2_l2a"] and s2.bands == BANDS
    assert json.loads((pooled / "manifest.json").read_text())["modalities"]["s2"]["sensors"] \
        == ["s2_l1c", "s2_l2a"]
    # each sample keeps its own sensor; the counters give the mix
    per_sample = _sample_sensors(pooled)
    assert len(per_sample) == m.sample_count
    by_input = {k.split("_", 1)[0]: v for k, v in per_sample.items()}
    assert by_input == {"sentinel2": "s2_l1c", "s2a": "s2_l2a"}
    counts = {s: sum(v == s for v in per_sample.values()) for s in ("s2_l1c", "s2_l2a")}
    counters = m.extra["counters"]
    assert {s: counters[f"samples[s2:{s}]"] for s in counts} == counts
    assert counts["s2_l1c"] > 0 and counts["s2_l2a"] > 0
    text = summary(pooled)
    assert (f"modality s2: sensors s2_l1c (L1C, {counts['s2_l1c']} samples) + s2_l2a (L2A, "
            f"{counts['s2_l2a']} samples) pooled") in text
    counters_line = next(line for line in text.splitlines() if line.startswith("counters"))
    assert "samples[" not in counters_line  # left to the modality line


def test_zarr_store_records_the_pool(l1c_l2a: list[Path], tmp_path: Path) -> None:
    from eofm.data_shards.checks import open_manifest

    cfg = _cfg(l1c_l2a, tmp_path / "pooled.zarr")
    cfg.format = "zarr"
    build(cfg)
    s2 = open_manifest(tmp_path / "pooled.zarr").modalities["s2"]
    assert (s2.sensor, s2.sensors) == ("s2_l1c", ["s2_l1c", "s2_l2a"])
    metas = (tmp_path / "pooled.zarr" / "meta.jsonl").read_text().splitlines()
    assert {json.loads(m)["modalities"]["s2"]["sensor"] for m in metas} == {"s2_l1c", "s2_l2a"}


def test_first_input_gives_the_modality_sensor(l1c_l2a: list[Path], tmp_path: Path) -> None:
    """Not the first sample key (keys sort by input folder name): the first input given."""
    plan = make_plan(_cfg(l1c_l2a[::-1], tmp_path / "unused"))
    assert plan.modalities["s2"].sensor == "s2_l2a"
    assert plan.sensors["s2"] == ["s2_l2a", "s2_l1c"]


def test_b10_with_an_l2a_input_is_refused(l1c_l2a: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ssl4eo_s12/s2a.*modality s2 \(s2_l2a\).*'B10'"):
        make_plan(_cfg(l1c_l2a, tmp_path / "unused", bands=["B02", "B10"]))
    # without --bands, L1C brings B10 and L2A does not: refused, naming the band
    with pytest.raises(ValueError, match=r"ssl4eo_s12/s2a/\S+: modality s2 has s2_l2a bands .*"
                                         r"B10 only in s2_l1c; select shared bands"):
        make_plan(_cfg(l1c_l2a, tmp_path / "unused", bands=None))


def test_s2_with_landsat_is_refused(sample_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"landsat8_scene: landsat \(landsat8_oli_tirs\).*"
                                         r"sentinel2_l1c_scene: s2 \(s2_l1c\)|"
                                         r"sentinel2_l1c_scene: s2 \(s2_l1c\).*"
                                         r"landsat8_scene: landsat \(landsat8_oli_tirs\)"):
        make_plan(_cfg([sample_data / "sentinel2_l1c_scene", sample_data / "landsat8_scene"],
                       tmp_path / "unused", bands=None))


def test_a_band_field_that_differs_is_named(l1c_l2a: list[Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A sensor with Sentinel-2's band names but another blue band is not pooled silently."""
    l2a = get_sensor("s2_l2a").to_dict()
    l2a["bands"] = [{**b, "center_wavelength_nm": 482.0} if b["name"] == "B02" else b
                    for b in l2a["bands"]]
    shifted = Sensor.from_dict(l2a)
    monkeypatch.setitem(sensor_registry._REGISTRY, "s2_l2a", shifted)
    with pytest.raises(ValueError, match=r"ssl4eo_s12/s2a/\S+: modality s2 band B02 has "
                                         r"center_wavelength_nm 482\.0 in s2_l2a, other inputs "
                                         r"have 492\.4 in s2_l1c"):
        make_plan(_cfg(l1c_l2a, tmp_path / "unused"))


def test_old_manifests_without_sensors_still_load(pooled: Path) -> None:
    d = json.loads((pooled / "manifest.json").read_text())
    del d["modalities"]["s2"]["sensors"]
    old = Manifest.from_dict(d)
    assert old.modalities["s2"].sensors is None
    assert old.modalities["s2"].sensor_ids == ["s2_l1c"]
    assert "sensors" not in old.to_dict()["modalities"]["s2"]  # single-sensor: written as before
    d["modalities"]["s2"]["sensors"] = ["s2_l2a", "s2_l1c"]
    with pytest.raises(ManifestError, match=r"modalities\.s2\.sensors: expected the modality's "
                                            r"sensor 's2_l1c' first"):
        Manifest.from_dict(d)


def _trainer_contract(pooled: Path, tmp_path: Path):
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    cfg = tmp_path / "mae_mixed.yaml"
    cfg.write_text(f"""
data:
  path: {pooled}
  bands: {{s2: [{", ".join(BANDS)}]}}
  crop_size: 32
  shuffle_buffer: 0
  num_workers: 0
  batch_size: 4
model: {{name: vit_test_patch8, tokenizer: plain, img_size: 32}}
objective: {{name: mae, norm_pix_loss: false, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}}
optim: {{base_lr: 1.0e-3, scale_lr: false}}
schedule: {{steps: 1, warmup_steps: 0}}
runtime: {{ckpt_every: 0, out_dir: {tmp_path / "run"}}}
logging: {{log_every: 1, progress: false}}
""")
    return Trainer(load_config(str(cfg), [])).encoder.contract  # no step is run


def _eurosat_subset(shared_data: Path, root: Path) -> Path:
    """Three real EuroSAT-MS (L1C) tiles of each of two classes."""
    for cls in ("Forest", "SeaLake"):
        (root / cls).mkdir(parents=True)
        for f in sorted((shared_data / "eurosat_ms" / cls).glob("*.tif"))[:3]:
            (root / cls / f.name).symlink_to(f)
    return root


def test_pooled_contract_names_both_sensors_and_probes_l1c(pooled: Path, shared_data: Path,
                                                          tmp_path: Path) -> None:
    from eofm.finetune.datasets import open_labelled
    from eofm.finetune.features import apply_contract
    from eofm.models.card import render_model_card
    from eofm.models.contract import InputContract, check_input

    contract = _trainer_contract(pooled, tmp_path)
    assert contract.sensors == ("s2_l1c", "s2_l2a")
    assert contract.processing_level == "L1C+L2A"
    assert check_input(contract, processing_level="L2A") == []
    assert check_input(contract, processing_level="L1A") == [
        "different processing_level: the contract expects 'L1C+L2A', the batch has 'L1A'"]
    card = render_model_card({"architecture": "vit_test_patch8", "num_features": 64,
                              "global_pool": "token", "eofm_contract": contract.to_dict()}, {})
    assert "| Sensor(s) | s2_l1c, s2_l2a |" in card and "| Processing level | L1C+L2A |" in card

    data = open_labelled(_eurosat_subset(shared_data, tmp_path / "eurosat"))
    assert (data.sensor, data.processing_level) == ("s2_l1c", "L1C")
    notes = apply_contract(data, contract).notes
    assert not [n for n in notes if n.startswith(("different sensor", "different processing"))]
    # an L2A-only encoder does note both on the same data (the check above can fail)
    l2a = InputContract.from_dict({**contract.to_dict(), "sensors": ["s2_l2a"],
                                   "processing_level": "L2A"})
    notes = apply_contract(data, l2a).notes
    assert any(n.startswith("different sensor") for n in notes)
    assert any(n.startswith("different processing_level") for n in notes)
