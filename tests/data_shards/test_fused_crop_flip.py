"""The fused random resized crop + flip/rotation (``crop_flip_rot``, what ``Compose`` runs for
a ``RandomResizedCrop`` directly followed by a ``RandomFlipRot``) gives exactly what the two
transforms give one after the other: the same keys in the same order, the same arrays bit for
bit (dtype, shape, C-contiguous, not views of the input), the same ``__zoom__``, the other
fields untouched, and the generator left in the same state, for every seed, tile size (odd,
even, not square), crop size, area range and flip/turn setting, and for every spatial array of
a sample (the image, its valid mask, a ``seg`` map, a second modality)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards import transforms
from eofm.data_shards.transforms import (
    ZOOM_KEY,
    Compose,
    RandomCrop,
    RandomFlipRot,
    RandomResizedCrop,
    crop_flip_rot,
)

TILES = [(64, 64), (33, 33), (8, 8), (40, 52), (45, 31), (1, 7)]  # (H, W): even, odd, not square
SIZES = [64, 16, 7, 1]
SCALES = [((0.2, 1.0), (3 / 4, 4 / 3)), ((1.0, 1.0), (1.0, 1.0)), ((0.02, 0.1), (1 / 3, 3.0))]
FLIPS = [RandomFlipRot(), RandomFlipRot(hflip=False), RandomFlipRot(vflip=False, rot90=False),
         RandomFlipRot(hflip=False, vflip=False)]


def _sample(h: int, w: int, seed: int = 0) -> dict:
    """Several spatial arrays of one tile (uint16 image, its bool mask, a uint8 seg map, a
    float32 second modality, a 4-d time series) and fields no spatial transform touches."""
    rng = np.random.default_rng(seed)
    return {"__key__": "k",
            "s2": rng.integers(0, 10000, (13, h, w), dtype=np.uint16),
            "s2_valid": rng.random((h, w)) < 0.8,
            "s1": rng.standard_normal((2, h, w)).astype(np.float32),
            "s1_valid": rng.random((h, w)) < 0.5,
            "seg": rng.integers(0, 255, (h, w), dtype=np.uint8),
            "ts": rng.integers(-5, 5, (3, 2, h, w), dtype=np.int16),
            "label": rng.integers(0, 2, (4, 5), dtype=np.uint8),  # a label is never spatial
            "weights": np.arange(5.0),  # 1-d: not spatial
            "__pos__": 3, "meta": {"a": 1}}


def _assert_same(got: dict, want: dict, source: dict) -> None:
    """``got`` is ``want`` bit for bit; arrays made from ``source`` are new, others the same
    objects."""
    assert list(got) == list(want)
    for k, v in want.items():
        g = got[k]
        assert type(g) is type(v), k
        if isinstance(v, np.ndarray):
            assert (g.dtype, g.shape) == (v.dtype, v.shape), k
            # C-contiguous: the same strides (numpy ignores those of axes of length 1)
            assert g.flags.c_contiguous and v.flags.c_contiguous, k
            assert g.tobytes() == v.tobytes(), k
            if k in source and v is not source[k]:
                assert not np.shares_memory(g, source[k]), k
            else:
                assert g is source[k], k
        elif k == ZOOM_KEY:
            assert g == v and isinstance(g, float)
        else:
            assert g is v, k


def _both(crop: RandomResizedCrop, flip: RandomFlipRot, sample: dict, seed: int
          ) -> tuple[dict, dict, np.random.Generator, np.random.Generator]:
    a, b = np.random.default_rng(seed), np.random.default_rng(seed)
    return crop_flip_rot(crop, flip, sample, a), flip(crop(sample, b), b), a, b


@pytest.mark.parametrize(("hw", "size"), list(itertools.product(TILES, SIZES)))
def test_fused_equals_the_two_transforms_for_every_seed(hw: tuple[int, int], size: int) -> None:
    sample = _sample(*hw)
    for (scale, ratio), flip in itertools.product(SCALES, FLIPS):
        crop = RandomResizedCrop(size, scale=scale, ratio=ratio)
        for seed in range(40):
            got, want, a, b = _both(crop, flip, sample, seed)
            _assert_same(got, want, sample)
            assert a.bit_generator.state == b.bit_generator.state  # the same draws taken


def test_every_flip_and_turn_combination_is_met_and_equal() -> None:
    """The 16 (turn, h-flip, v-flip) draws, each compared with the composed transforms on an
    image whose pixels are all distinct, so a wrong axis or direction cannot match."""
    crop, flip = RandomResizedCrop(24, scale=(0.3, 0.9)), RandomFlipRot()
    sample = {"x": np.arange(5 * 40 * 52, dtype=np.int32).reshape(5, 40, 52),
              "m": np.arange(40 * 52, dtype=np.int64).reshape(40, 52)}
    seen = set()
    for seed in range(400):
        got, want, *_ = _both(crop, flip, sample, seed)
        _assert_same(got, want, sample)
        rng = np.random.default_rng(seed)
        crop.box(40, 52, rng)
        seen.add(flip.draw(rng, square=True))
    assert len(seen) == 16


def test_compose_runs_the_pair_fused_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose fuses exactly a crop directly followed by a flip/rot (the exact classes), with
    other transforms before, between and after applied as before; the same output as each
    transform in turn."""
    steps = [RandomCrop(40), RandomResizedCrop(24), RandomFlipRot(), RandomFlipRot(rot90=False),
             RandomResizedCrop(9, scale=(0.5, 1.0)), RandomCrop(8), RandomResizedCrop(5),
             RandomFlipRot(hflip=False)]
    sample = _sample(45, 52)
    fused: list[tuple[int, int]] = []
    real = transforms.crop_flip_rot

    def spy(crop, flip, s, rng):
        fused.append((steps.index(crop), steps.index(flip)))
        return real(crop, flip, s, rng)

    for seed in range(30):
        fused.clear()
        want, rng = dict(sample), np.random.default_rng(seed)
        for t in steps:
            want = t(want, rng)
        with monkeypatch.context() as m:
            m.setattr(transforms, "crop_flip_rot", spy)
            got_rng = np.random.default_rng(seed)
            got = Compose(steps)(sample, got_rng)
        assert fused == [(1, 2), (6, 7)]
        assert list(got) == list(want)
        for k, v in want.items():
            if isinstance(v, np.ndarray):
                assert (got[k].dtype, got[k].shape) == (v.dtype, v.shape), k
                assert got[k].tobytes() == v.tobytes() and got[k].flags.c_contiguous, k
            else:
                assert got[k] == v, k
        assert got_rng.random() == rng.random()


