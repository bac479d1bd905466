"""The input contract's GSD is that of the pixels the encoder saw: the loader's random resized
crop and the objective's own resampling (SatMAE++'s downsampled crop) both scale it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eofm.data_shards.manifest import load_manifest
from eofm.finetune.export import encoder_from_checkpoint
from eofm.models import create_model
from eofm.models.card import render_model_card
from eofm.pretrain.config import load_config, to_dict
from eofm.pretrain.data import (
    BandInfo,
    band_info,
    input_contract,
    input_gsd_note,
    sample_gsd,
)
from eofm.pretrain.objectives import SatMAEPP, build_objective
from eofm.pretrain.trainer import Trainer

S2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


def _info(tile: tuple[int, int] | None, gsd: float = 10.0) -> BandInfo:
    n = len(S2)
    return BandInfo("s2", "s2_l1c", S2, torch.ones(n), torch.ones(n), gsd, torch.zeros(n),
                    torch.ones(n), {}, tile)


def test_sample_gsd_follows_the_random_resized_crop() -> None:
    assert sample_gsd(_info((64, 64)), None) == 10.0  # the whole tile, not resampled
    assert sample_gsd(_info((64, 64)), 64) == 10.0  # full-tile crop kept at its size
    assert sample_gsd(_info((128, 128)), 32) == 40.0  # 128 px squeezed into 32 px
    assert sample_gsd(_info((32, 32), gsd=30.0), 64) == 15.0  # upsampled
    assert sample_gsd(_info(None), 32) == 10.0  # tiles of different sizes: no single factor


@pytest.fixture(scope="module")
def shards(sample_data: Path, tmp_path_factory) -> Path:
    """64 px tiles of the bundled Sentinel-2 L1C scene (10 m)."""
    from eofm.data_shards.build import BuildConfig, build
    from eofm.data_shards.ingest import IngestOptions

    out = tmp_path_factory.mktemp("gsd") / "s2_64"
    build(BuildConfig(str(sample_data / "sentinel2_l1c_scene"), str(out),
                      ingest=IngestOptions(tile=64), progress=False))
    return out


def test_band_info_records_the_tile_size(shards: Path) -> None:
    info = band_info(load_manifest(shards), "s2", S2)
    assert info.tile == (64, 64) and info.gsd_m == 10.0
    assert info.to_device(torch.device("cpu")).tile == (64, 64)


def test_input_contract_scales_gsd(shards: Path) -> None:
    manifest = load_manifest(shards)
    info = band_info(manifest, "s2", S2)
    enc = create_model("vit_test_patch8", tokenizer="grouped", bands=S2, img_size=16)
    assert input_contract("mae", info, manifest, enc, "d").gsd == 10.0
    assert input_contract("mae", info, manifest, enc, "d", crop_size=32).gsd == 20.0
    assert input_contract("satmaepp", info, manifest, enc, "d", crop_size=64,
                          gsd_factor=4.0).gsd == 40.0
    with pytest.raises(ValueError, match="gsd_factor: expected a positive factor, got 0"):
        input_contract("mae", info, manifest, enc, "d", gsd_factor=0.0)


def _config(tmp: Path, data: Path, objective: str, crop: int | None, img: int,
            scales: int | None = None, tokenizer: str = "grouped") -> Path:
    cfg = tmp / f"{objective}_{crop}_{img}_{scales}_{tokenizer}.yaml"
    params = f"params: {{num_scales: {scales}}}" if scales else "params: {}"
    bands = S2 if tokenizer == "grouped" else ["B04", "B03", "B02"]
    cfg.write_text(f"""
data:
  path: {data}
  bands: {{s2: [{", ".join(bands)}]}}
  crop_size: {"null" if crop is None else crop}
  shuffle_buffer: 0
  num_workers: 0
  batch_size: 4
model: {{name: vit_test_patch8, tokenizer: {tokenizer}, img_size: {img}}}
objective:
  name: {objective}
  norm_pix_loss: false
  decoder_dim: 32
  decoder_depth: 1
  decoder_heads: 2
  {params}
optim: {{base_lr: 1.0e-3, scale_lr: false}}
schedule: {{steps: 1, warmup_steps: 0}}
runtime: {{ckpt_every: 0, out_dir: {tmp / "run"}}}
logging: {{log_every: 1, progress: false}}
""")
    return cfg


@pytest.mark.parametrize(("objective", "crop", "img", "scales", "tokenizer", "gsd"), [
    ("satmaepp", 64, 16, 3, "grouped", 40.0),  # 64 px crop downsampled 4x to 16 px
    ("satmaepp", 64, 32, 2, "grouped", 20.0),  # 2x
    ("satmaepp", 64, 32, None, "plain", 20.0),  # RGB default: 2 scales
    ("satmaepp", 32, 16, 2, "grouped", 40.0),  # 64 px tiles cropped to 32 px, then 2x
    ("mae", None, 64, None, "grouped", 10.0),  # the whole tile: native
    ("mae", 32, 32, None, "grouped", 20.0),  # the loader's crop squeezes 64 px into 32 px
])
def test_trainer_contract_gsd(shards: Path, tmp_path: Path, objective: str, crop: int | None,
                              img: int, scales: int | None, tokenizer: str, gsd: float) -> None:
    """The trainer builds the contract (no step is run); the export's rebuild agrees with it."""
    cfg = load_config(str(_config(tmp_path, shards, objective, crop, img, scales, tokenizer)), [])
    trainer = Trainer(cfg)
    assert trainer.encoder.contract.gsd == pytest.approx(gsd)
    assert trainer.encoder.contract.input_size == (img, img)
    # eofm-export rebuilds the contract from the checkpoint's config and dataset: same GSD
    factor = getattr(trainer.objective, "input_gsd_factor", 1.0)
    ckpt = {"config": to_dict(cfg), "model": trainer.objective.state_dict(), "step": 0,
            "contract": trainer.encoder.contract.to_dict()}
    exported, _, card = encoder_from_checkpoint(ckpt)
    assert exported.contract.gsd == pytest.approx(trainer.encoder.contract.gsd)
    assert (card["input_gsd_note"] is None) == (gsd == 10.0)
    if objective == "satmaepp":
        assert factor == 2 ** (trainer.objective.num_scales - 1)
        assert trainer.objective.crop_gsd == pytest.approx(gsd / factor)


