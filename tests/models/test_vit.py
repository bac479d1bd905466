"""ViT encoder properties: attention backends agree, token dropping is exact, feature API shapes."""

from __future__ import annotations

import pytest
import torch

from eofm.models import (
    Attention,
    CrossAttention,
    GroupedTokenizer,
    PlainTokenizer,
    ViTEncoder,
    attend,
    attention_backend,
    gather_tokens,
    grouped_masking,
    ids_from_mask,
    masked_ids,
    random_masking,
    set_attention_backend,
    xformers_available,
)

RGB = ["R", "G", "B"]
GROUPS = {"vis": ["R", "G"], "nir": ["N"], "swir": ["S1", "S2"]}
DIM, DEPTH, HEADS, P, SIZE = 64, 2, 2, 8, 32  # 4x4 grid


def _plain(**kw) -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(PlainTokenizer(RGB, P, DIM), DIM, DEPTH, HEADS, img_size=SIZE, **kw).eval()


def _grouped(**kw) -> ViTEncoder:
    torch.manual_seed(0)
    tok = GroupedTokenizer(GROUPS, P, DIM)
    return ViTEncoder(tok, DIM, DEPTH, HEADS, img_size=SIZE, **kw).eval()


def _x(c: int = 3, b: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(1))


def _manual(model: ViTEncoder, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """Embed all tokens, gather the kept ones, prepend cls, run the blocks and the norm by hand."""
    tokens = model.embed(x)
    kept = torch.stack([tokens[b, ids_keep[b]] for b in range(x.shape[0])])
    h = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), kept], dim=1)
    for blk in model.blocks:
        h = blk(h)
    return model.norm(h)


# ---- attention backends -------------------------------------------------------------------


@pytest.mark.parametrize("nk", [7, 13])
def test_attend_sdpa_matches_reference(nk: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (7, nk, nk))
    ref = attend(q, k, v, "reference")
    torch.testing.assert_close(attend(q, k, v, "sdpa"), ref, atol=1e-5, rtol=1e-5)
    manual = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v
    torch.testing.assert_close(ref, manual, atol=1e-5, rtol=1e-5)


def test_attention_modules_agree_forward_and_backward() -> None:
    torch.manual_seed(0)
    for mod, args in ((Attention(32, 4), (torch.randn(2, 9, 32),)),
                      (CrossAttention(32, 4, kv_dim=16), (torch.randn(2, 5, 32), torch.randn(2, 9, 16)))):
        outs, grads = [], []
        for backend in ("sdpa", "reference"):
            mod.zero_grad()
            mod.backend = backend
            y = mod(*args)
            y.square().sum().backward()
            outs.append(y)
            grads.append([p.grad.clone() for p in mod.parameters()])
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_backend_switch_on_model_and_context() -> None:
    model, x = _plain(), _x()
    with torch.no_grad():
        sdpa = model.forward_features(x)
        with attention_backend("reference"):
            ctx = model.forward_features(x)
        set_attention_backend(model, "reference")
        assert all(b.attn.backend == "reference" for b in model.blocks)
        attr = model.forward_features(x)
    torch.testing.assert_close(ctx, sdpa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attr, ctx)


def test_backend_errors() -> None:
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="backend"):
        attend(q, q, q, "flash9")
    with pytest.raises(ValueError, match="name"), attention_backend("nope"):
        pass
    if not xformers_available():
        with pytest.raises(ValueError, match="xformers"):
            attend(q, q, q, "xformers")


@pytest.mark.gpu
@pytest.mark.skipif(not xformers_available(), reason="needs xformers and a CUDA device")
def test_xformers_matches_reference() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 50, 32, device="cuda", generator=g) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v, "xformers"), attend(q, k, v, "reference"),
                               atol=1e-4, rtol=1e-4)
    model = _plain().cuda()
    x = _x().cuda()
    with torch.no_grad(), attention_backend("xformers"):
        xf = model.forward_features(x)
    with torch.no_grad(), attention_backend("reference"):
        ref = model.forward_features(x)
    torch.testing.assert_close(xf, ref, atol=1e-4, rtol=1e-4)


# ---- token dropping ------------------------------------------------------------------------


