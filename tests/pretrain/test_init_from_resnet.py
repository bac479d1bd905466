"""model.init_from with a ResNet-50 export (pretrain/encoders.run_encoder): conv1 is re-cut for
the run's bands by name and spectrum, as a ViT's patch embedding is."""

from __future__ import annotations

from pathlib import Path

import torch

from eofm.models import create_model, save_pretrained
from eofm.pretrain.config import ModelConfig
from eofm.pretrain.data import BandInfo
from eofm.pretrain.encoders import run_encoder

DONOR = ["B02", "B03", "B04", "B08"]
RUN = ["B08", "B04", "B03", "B02"]
SPECTRA = {"B02": (490.0, 65.0), "B03": (560.0, 35.0), "B04": (665.0, 30.0),
           "B08": (842.0, 115.0)}


def test_a_resnet_export_continued_on_reordered_bands_keeps_each_bands_filter(
        tmp_path: Path) -> None:
    """The export's conv1 used to be copied by channel position: the run's B08 started with
    the donor's B02 filter, silently; the same scene now gives the export's features."""
    torch.manual_seed(0)
    donor = create_model("resnet50", bands=DONOR, img_size=64).eval()
    out = save_pretrained(donor, tmp_path / "rn_export")
    info = BandInfo("s2", "sentinel2", RUN, torch.tensor([SPECTRA[b][0] for b in RUN]),
                    torch.tensor([SPECTRA[b][1] for b in RUN]), 10.0, torch.zeros(4),
                    torch.ones(4), {})
    torch.manual_seed(1)
    enc = run_encoder(ModelConfig(name="resnet50", img_size=64, init_from=str(out)), info).eval()
    for c, band in enumerate(RUN):
        assert torch.equal(enc.conv1.weight[:, c], donor.conv1.weight[:, DONOR.index(band)])
    x = torch.randn(2, 4, 64, 64)  # in the donor's band order
    with torch.no_grad():
        # channels summed in another order: float rounding only (by position: 6% apart)
        torch.testing.assert_close(enc(x[:, [DONOR.index(b) for b in RUN]]), donor(x),
                                   rtol=1e-3, atol=1e-4)