def test_satmaepp_feeds_the_downsampled_gsd_to_a_gsd_aware_encoder() -> None:
    """A gsd_pos encoder gets the model input's GSD (crop GSD x 4 for 3 scales), whether the
    crop's GSD comes from the builder (crop_gsd) or the caller; a plain encoder gets none."""
    seen: list[object] = []

    def model(gsd_pos: bool, crop_gsd: float | None) -> SatMAEPP:
        torch.manual_seed(0)
        enc = create_model("vit_test_patch8", tokenizer="grouped", bands=S2, img_size=16,
                           gsd_pos=gsd_pos)
        m = SatMAEPP(enc, S2, decoder_dim=32, decoder_depth=1, decoder_heads=2, num_scales=3,
                     crop_gsd=crop_gsd)
        inner = enc.forward_features

        def spy(x, **kw):
            seen.append(kw.get("gsd"))
            return inner(x, **kw)

        enc.forward_features = spy
        return m

    x, g = torch.randn(2, 10, 64, 64), torch.Generator().manual_seed(0)
    model(True, 10.0)(x, generator=g)
    assert seen[-1] == 40.0
    model(True, None)(x, generator=g, gsd=torch.tensor([10.0, 20.0]))
    assert torch.equal(seen[-1], torch.tensor([40.0, 80.0]))
    model(False, 10.0)(x, generator=g)
    assert seen[-1] is None
    # the positions really differ from the unscaled ones: the GSD reaches the encoding
    enc = create_model("vit_test_patch8", tokenizer="grouped", bands=S2, img_size=16,
                       gsd_pos=True)
    x0 = torch.randn(1, 10, 16, 16)
    assert not torch.allclose(enc.forward_features(x0, gsd=40.0), enc.forward_features(x0))


def test_builder_sets_the_factor_and_crop_gsd(shards: Path, tmp_path: Path) -> None:
    cfg = load_config(str(_config(tmp_path, shards, "satmaepp", 32, 16, 2)), [])
    m = build_objective(cfg, band_info(load_manifest(shards), "s2", S2))
    assert (m.input_gsd_factor, m.crop_gsd) == (2.0, 20.0)


def test_card_explains_the_input_gsd() -> None:
    note = input_gsd_note(_info((128, 128)), 128, (32, 32), 4.0)
    assert note == ("40 m = native 10 m x 4 (the 128 px crop downsampled 4x on the device to "
                    "the 32 x 32 px model input)")
    both = input_gsd_note(_info((128, 128)), 64, (32, 32), 2.0)
    assert both.startswith("40 m = native 10 m x 2 (random resized crops of the 128 x 128 px "
                           "tiles resampled to 64 px")
    assert input_gsd_note(_info((64, 64)), 64, (64, 64), 1.0) is None
    # SoftCon resamples the loaded tile (no crop) to its views: up as well as down
    assert input_gsd_note(_info((16, 16)), None, (32, 32), 0.5) == (
        "5 m = native 10 m x 0.5 (the 16 x 16 px tile upsampled 2x on the device to the "
        "32 x 32 px model input)")
    assert input_gsd_note(_info((32, 32)), None, (16, 16), 2.0).endswith(
        "(the 32 x 32 px tile downsampled 2x on the device to the 16 x 16 px model input)")
    config = {"architecture": "vit_test_patch8", "num_features": 64, "global_pool": "token",
              "eofm_contract": {"bands": ["B02"], "gsd": 40.0, "objective": "satmaepp"}}
    text = render_model_card(config, {"native_gsd": [10.0], "input_gsd_note": note})
    assert "| Input GSD (m) | 40 |" in text and f"| Input GSD from the native | {note} |" in text
    assert "Input GSD from the native" not in render_model_card(config, {"native_gsd": [10.0]})


@pytest.mark.parametrize(("crop", "gsd_pos"), [(32, True), (None, True), (32, False)])
def test_trainer_feeds_each_samples_gsd_to_a_gsd_aware_encoder(
        shards: Path, tmp_path: Path, crop: int | None, gsd_pos: bool) -> None:
    """gsd_pos encoders get the tile GSD x each sample's crop zoom (or the tile GSD without a
    crop); other encoders get no ``gsd`` at all."""
    cfg = load_config(str(_config(tmp_path, shards, "mae", crop, crop or 64)),
                      [f"model.overrides={{gsd_pos: {str(gsd_pos).lower()}}}"])
    trainer = Trainer(cfg)
    batch = next(iter(trainer.loader))
    kw = trainer._inputs(batch)
    if not gsd_pos:
        assert "gsd" not in kw
    elif crop is None:
        assert kw["gsd"] == 10.0 and "__zoom__" not in batch
    else:  # 35-100 % of a 64 px tile's area resized to 32 px: zoom in [sqrt(.35) * 2, 2]
        zoom = torch.tensor(batch["__zoom__"])
        torch.testing.assert_close(kw["gsd"], 10.0 * zoom)
        assert kw["gsd"].shape == (4,) and ((zoom >= 0.35**0.5 * 2 - 0.05) & (zoom <= 2)).all()
