"""Continual pretraining from an export with its decoder (``model.init_from`` of an
``--with-decoder`` export): the exported pixel head predicts the export's bands by position, so
it is loaded only into a run whose band list is the export's, in the same order."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from eofm.models import create_model, from_pretrained, save_pretrained
from eofm.models.adapt import load_eofm_encoder
from eofm.pretrain.encoders import load_extra_state
from eofm.pretrain.objectives.mae import MAE

BANDS = ["B02", "B03", "B04"]


def _mae(bands: list[str], **kw) -> MAE:
    enc = create_model("vit_test_patch8", bands=bands, img_size=32, **kw)
    return MAE(enc, bands, decoder_dim=32, decoder_depth=1, decoder_heads=2).eval()


def _export(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    obj = _mae(BANDS, contract={"bands": BANDS, "objective": "mae"})
    extra = {k: v for k, v in obj.state_dict().items() if k.startswith("decoder.")}
    return save_pretrained(obj.encoder, tmp_path / "export", extra_state=extra)


def test_the_decoder_loads_only_into_a_run_with_the_exports_band_order(tmp_path, caplog
                                                                       ) -> None:
    out = _export(tmp_path)
    torch.manual_seed(1)
    same = _mae(BANDS)
    assert load_extra_state(same, str(out), "mae")  # same bands, same order: loaded
    flipped = BANDS[::-1]
    run = _mae(flipped)  # what run_encoder + the objective builder make
    load_eofm_encoder(run.encoder, from_pretrained(out))
    fresh = {k: v.clone() for k, v in run.state_dict().items() if k.startswith("decoder.")}
    with caplog.at_level(logging.WARNING, logger="eofm.pretrain.encoders"):
        assert load_extra_state(run, str(out), "mae") == []
    assert "trained on bands ['B02', 'B03', 'B04'], this run's are ['B04', 'B03', 'B02']" \
        in caplog.text and "decoder starts fresh" in caplog.text
    got = run.state_dict()
    assert all(torch.equal(got[k], v) for k, v in fresh.items())  # left as built
