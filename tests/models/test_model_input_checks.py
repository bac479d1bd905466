"""Bad model inputs are refused where they enter, naming the field: a GSD-aware encoder's gsd
and reference_gsd, a grouped tokenizer's empty group, and spectral band codes whose memory is
written behind the checked-once cache's back."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from eofm.models import (
    GroupedTokenizer,
    PlainTokenizer,
    SpectralAdapter,
    SpectralTokenizer,
    ViTEncoder,
    build_tokenizer,
    create_model,
)
from eofm.models import vit as vit_module

RGB = ["R", "G", "B"]
DIM, DEPTH, HEADS, P, SIZE = 64, 2, 2, 8, 32  # 4x4 grid
GSD_ERROR = "gsd: expected a positive finite ground sample distance in m, got "
NAN, INF = float("nan"), float("inf")


def _gsd_encoder(**kw: object) -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(PlainTokenizer(RGB, P, DIM), DIM, DEPTH, HEADS, img_size=SIZE,
                      gsd_pos=True, reference_gsd=10.0, **kw).eval()


def _x(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# ---- gsd ----------------------------------------------------------------------------------

ENTRIES = {
    "forward": lambda m, x, g: m(x, gsd=g),
    "forward_features(ids_keep)": lambda m, x, g: m.forward_features(
        x, ids_keep=torch.tensor([[0, 3], [1, 2]]), gsd=g),
    "forward_intermediates": lambda m, x, g: m.forward_intermediates(x, indices=1, gsd=g),
}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
@pytest.mark.parametrize("gsd", [0.0, -10.0, NAN, INF, -INF])
def test_gsd_pos_refuses_a_gsd_that_is_not_positive_and_finite(entry: str, gsd: float) -> None:
    """Before: 0 gave every token the same position code, -10 a mirrored one, NaN/inf NaN
    features, all without an error."""
    model = _gsd_encoder()
    with torch.no_grad(), pytest.raises(ValueError, match=re.escape(f"{GSD_ERROR}{gsd}")):
        ENTRIES[entry](model, _x(), gsd)


@pytest.mark.parametrize("gsd, got", [
    (torch.tensor([10.0, NAN]), "nan at sample 1"),
    (torch.tensor([0.0, 10.0]), "0.0 at sample 0"),
    ([10.0, -5.0], "-5.0 at sample 1"),
    (torch.tensor([INF, 10.0]), "inf at sample 0"),
])
def test_gsd_pos_refuses_bad_per_sample_values(gsd: object, got: str) -> None:
    model = _gsd_encoder()
    with torch.no_grad(), pytest.raises(ValueError, match=re.escape(f"{GSD_ERROR}{got}")):
        model(_x(), gsd=gsd)


def test_gsd_error_lists_a_few_bad_samples_of_many() -> None:
    model = _gsd_encoder()
    gsd = torch.full((8,), 10.0)
    gsd[1:8] = 0.0
    with torch.no_grad(), pytest.raises(ValueError, match=re.escape(
            f"{GSD_ERROR}0.0 at sample 1, 0.0 at sample 2, 0.0 at sample 3, 0.0 at sample 4, "
            "0.0 at sample 5 and 2 more of 8")):
        model(_x(8), gsd=gsd)


def test_good_gsd_gives_the_encoding_it_always_did() -> None:
    """Valid GSDs (float, per sample, none) scale positions exactly as before the check."""
    model, x = _gsd_encoder(), _x()
    grid = model.grid_size
    with torch.no_grad():
        tokens = model.tokenizer(x)[:, 0]
        for gsd, scale in [(20.0, torch.tensor([2.0, 2.0])),
                           (torch.tensor([5.0, 30.0]), torch.tensor([0.5, 3.0]))]:
            want = tokens + model.tokenizer.encoding(grid, scale)
            torch.testing.assert_close(model.embed(x, gsd=gsd), want, rtol=0, atol=0)
        torch.testing.assert_close(model.embed(x), tokens + model.pos_embed, rtol=0, atol=0)


def test_gsd_on_an_accelerator_is_guarded_without_a_host_sync(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-sample GSD on an accelerator is a new tensor every training step, so reading it
    back would be a host sync each step: its bad entries become NaN instead (those samples'
    features are NaN, the others' unchanged) and nothing is read. Emulated on the CPU by
    treating CPU tensors as not free to read."""
    monkeypatch.setattr(vit_module, "_free_to_read", lambda t: False)
    model, x = _gsd_encoder(), _x(5)
    reads = []
    with monkeypatch.context() as reading:
        for name in ("__bool__", "item", "tolist"):
            def counted(t: torch.Tensor, *a: object, _name: str = name,
                        _f: object = getattr(torch.Tensor, name)) -> object:
                reads.append(_name)
                return _f(t, *a)  # type: ignore[operator]

            reading.setattr(torch.Tensor, name, counted)
        g = vit_module.gsd_values(torch.tensor([0.0, 10.0, NAN, -10.0, INF]), 5)
    assert reads == []
    assert torch.isnan(g).tolist() == [True, False, True, True, True] and g[1].item() == 10.0
    with torch.no_grad():
        out = model.embed(x, gsd=torch.tensor([0.0, 10.0, NAN, -10.0, INF]))
        good = model.embed(x, gsd=10.0)
    assert torch.isnan(out).flatten(1).all(1).tolist() == [True, False, True, True, True]
    torch.testing.assert_close(out[1], good[1], rtol=0, atol=0)