def test_subclasses_and_a_lone_transform_are_not_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A subclass may draw or move pixels otherwise: it runs as itself; and each class still
    works alone."""

    class Flip(RandomFlipRot):
        pass

    class Crop(RandomResizedCrop):
        pass

    def refuse(*args: object) -> dict:
        raise AssertionError("fused")

    monkeypatch.setattr(transforms, "crop_flip_rot", refuse)
    sample = _sample(32, 32)
    for steps in ([RandomResizedCrop(16), Flip()], [Crop(16), RandomFlipRot()],
                  [RandomFlipRot(), RandomResizedCrop(16)], [RandomResizedCrop(16)],
                  [RandomFlipRot()]):
        out = Compose(steps)(sample, np.random.default_rng(0))
        assert out["s2"].shape[-1] == (32 if steps == [RandomFlipRot()] else 16)


def test_a_spatial_array_smaller_than_the_first_is_refused_alike() -> None:
    """The crop's box is drawn on the first spatial array: a smaller one is an IndexError in
    both (never a silently wrapped read)."""
    sample = {"a": np.zeros((1, 32, 32), np.uint8), "b": np.zeros((4, 4), np.uint8)}
    crop, flip = RandomResizedCrop(16, scale=(0.9, 1.0)), RandomFlipRot()
    with pytest.raises(IndexError):
        crop_flip_rot(crop, flip, sample, np.random.default_rng(0))
    with pytest.raises(IndexError):
        flip(crop(sample, np.random.default_rng(0)), np.random.default_rng(0))


def test_the_pretraining_loader_composes_the_pair_it_fuses(
        scene_tiles_32: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``data.crop_size`` the training loader's transform is a crop directly followed by
    a flip/rot, which Compose runs fused for every sample; the same output as the two in
    turn."""
    from eofm.data_shards.reader import ShardDataset
    from eofm.pretrain.config import load_config
    from eofm.pretrain.data import build_loader

    cfg = load_config(None, [f"data.path={scene_tiles_32}", "data.modalities=[s2]",
                             "data.num_workers=0", "data.crop_size=24", "data.batch_size=8",
                             "data.shuffle_buffer=16"])
    loader, _ = build_loader(cfg, 0, 1)
    compose = loader.dataset.transform
    assert isinstance(compose, Compose)
    assert [type(t) for t in compose.transforms] == [RandomResizedCrop, RandomFlipRot]
    calls = []
    real = transforms.crop_flip_rot
    monkeypatch.setattr(transforms, "crop_flip_rot",
                        lambda *args: calls.append(1) or real(*args))
    batch = next(iter(loader))
    assert batch["s2"].shape[-2:] == (24, 24) and len(calls) == 8
    raw = next(iter(ShardDataset(scene_tiles_32, modalities=["s2"], shuffle_buffer=0, rank=0,
                                 world_size=1)))
    crop, flip = compose.transforms
    for seed in range(20):
        rng = np.random.default_rng(seed)
        want = flip(crop(raw, rng), rng)
        _assert_same(compose(raw, np.random.default_rng(seed)), want, raw)