@pytest.mark.parametrize("make, c", [(_plain, 3), (_grouped, 5)])
def test_token_dropping_equals_manual_path(make, c: int) -> None:
    model, x = make(), _x(c)
    n = model.num_tokens
    assert n == model.num_groups * model.num_patches
    ids_keep, _, mask = random_masking(2, n, n // 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model.forward_features(x, ids_keep=ids_keep)
        assert out.shape == (2, 1 + n // 4, DIM)
        torch.testing.assert_close(out, _manual(model, x, ids_keep), atol=1e-5, rtol=1e-5)
        # the same tokens given as a mask run in index order: a permutation of the same outputs
        by_mask = model.forward_features(x, mask=mask.bool())
        order = torch.argsort(ids_keep, dim=1)
        torch.testing.assert_close(by_mask[:, 1:], gather_tokens(out[:, 1:], order),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(by_mask[:, 0], out[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw, size, gsd", [({}, SIZE, None), ({}, 48, None),
                                           ({"learned_pos": True}, 48, None),
                                           ({"gsd_pos": True}, SIZE, torch.tensor([5.0, 20.0]))])
def test_plain_tokenizer_embeds_only_the_kept_patches(kw: dict, size: int,
                                                      gsd: torch.Tensor | None) -> None:
    """With ids_keep, a plain tokenizer embeds the kept patches alone (a linear map with the
    Conv2d's parameters, never the conv over every patch): the same tokens and parameter
    gradients as embedding every patch and dropping the masked ones, to float32 rounding;
    the state dict is the conv's."""
    model, x = _plain(**kw).train(), _x(3, size=size)
    n = (size // P) ** 2
    ids_keep, _, _ = random_masking(2, n, n // 4, generator=torch.Generator().manual_seed(4))
    convs = []
    hook = model.tokenizer.proj.register_forward_hook(lambda *_: convs.append(1))
    out = model.forward_features(x, ids_keep=ids_keep, gsd=gsd)
    hook.remove()
    assert convs == []
    out.square().sum().backward()
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    model.zero_grad()
    ref = model.forward_tokens(model.embed(x, gsd=gsd), ids_keep)  # conv over every patch
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for k, v in model.named_parameters():
        torch.testing.assert_close(grads[k], v.grad, atol=1e-4, rtol=1e-4, msg=k)
    state = model.state_dict()
    assert state["tokenizer.proj.weight"].shape == (DIM, 3, P, P)
    assert not [k for k in state if k.startswith("tokenizer.") and ".proj." not in k]


def test_keeping_all_tokens_is_the_full_forward_up_to_permutation() -> None:
    model, x = _grouped(), _x(5)
    n = model.num_tokens
    ids_keep, ids_restore, _ = random_masking(2, n, n, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model.forward_features(x)
        shuffled = model.forward_features(x, ids_keep=ids_keep)
    torch.testing.assert_close(shuffled[:, 0], full[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gather_tokens(shuffled[:, 1:], ids_restore), full[:, 1:],
                               atol=1e-5, rtol=1e-5)


def test_forward_features_input_errors() -> None:
    model, x = _plain(), _x()
    ids, _, mask = random_masking(2, 16, 4)
    with pytest.raises(ValueError, match="at most one"):
        model.forward_features(x, ids_keep=ids, mask=mask)
    uneven = torch.zeros(2, 16, dtype=torch.bool)
    uneven[0, :4], uneven[1, :5] = True, True
    with pytest.raises(ValueError, match="same number"):
        model.forward_features(x, mask=uneven)
    with pytest.raises(ValueError, match="ids_keep"):
        model.forward_features(x, ids_keep=ids[0])
    with pytest.raises(ValueError, match="img_size"):
        model(_x(size=30))


# ---- masking -------------------------------------------------------------------------------


def test_random_masking_triple_is_consistent() -> None:
    ids_keep, ids_restore, mask = random_masking(3, 20, 5, generator=torch.Generator().manual_seed(0))
    assert ids_keep.shape == (3, 5) and ids_restore.shape == mask.shape == (3, 20)
    assert mask.dtype == torch.float32 and (mask.sum(1) == 15).all()
    assert (mask.gather(1, ids_keep) == 0).all()
    # decoder-style restore: [kept tokens, mask tokens] gathered with ids_restore = original order
    tokens = torch.arange(20.0).expand(3, 20)[..., None]
    visible = gather_tokens(tokens, ids_keep)
    hidden = gather_tokens(tokens, masked_ids(ids_restore, 5))
    restored = gather_tokens(torch.cat([visible, hidden], 1), ids_restore)
    torch.testing.assert_close(restored, tokens)
    ik, ir, m = ids_from_mask(mask)
    assert torch.equal(m, mask) and torch.equal(ik, ids_keep.sort(1).values)
    order = torch.cat([ik, masked_ids(ir, 5)], 1).gather(1, ir)
    assert torch.equal(order, torch.arange(20).expand(3, 20))
    with pytest.raises(ValueError, match="keep"):
        random_masking(1, 4, 5)


def test_grouped_masking_modes() -> None:
    G, L = 3, 16
    gen = torch.Generator().manual_seed(0)
    ik, _, mask = grouped_masking(4, G, L, 0.25, "consistent", generator=gen)
    per_group = mask.reshape(4, G, L)
    assert (per_group == per_group[:, :1]).all() and (per_group.sum(-1) == 12).all()
    assert ik.shape == (4, G * 4)
    ik, _, mask = grouped_masking(4, G, L, 0.25, "independent", generator=gen)
    assert ik.shape == (4, 12) and (mask.sum(1) == 36).all()
    assert not (mask.reshape(4, G, L) == mask.reshape(4, G, L)[:, :1]).all()
    with pytest.raises(ValueError, match="mode"):
        grouped_masking(1, G, L, 0.5, "spatial")


# ---- feature API ---------------------------------------------------------------------------


def test_forward_intermediates_formats() -> None:
    model, x = _plain(), _x()
    with torch.no_grad():
        maps = model.forward_intermediates(x, [0, -1])
        assert [m.shape for m in maps] == [(2, DIM, 4, 4)] * 2
        nlc = model.forward_intermediates(x, 1, output_fmt="NLC", norm=True)
        assert len(nlc) == 1 and nlc[0].shape == (2, 16, DIM)
        torch.testing.assert_close(nlc[0], model.forward_features(x)[:, 1:])
        # NCHW is the NLC grid, row-major
        flat = model.forward_intermediates(x, [1], output_fmt="NLC")[0]
        torch.testing.assert_close(maps[1], flat.transpose(1, 2).reshape(2, DIM, 4, 4))
        bigger = model.forward_intermediates(_x(size=48), [1])[0]
        assert bigger.shape == (2, DIM, 6, 6)
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, [5])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, 1, output_fmt="NHWC")


def test_forward_intermediates_timm_keywords() -> None:
    model, x = _plain(), _x()
    with torch.no_grad():
        feats = model.forward_features(x)
        final, maps = model.forward_intermediates(x, indices=[0], intermediates_only=False)
        torch.testing.assert_close(final, feats)  # every block ran for the final features
        torch.testing.assert_close(maps[0], model.forward_intermediates(x, [0])[0])
        early, _ = model.forward_intermediates(x, indices=[0], norm=True, stop_early=True,
                                               intermediates_only=False)
        h = model._prepend(model.embed(x))
        torch.testing.assert_close(early, model.norm(model.blocks[0](h)))
        ((spatial, prefix),) = model.forward_intermediates(
            x, indices=1, norm=True, output_fmt="NLC", return_prefix_tokens=True)
        torch.testing.assert_close(spatial, feats[:, 1:])
        torch.testing.assert_close(prefix, feats[:, :1])
        ((nchw, _),) = model.forward_intermediates(x, indices=[1], return_prefix_tokens=True)
        assert nchw.shape == (2, DIM, 4, 4)
        no_cls = _plain(class_token=False, global_pool="avg")
        ((_, empty),) = no_cls.forward_intermediates(x, [1], return_prefix_tokens=True)
        assert empty.shape == (2, 0, DIM)


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth: expected at least 1 transformer block, got 0"):
        ViTEncoder(PlainTokenizer(RGB, P, DIM), DIM, 0, HEADS, img_size=SIZE)


def test_forward_intermediates_grouped_is_mean_over_groups() -> None:
    model, x = _grouped(), _x(5)
    with torch.no_grad():
        nlc = model.forward_intermediates(x, [1], output_fmt="NLC")[0]
        nchw = model.forward_intermediates(x, [1])[0]
    assert nlc.shape == (2, 3 * 16, DIM) and nchw.shape == (2, DIM, 4, 4)
    expect = nlc.reshape(2, 3, 16, DIM).mean(1).transpose(1, 2).reshape(2, DIM, 4, 4)
    torch.testing.assert_close(nchw, expect)


def test_pooling_cls_or_avg() -> None:
    x = _x()
    for pool in ("token", "avg"):
        model = _plain(global_pool=pool)
        with torch.no_grad():
            feats = model.forward_features(x)
            pooled = model(x)
        expect = feats[:, 0] if pool == "token" else feats[:, 1:].mean(1)
        torch.testing.assert_close(pooled, expect)
    torch.testing.assert_close(model.pool(feats, "token"), feats[:, 0])
    no_cls = _plain(class_token=False, global_pool="avg")
    assert no_cls.num_prefix_tokens == 0 and no_cls.forward_features(x).shape == (2, 16, DIM)
    with pytest.raises(ValueError, match="class_token"):
        _plain(class_token=False, global_pool="token")


def test_gsd_positions() -> None:
    model, x = _plain(gsd_pos=True, reference_gsd=10.0), _x()
    with torch.no_grad():
        base = model(x)
        torch.testing.assert_close(model(x, gsd=torch.tensor([10.0, 10.0])), base)
        other = model(x, gsd=torch.tensor([10.0, 30.0]))
        torch.testing.assert_close(model(x, gsd=10.0), base)
    torch.testing.assert_close(other[0], base[0])
    assert not torch.allclose(other[1], base[1])
    with pytest.raises(ValueError, match="gsd"):
        model(x, gsd=torch.ones(3))


def test_gsd_positions_default_to_the_contracts_gsd() -> None:
    """A gsd_pos encoder called without ``gsd`` (a model card's ``encoder(x)``, timm users)
    uses its contract's GSD, what pretraining fed it; without one, ``reference_gsd``."""
    from eofm.models import InputContract

    model, x = _plain(gsd_pos=True, reference_gsd=10.0,
                      contract=InputContract(bands=tuple(RGB), gsd=30.0)), _x()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x, gsd=30.0), rtol=0, atol=0)
        assert not torch.allclose(model(x), model(x, gsd=10.0))
        tokens = model.forward_intermediates(x, indices=1)[0]
        torch.testing.assert_close(tokens, model.forward_intermediates(x, indices=1, gsd=30.0)[0])
    assert model.default_gsd() == 30.0
    bare = _plain(gsd_pos=True, reference_gsd=10.0)
    assert bare.default_gsd() is None
    with torch.no_grad():
        torch.testing.assert_close(bare(x), bare(x, gsd=10.0))


def test_grad_checkpointing_and_drop_path_train() -> None:
    model, x = _plain(layer_scale_init=1e-5), _x()
    y = model(x).sum()
    y.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    for a, p in zip(ref, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)
    model = _plain(drop_path_rate=0.5).train()
    assert torch.isfinite(model(x)).all()
    assert model.no_weight_decay() >= {"cls_token"}


def test_forward_tokens_checkpoints_its_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """SelectiveMAE's path (embed once, then forward_tokens) honours set_grad_checkpointing:
    every block runs through torch.utils.checkpoint, with the same output and gradients."""
    import eofm.models.vit as vit

    model, x = _plain(layer_scale_init=1e-5), _x()
    ids_keep = torch.arange(0, model.num_tokens, 3).expand(x.shape[0], -1)
    ref_out = model.forward_tokens(model.embed(x), ids_keep)
    ref_out.square().sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    calls: list[object] = []
    real = vit.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(vit, "checkpoint", counting)
    model.set_grad_checkpointing()
    out = model.forward_tokens(model.embed(x), ids_keep)
    assert calls == list(model.blocks)
    assert torch.equal(out, ref_out.detach())
    out.square().sum().backward()
    for a, p in zip(ref, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


def test_mae_init() -> None:
    model = _plain()
    assert 0.01 < model.cls_token.std() < 0.03
    qkv = model.blocks[0].attn.qkv
    bound = (6 / sum(qkv.weight.shape)) ** 0.5
    assert qkv.weight.abs().max() <= bound and torch.count_nonzero(qkv.bias) == 0
