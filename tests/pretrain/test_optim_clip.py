"""Gradient clipping in ``clip_and_check``: gradients are rescaled only above ``max_norm``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from eofm.pretrain import optim
from eofm.pretrain.optim import clip_and_check


def _params(scale: float, seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    ps = [nn.Parameter(torch.zeros(s)) for s in ((7, 5), (5,), (3, 2, 2))]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return ps


def test_below_the_limit_the_gradients_are_not_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``max_norm`` no pass over the gradients (not even a multiply by 1.0)."""
    ps = _params(0.01)
    before = [p.grad.clone() for p in ps]
    ref = torch.linalg.vector_norm(torch.cat([b.flatten() for b in before])).item()
    calls: list[object] = []
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_",
                        lambda *a, **k: calls.append(a))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(a))
    norm, finite = clip_and_check(ps, max_norm=1.0)
    assert finite and norm == pytest.approx(ref, rel=1e-6) and norm < 1.0
    assert calls == []  # the unfixed code called clip_grad_norm_ (a multiply) every step
    for p, b in zip(ps, before, strict=True):
        assert torch.equal(p.grad, b)


@pytest.mark.parametrize(("scale", "max_norm"), [(0.01, 1.0), (1.0, 1.0), (3.0, 0.5)])
def test_the_same_gradients_as_clip_grad_norm(scale: float, max_norm: float) -> None:
    """Bitwise what ``clip_grad_norm_`` gives, below and above the limit; above it the norm
    becomes ``max_norm``."""
    ps, ref = _params(scale), _params(scale)
    norm, finite = clip_and_check(ps, max_norm)
    ref_norm = float(torch.nn.utils.clip_grad_norm_(ref, max_norm))
    assert finite and norm == ref_norm
    for p, r in zip(ps, ref, strict=True):
        assert torch.equal(p.grad, r.grad)
    after = math.sqrt(sum(float(p.grad.square().sum()) for p in ps))
    assert after == pytest.approx(min(norm, max_norm), rel=1e-5)
    assert (norm > max_norm) == (scale > 0.1)  # both regimes are exercised


def test_nonfinite_norms_are_reported_not_clipped() -> None:
    """The guard's input is as before: a NaN or inf norm is reported as not finite."""
    for bad in (float("nan"), float("inf")):
        ps = _params(1.0)
        ps[1].grad[0] = bad
        norm, finite = clip_and_check(ps, max_norm=1.0)
        assert not finite and not math.isfinite(norm)


def test_older_torch_without_get_total_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch < 2.6 (no ``get_total_norm``): ``clip_grad_norm_`` does both, same results."""
    monkeypatch.delattr(optim.torch.nn.utils, "get_total_norm")
    ps, ref = _params(3.0), _params(3.0)
    norm, finite = clip_and_check(ps, 0.5)
    assert finite and norm == float(torch.nn.utils.clip_grad_norm_(ref, 0.5))
    assert all(torch.equal(p.grad, r.grad) for p, r in zip(ps, ref, strict=True))