@pytest.mark.parametrize("reference_gsd", [0.0, -1.0, NAN, INF, True, "10"])
def test_reference_gsd_must_be_positive_and_finite(reference_gsd: object) -> None:
    """Before: NaN passed ``<= 0`` (NaN features), inf removed position information."""
    with pytest.raises(ValueError, match=re.escape(
            "reference_gsd: expected a positive finite ground sample distance in m, got "
            f"{reference_gsd!r}")):
        ViTEncoder(PlainTokenizer(RGB, P, DIM), DIM, DEPTH, HEADS, img_size=SIZE, gsd_pos=True,
                   reference_gsd=reference_gsd)  # type: ignore[arg-type]


def test_reference_gsd_is_checked_through_create_model() -> None:
    with pytest.raises(ValueError, match="reference_gsd: expected a positive finite"):
        create_model("vit_test_patch16", img_size=32, gsd_pos=True, reference_gsd=NAN)
    model = create_model("vit_test_patch16", img_size=32, gsd_pos=True,
                         reference_gsd=np.float32(20.0))  # numpy reals are real numbers
    assert model.reference_gsd == 20.0 and math.isfinite(model.reference_gsd)


@pytest.mark.compiles
def test_gsd_check_runs_outside_the_compiled_blocks() -> None:
    """``runtime.compile`` compiles the transformer blocks only (pretrain.strategy
    .compile_model): the GSD check runs eagerly before them, so it neither breaks their graph
    nor makes them recompile for other GSDs, and a bad GSD is still refused."""
    from eofm.pretrain.strategy import compile_model

    torch._dynamo.reset()
    counter = CompileCounter()
    model, x = _gsd_encoder(), _x()
    with torch.no_grad():
        eager = [model(x, gsd=g) for g in (10.0, torch.tensor([5.0, 30.0]))]
        assert compile_model(model, counter) == DEPTH
        compiled = model(x, gsd=10.0)
        frames = counter.frame_count
        assert frames >= 1
        torch.testing.assert_close(compiled, eager[0])
        torch.testing.assert_close(model(x, gsd=torch.tensor([5.0, 30.0])), eager[1])
        with pytest.raises(ValueError, match=re.escape(f"{GSD_ERROR}0.0")):
            model(x, gsd=0.0)
        assert counter.frame_count == frames
    torch._dynamo.reset()


# ---- grouped tokenizer ----------------------------------------------------------------------

@pytest.mark.parametrize("empty", [[], ()])
def test_grouped_tokenizer_refuses_an_empty_group(empty: object) -> None:
    """Before: built a Conv2d over 0 bands; the first forward died in index_select naming no
    group."""
    error = re.escape("groups['empty']: expected at least one band name, got none")
    with pytest.raises(ValueError, match=error):
        GroupedTokenizer({"vis": ["B02", "B03"], "empty": empty}, 16, 64)
    with pytest.raises(ValueError, match=error):
        build_tokenizer("grouped", groups={"vis": ["B02"], "empty": empty}, patch_size=16,
                        embed_dim=64)
    with pytest.raises(ValueError, match=error):
        create_model("vit_test_patch16", tokenizer="grouped", img_size=32,
                     groups={"vis": ["B02"], "empty": empty}, bands=["B02"])


# ---- spectral band codes --------------------------------------------------------------------

def _spectral_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(1, 3, 16, 16), torch.tensor([65.0, 35.0, 30.0])


@pytest.mark.parametrize("adapter", [None, 2, 4])
def test_numpy_backed_band_codes_are_checked_on_every_call(adapter: int | None) -> None:
    """A tensor over a numpy array is written by numpy without moving torch's version counter:
    before, it was remembered as checked and a negative wavelength written later gave NaN tokens
    without an error."""
    tok = SpectralTokenizer(4, 32, hidden_dim=32, code_dim=16,
                            adapter=None if adapter is None else SpectralAdapter(adapter))
    x, bw = _spectral_inputs()
    buf = np.array([490.0, 560.0, 665.0], dtype=np.float32)
    wl = torch.from_numpy(buf)
    assert torch.isfinite(tok(x, wavelengths=wl, bandwidths=bw)).all()
    buf[0] = -490.0
    with pytest.raises(ValueError, match=re.escape(
            "wavelengths: expected finite positive values in nm, got [-490.0, 560.0, 665.0]")):
        tok(x, wavelengths=wl, bandwidths=bw)


def test_buffer_backed_band_codes_are_checked_on_every_call() -> None:
    """Memory torch did not allocate (``torch.frombuffer``) is not remembered either."""
    tok = SpectralTokenizer(4, 32, hidden_dim=32, code_dim=16)
    x, _ = _spectral_inputs()
    raw = bytearray(np.array([65.0, 35.0, 30.0], dtype=np.float32).tobytes())
    bw = torch.frombuffer(raw, dtype=torch.float32)
    wl = torch.tensor([490.0, 560.0, 665.0])
    tok(x, wavelengths=wl, bandwidths=bw)
    raw[4:8] = np.array([NAN], dtype=np.float32).tobytes()
    with pytest.raises(ValueError, match=re.escape("bandwidths: expected finite positive values "
                                                   "in nm, got [65.0, nan, 30.0]")):
        tok(x, wavelengths=wl, bandwidths=bw)


def test_shared_memory_band_codes_are_checked_on_every_call() -> None:
    """CPU shared memory is written by other processes without moving this one's version
    counter (emulated here by a ``.data`` write): not remembered."""
    tok = SpectralTokenizer(4, 32, hidden_dim=32, code_dim=16)
    x, _ = _spectral_inputs()
    shared = torch.tensor([490.0, 560.0, 665.0]).share_memory_()
    bw = torch.tensor([65.0, 35.0, 30.0])
    tok(x, wavelengths=shared, bandwidths=bw)
    shared.data[2] = 0.0  # no version bump, as a write from another process
    with pytest.raises(ValueError, match=re.escape("wavelengths: expected finite positive values "
                                                   "in nm, got [490.0, 560.0, 0.0]")):
        tok(x, wavelengths=shared, bandwidths=bw)
