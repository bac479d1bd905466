"""Linear probe, kNN, contract-driven preprocessing and the eofm-probe CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.data_shards.manifest import LabelInfo, Manifest, ModalityInfo
from eofm.data_shards.png import read_png
from eofm.finetune.datasets import LabelledData, open_labelled
from eofm.finetune.evaluation_check import WEIGHTS_DIGEST, weights_digest
from eofm.finetune.features import apply_contract, extract_features
from eofm.finetune.probe import (
    average_precision,
    band_stats_features,
    class_metrics,
    knn,
    linear_probe,
    multilabel_metrics,
    stratified_folds,
    train_val_split,
)
from eofm.finetune.probe_cli import cross_validate, main, random_seed_keys, random_seed_range
from eofm.finetune.report import aggregate, confusion_png, macro_notes
from eofm.models import InputContract, create_model, from_pretrained, save_pretrained
from eofm.models.probe_table import probe_table


# ---------------------------------------------------------------- constructed features
def clusters(n: int, k: int, d: int, seed: int = 0, sep: float = 6.0):
    """Gaussian clusters (unit variance) around k well-separated centres: (x, y)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def split(y: np.ndarray, seed: int = 0):
    """(fit, val, test) indices: fold 0 is test, a stratified slice of the rest is val."""
    test = stratified_folds(y, 5, seed)[0]
    train = np.setdiff1d(np.arange(len(y)), test)
    fit, val = train_val_split(y, train, 4, seed)
    return fit, val, test


def test_linear_probe_recovers_linear_separation() -> None:
    x, y = clusters(500, 4, 16)
    fit, val, test = split(y)
    r = linear_probe(x[fit], y[fit], x[val], y[val], x[test], y[test], "class")
    assert r["accuracy"] == 1.0 and r["balanced_accuracy"] == 1.0
    assert np.trace(np.array(r["confusion"])) == len(test)
    assert len(r["sweep"]) == 6 and r["best"]["val"] == 1.0


def test_linear_probe_multilabel_map() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    w = rng.normal(size=(8, 5))
    margin = x @ w
    keep = (np.abs(margin) > 0.5).all(axis=1)  # a margin around every hyperplane
    x, y = x[keep], (margin[keep] > 0).astype(np.uint8)
    fit, val, test = split(y)
    r = linear_probe(x[fit], y[fit], x[val], y[val], x[test], y[test], "multilabel")
    assert r["micro_map"] > 0.99 and r["macro_map"] > 0.99
    assert len(r["per_class"]) == 5


def test_shuffled_labels_give_chance() -> None:
    x, y = clusters(900, 3, 8)
    y = np.random.default_rng(5).permutation(y)
    fit, val, test = split(y)
    lin = linear_probe(x[fit], y[fit], x[val], y[val], x[test], y[test], "class")
    nn = knn(np.concatenate([x[fit], x[val]]), np.concatenate([y[fit], y[val]]), x[test],
             y[test], 20)
    for r in (lin, nn):
        assert abs(r["accuracy"] - 1 / 3) < 0.1


def test_knn_recovers_clusters() -> None:
    x, y = clusters(400, 4, 16)
    test = stratified_folds(y, 5, 0)[0]
    train = np.setdiff1d(np.arange(len(y)), test)
    for k in (10, 20):
        assert knn(x[train], y[train], x[test], y[test], k)["accuracy"] == 1.0
    sets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.uint8)  # label set per cluster
    r = knn(x[train], sets[y[train]], x[test], sets[y[test]], 10)
    assert r["micro_map"] == pytest.approx(1.0) and r["macro_map"] == pytest.approx(1.0)
    assert knn(x[:5], y[:5], x[5:9], y[5:9], 20)["k"] == 5  # capped at the training set


def test_knn_votes_are_weighted_by_similarity() -> None:
    """Neighbours vote with weight exp(cosine / temperature) (DINO), not one vote each: with
    k = 3, one near-identical neighbour of class 1 (cosine ~1 after standardising) outvotes
    the two of class 0 at cosine ~-0.2 that a plain majority vote would follow."""
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, -0.1]],
                     np.float32)
    classes = np.array([1, 0, 0, 2, 2])
    test = np.array([[1.0, 0.05]], np.float32)
    r = knn(train, classes, test, np.array([1]), 3, num_classes=3)
    assert r["k"] == 3 and r["accuracy"] == 1.0


def test_knn_multilabel_scores_near_one_keep_their_order() -> None:
    """Test samples next to a training sample of class 0 and far from the rest score
    1 - e^-28-ish for it: float32 votes collapsed the top four onto 1.0, tying the positive
    ranked first with the negative ranked second (micro-mAP 0.5); in float64 the ranking
    holds: positives 1st and 3rd, AP (1 + 2/3) / 2. Weights relative to the nearest
    neighbour also keep a tiny temperature finite (float32 exp(1/0.001) overflowed: NaN)."""
    xtr = np.array([[1, 0.1], [1, -0.1], *[[-1, y] for y in np.linspace(-0.05, 0.05, 8)]],
                   np.float32)
    ytr = np.array([[1, 0]] * 2 + [[0, 1]] * 8, np.uint8)
    xte = np.array([[1, t] for t in np.linspace(0.0, 0.02, 8)], np.float32)  # nearest first
    yte = np.array([[1, 0], [0, 0], [1, 0], *[[0, 0]] * 5], np.uint8)
    assert knn(xtr, ytr, xte, yte, 10)["micro_map"] == pytest.approx((1 + 2 / 3) / 2)
    x, y = clusters(100, 2, 4)
    r = knn(x[:80], y[:80], x[80:], y[80:], 10, temperature=1e-3)
    assert r["accuracy"] == 1.0


def test_knn_multilabel_all_positive_neighbours_score_exactly_one() -> None:
    """Six test samples whose 10 neighbours all hold label 0 score it exactly 1, a tie (one
    of them positive: AP 1/6 in both classes); the votes over the weights' sum, added in
    another order, made some 1 - eps, ranked by rounding noise (micro-mAP 0.18)."""
    rng = np.random.default_rng(0)
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    xtr = np.concatenate([a + rng.normal(0, 0.05, (10, 2)), b + rng.normal(0, 0.05, (10, 2))])
    ytr = np.array([[1, 0]] * 10 + [[0, 1]] * 10)
    xte = np.concatenate([a + rng.normal(0, 0.05, (6, 2)), b + rng.normal(0, 0.05, (6, 2))])
    yte = np.array([[0, 0]] * 5 + [[1, 0]] + [[0, 0]] * 5 + [[0, 1]])
    r = knn(xtr, ytr, xte, yte, 10)
    assert r["micro_map"] == pytest.approx(1 / 6) and r["macro_map"] == pytest.approx(1 / 6)


def test_average_precision_known_values() -> None:
    assert average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == \
        pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([1, 0, 1, 0]), np.full(4, 0.5)) == pytest.approx(0.5)
    assert average_precision(np.zeros(3), np.arange(3.0)) is None
    assert average_precision(np.ones(3), np.arange(3.0)) is None  # no negative: undefined


def test_class_metrics_on_an_imbalanced_set() -> None:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix by hand, on an
    imbalanced set where top-1 and balanced accuracy disagree: balanced accuracy is the mean
    recall over the classes present (class 3 has no sample: None, left out of the mean), and
    the confusion matrix is indexed [true, predicted]."""
    y_true = np.array([0, 0, 0, 0, 1, 2])
    y_pred = np.array([0, 0, 0, 1, 0, 2])
    m = class_metrics(y_true, y_pred, 4)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"] == [pytest.approx(3 / 4), 0.0, 1.0, None]
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 0 + 1) / 3)
    assert m["confusion"] == [[3, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_macro_map_leaves_out_classes_without_a_positive_or_a_negative() -> None:
    """Tiles of one image share their labels: a class on every test tile has no negative, so
    its AP would be 1.0 whatever the scores. Macro mAP averages only classes with both; micro
    mAP pools every decision as before."""
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]])  # class 0 everywhere, 2 nowhere
    noise = np.random.default_rng(0).normal(size=y.shape)
    m = multilabel_metrics(y, noise)
    assert m["per_class"][0] is None and m["per_class"][2] is None
    assert m["macro_map"] == pytest.approx(average_precision(y[:, 1], noise[:, 1]))
    assert m["macro_map_classes"] == 1
    assert (m["macro_left_out_no_positive"], m["macro_left_out_no_negative"]) == (1, 1)
    # micro: unchanged, every (sample, class) pair pooled, the all-positive class included
    assert m["micro_map"] == pytest.approx(average_precision(y.ravel(), noise.ravel()))
    one_image = np.array([[1, 0, 1]] * 4)  # every class without a positive or a negative
    m = multilabel_metrics(one_image, noise)
    assert m["macro_map"] is None and m["macro_map_classes"] == 0  # not 1.0 (nor 0)
    assert (m["macro_left_out_no_positive"], m["macro_left_out_no_negative"]) == (1, 2)


def _ml_report(folds: list[dict]) -> dict:
    """A minimal multi-label report of these per-fold scores, as eofm-probe aggregates them."""
    agg = aggregate(folds, "multilabel")
    return {"data": {"kind": "multilabel", "source": "d", "samples": 8, "classes": ["a", "b"]},
            "encoder": "e", "pool": "cls", "folds": len(folds), "knn_k": [],
            "feature_dim": {"pretrained": 4},
            **{m: {"linear": agg, "knn": {}} for m in ("pretrained", "random_init", "band_stats")}}


def test_macro_map_over_folds_where_defined_and_the_table_says_what_was_left_out() -> None:
    y = np.array([[1, 0], [1, 1], [0, 1], [1, 1]])
    s = np.random.default_rng(1).normal(size=y.shape)
    scored = multilabel_metrics(y, s)  # every class has both
    same = multilabel_metrics(np.array([[1, 0]] * 4), s)  # one image: none has both
    report = _ml_report([scored, same])
    macro = report["pretrained"]["linear"]["macro_map"]
    assert macro["mean"] == pytest.approx(scored["macro_map"]) and macro["folds_scored"] == 1
    assert report["pretrained"]["linear"]["folds"][1]["macro_left_out_no_negative"] == 1
    notes = macro_notes(report)
    assert notes[0].endswith("left out (no positive + no negative) per fold: 0 + 0, 1 + 1")
    assert "mean over the 1 of 2 folds" in notes[1]
    assert not macro_notes(_ml_report([scored, scored]))  # nothing left out: no note
    report = _ml_report([same, same])
    assert report["pretrained"]["linear"]["macro_map"]["mean"] is None
    _, rows = probe_table(report)
    assert rows[0][2] == "-"  # shown as undefined: not 0.000, not 1.000
    assert "macro-mAP is undefined" in macro_notes(report)[1]


def test_folds_stratified_deterministic_and_robust() -> None:
    y = np.repeat(np.arange(10), [20, 20, 20, 20, 20, 21, 20, 20, 20, 21])  # EuroSAT-like
    folds = stratified_folds(y, 5, seed=3)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(y)))
    for c in range(10):
        counts = [int((y[f] == c).sum()) for f in folds]
        assert max(counts) - min(counts) <= 1
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(y, 5, 3),
                                                    strict=True))
    assert not np.array_equal(folds[0], stratified_folds(y, 5, 4)[0])
    train = np.setdiff1d(np.arange(len(y)), folds[0])
    fit, val = train_val_split(y, train, 4, seed=0)
    assert not set(fit) & set(val) and set(fit) | set(val) == set(train)
    assert sorted(set(y[val])) == list(range(10))  # every class in val
    tiny = np.array([0, 0, 1, 1, 1, 2])  # classes smaller than the fold count
    assert sum(map(len, stratified_folds(tiny, 5, 0))) == 6
    with pytest.raises(ValueError, match=r"folds: expected 2\.\.6"):
        stratified_folds(tiny, 7)


def test_grouped_folds_keep_each_image_in_one_fold() -> None:
    from eofm.finetune.datasets import tile_source

    keys = [f"img{i}_r{r}_c{c}" for i in range(6) for r in (0, 56) for c in (0, 56)]
    groups = [tile_source(k) for k in keys]
    assert groups[:4] == ["img0"] * 4 and tile_source("plain_key") == "plain_key"
    y = np.repeat(np.arange(6) % 2, 4)
    folds = stratified_folds(y, 3, seed=1, groups=groups)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(y)))
    g = np.asarray(groups)
    for f in folds:
        assert not set(g[f]) & set(g[np.setdiff1d(np.arange(len(y)), f)])  # no image split
    train = np.setdiff1d(np.arange(len(y)), folds[0])
    fit, val = train_val_split(y, train, 4, seed=0, groups=groups)
    assert not set(g[fit]) & set(g[val]) and set(fit) | set(val) == set(train)
    ungrouped = stratified_folds(y, 3, seed=1)
    assert any(set(g[f]) & set(g[np.setdiff1d(np.arange(len(y)), f)]) for f in ungrouped)
    with pytest.raises(ValueError, match=r"folds: expected 2\.\.6 \(the number of groups "
                                         r"\(source images\)\)"):
        stratified_folds(y, 7, groups=groups)
    # one sample or one image: no fold count fits, so none is suggested (was "expected 2..1")
    with pytest.raises(ValueError, match=r"folds: cross-validation needs at least 2 groups "
                                         r"\(source images\), the data has 1; use more data"):
        stratified_folds(y, 2, groups=["one"] * len(y))


def test_paired_differences_fold_by_fold() -> None:
    """ours - theirs per fold: a method a constant 0.05 better on every fold wins every fold
    with no spread, however much the folds differ from each other."""
    from eofm.finetune.report import paired_differences

    def res(accs: list[float]) -> dict:
        folds = [{"accuracy": a} for a in accs]
        return {"linear": {"folds": folds}, "knn": {"10": {"folds": folds}}}

    hard_and_easy = [0.40, 0.90, 0.65, 0.70]
    out = paired_differences({"pretrained": res([a + 0.05 for a in hard_and_easy]),
                              "random_init": res(hard_and_easy),
                              "band_stats": res([0.45, 0.95, 0.60, 0.80])}, "class",
                             ["random_init", "band_stats"])
    lin = out["random_init"]["linear"]
    assert lin["mean"] == pytest.approx(0.05) and lin["std"] == pytest.approx(0.0, abs=1e-12)
    assert (lin["won"], lin["tied"], lin["lost"]) == (4, 0, 0)
    bs = out["band_stats"]["linear"]
    assert (bs["won"], bs["tied"], bs["lost"]) == (1, 2, 1) and bs["min"] == pytest.approx(-0.05)
    assert out["band_stats"]["knn"]["10"] == bs and out["band_stats"]["metric"] == "accuracy"


def test_cross_validate_deterministic() -> None:
    x, y = clusters(60, 3, 8)
    feats = {"pretrained": x, "band_stats": x[:, :4]}
    a = cross_validate(feats, y, "class", 3, 3, seed=0)
    b = cross_validate(feats, y, "class", 3, 3, seed=0)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["pretrained"]["linear"]["accuracy"]["mean"] == 1.0
    assert set(a["pretrained"]["knn"]) == {"10", "20"}


# ---------------------------------------------------------------- contract-driven preprocessing
def make_data(x: np.ndarray, y: np.ndarray, bands: list[str], *, gsd: float = 10.0,
              sensor: str = "s2_l1c") -> LabelledData:
    """In-memory labelled data with the given band order and its own statistics."""
    stats = {b: {"mean": float(x[:, i].mean()), "std": float(x[:, i].std())}
             for i, b in enumerate(bands)}
    info = ModalityInfo(sensor, list(bands), str(x.dtype), list(x.shape[1:]),
                        [0.0] * len(bands), gsd, stats)
    classes = [f"c{i}" for i in range(int(y.max()) + 1)]
    m = Manifest(modalities={"s2": info}, labels=LabelInfo("class", classes))
    return LabelledData(source="memory", modality="s2", manifest=m, labels=y,
                        keys=[str(i) for i in range(len(y))], pixels=lambda i: x[i])


def contract_for(bands: list[str], **kw) -> InputContract:
    """A full contract with per-band statistics unlike any dataset's own."""
    stats = {b: {"mean": 1000.0 + 100 * i, "std": 300.0 + 10 * i} for i, b in enumerate(bands)}
    base = dict(sensors=("s2_l1c",), bands=bands, gsd=10.0, units="DN (x 0.0001 = physical)",
                processing_level="L1C", nodata=0.0, normalisation="meanstd", stats=stats,
                input_size=(16, 16), patch_size=8)
    return InputContract(**{**base, **kw})


BANDS = ["B02", "B03", "B04"]


@pytest.fixture(scope="module")
def pixels() -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 16, 16) uint16 pixels in BANDS order, and labels."""
    rng = np.random.default_rng(0)
    return rng.integers(1, 4000, (12, 3, 16, 16)).astype(np.uint16), np.arange(12) % 3


def encoder_for(contract: InputContract) -> torch.nn.Module:
    """A tiny ViT tied to the contract's bands."""
    torch.manual_seed(0)
    return create_model("vit_test_patch8", bands=list(contract.bands), img_size=16,
                        contract=contract)


def test_band_order_fixed_by_name(pixels) -> None:
    x, y = pixels
    contract = contract_for(BANDS)
    enc = encoder_for(contract)
    ok = make_data(x, y, BANDS)
    order = [2, 0, 1]  # B04, B02, B03 plus an extra band the contract does not name
    extra = np.concatenate([x[:, order], x[:, :1] + 7], axis=1)
    shuffled = make_data(extra, y, [BANDS[i] for i in order] + ["B08"])
    pre_ok, pre_sh = apply_contract(ok, contract), apply_contract(shuffled, contract)
    assert pre_sh.bands == BANDS and pre_sh.index == [1, 2, 0]
    assert any("different band order" in f for f in pre_sh.fixed)
    assert any("unexpected band(s) ['B08']" in f for f in pre_sh.fixed)
    f_ok, _ = extract_features(enc, ok, pre_ok, progress=False)
    f_sh, _ = extract_features(enc, shuffled, pre_sh, progress=False)
    np.testing.assert_array_equal(f_ok, f_sh)
    # normalised with the CONTRACT's statistics, not the dataset's
    out = pre_sh(extra[:2]).numpy()
    mean = np.array([contract.stats[b]["mean"] for b in BANDS])[None, :, None, None]
    std = np.array([contract.stats[b]["std"] for b in BANDS])[None, :, None, None]
    np.testing.assert_allclose(out, (x[:2].astype(np.float64) - mean) / std, rtol=1e-5)


def test_missing_band_refused_even_with_override(pixels) -> None:
    x, y = pixels
    data = make_data(x[:, :2], y, BANDS[:2])
    for override in (False, True):
        with pytest.raises(ValueError, match=r"missing band\(s\) \['B04'\]"):
            apply_contract(data, contract_for(BANDS), override=override)


def spectral_contract(bands: list[str], sensor: str = "s2_l1c", **kw) -> InputContract:
    """:func:`contract_for` with the sensor's spectra, as a spectral encoder's export has."""
    from eofm.data_shards.sensors import get_sensor

    table = [get_sensor(sensor).band(b) for b in bands]
    return contract_for(bands, wavelengths=[b.center_wavelength_nm for b in table],
                        bandwidths=[b.bandwidth_nm for b in table], **kw)


def spectral_encoder(contract: InputContract) -> torch.nn.Module:
    """A tiny ViT with the spectral tokenizer (any bands), trained on the contract's bands."""
    torch.manual_seed(0)
    return create_model("vit_test_patch8", tokenizer="spectral", img_size=16, contract=contract)


def test_a_spectral_encoder_is_fed_the_contract_bands_the_data_has(pixels) -> None:
    """A spectral encoder takes any of its bands: data lacking one (B08) is fed the others, in
    the contract's order, each with its own contract statistics, wavelength and bandwidth; the
    missing band is a note. A data band the contract does not know (B05, no statistics) is
    not fed. A fixed-band encoder with the same contract still refuses the data."""
    x, y = pixels
    contract = spectral_contract([*BANDS, "B08"])
    enc = spectral_encoder(contract)
    order = [2, 0, 1]  # B04, B02, B03, plus B05
    data = make_data(np.concatenate([x[:, order], x[:, :1] + 7], axis=1), y,
                     [BANDS[i] for i in order] + ["B05"])
    pre = apply_contract(data, enc.contract)
    assert pre.bands == BANDS and pre.index == [1, 2, 0]
    (note,) = [n for n in pre.notes if "absent from the data" in n]
    assert note.startswith("contract band(s) ['B08'] absent") and "3 of its 4 bands" in note
    assert any("unexpected band(s) ['B05']" in f for f in pre.fixed)
    sub = contract.subset(BANDS)
    assert (pre.wavelengths, pre.bandwidths) == (list(sub.wavelengths), list(sub.bandwidths))
    assert pre.shift == [sub.stats[b]["mean"] for b in BANDS]
    assert pre.scale == [sub.stats[b]["std"] for b in BANDS]
    seen = []
    hook = enc.tokenizer.register_forward_pre_hook(
        lambda _m, args, kw: seen.append((args[0].shape[1], kw["wavelengths"],
                                          kw["bandwidths"])), with_kwargs=True)
    try:
        feats, _ = extract_features(enc, data, pre, progress=False)
    finally:
        hook.remove()
    wl, bw = torch.tensor(sub.wavelengths), torch.tensor(sub.bandwidths)
    assert seen and all(c == 3 and torch.equal(w, wl) and torch.equal(b, bw) for c, w, b in seen)
    shift = torch.tensor(pre.shift)[None, :, None, None]
    scale = torch.tensor(pre.scale)[None, :, None, None]
    with torch.no_grad():  # the encoder called directly on the three bands and their spectra
        ref = enc((torch.from_numpy(x.astype(np.float32)) - shift) / scale, wavelengths=wl,
                  bandwidths=bw)
    np.testing.assert_allclose(feats, ref.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"missing band\(s\) \['B08'\]"):
        apply_contract(data, encoder_for(contract).contract)


def test_a_spectral_encoder_refuses_data_with_none_of_its_bands(pixels) -> None:
    x, y = pixels
    enc = spectral_encoder(spectral_contract(BANDS))
    data = make_data(x, y, ["B05", "B06", "B07"])
    for override in (False, True):
        with pytest.raises(ValueError, match=r"\['B05', 'B06', 'B07'\] \(s2_l1c\) include "
                                             r"none of the contract's \['B02', 'B03', 'B04'\]"):
            apply_contract(data, enc.contract, override=override)


def test_wrong_size_refused_or_overridden(pixels) -> None:
    x, y = pixels
    data = make_data(x[..., :12, :12], y, BANDS)  # 12 px: no patch-8 grid
    contract = contract_for(BANDS, input_size=None)
    with pytest.raises(ValueError, match=r"size \(12, 12\) is not a multiple of the patch "
                                         r"size 8.*--override-contract"):
        apply_contract(data, contract)
    pre = apply_contract(data, contract, override=True)
    assert any("not a multiple of the patch size" in p for p in pre.overridden)
    assert pre.size == (16, 16)
    feats, _ = extract_features(encoder_for(contract), data, pre, progress=False)
    assert feats.shape == (12, 64) and np.isfinite(feats).all()
    # with an input size in the contract the tile is simply resized to it
    pre = apply_contract(data, contract_for(BANDS))
    assert pre.size == (16, 16) and any("resized (12, 12) -> (16, 16)" in f for f in pre.fixed)
    assert pre(x[:1, :, :12, :12]).shape == (1, 3, 16, 16)


def gsd_notes(pre) -> list[str]:
    """The preprocessing's notes about GSD (the statistics always differ here, by design)."""
    return [n for n in pre.notes if "GSD" in n]


def test_gsd_difference_is_a_note_not_a_refusal(pixels) -> None:
    x, y = pixels
    data = make_data(x, y, BANDS, gsd=30.0)  # 16 px tiles, the contract's size: not resized
    pre = apply_contract(data, contract_for(BANDS))
    assert gsd_notes(pre) == ["different GSD: the contract expects 10 m, the batch has 30 m "
                              "(at its own 30 m, not resized)"]
    assert pre.overridden == [] and pre.gsd == 30.0
    # the same note with --override-contract: it is never an overridden refusal
    pre = apply_contract(data, contract_for(BANDS), override=True)
    assert pre.overridden == [] and len(gsd_notes(pre)) == 1


def test_gsd_is_compared_after_resizing(pixels) -> None:
    """EuroSAT-style: 16 px at 10 m resized to the contract's 32 px is fed at 5 m; 16 px at
    20 m resized to 32 px is fed at exactly the contract's 10 m (no note, though the dataset's
    own GSD differs); a contract with no GSD never notes one."""
    x, y = pixels
    pre = apply_contract(make_data(x, y, BANDS, gsd=10.0), contract_for(BANDS, input_size=(32, 32)))
    assert pre.size == (32, 32) and pre.gsd == 5.0
    assert gsd_notes(pre) == ["different GSD: the contract expects 10 m, the batch has 5 m "
                              "(16 x 16 px at 10 m resized to 32 x 32 px)"]
    pre = apply_contract(make_data(x, y, BANDS, gsd=20.0), contract_for(BANDS, input_size=(32, 32)))
    assert pre.gsd == 10.0 and gsd_notes(pre) == []
    # downsampling: 16 px at 10 m fed at 8 px = 20 m, against an encoder trained at 40 m
    pre = apply_contract(make_data(x, y, BANDS), contract_for(BANDS, gsd=40.0, input_size=(8, 8)))
    assert gsd_notes(pre) == ["different GSD: the contract expects 40 m, the batch has 20 m "
                              "(16 x 16 px at 10 m resized to 8 x 8 px)"]
    for size in ((8, 8), (16, 16), (32, 32)):
        pre = apply_contract(make_data(x, y, BANDS, gsd=30.0),
                             contract_for(BANDS, gsd=None, input_size=size))
        assert not any("GSD" in n for n in [*pre.notes, *pre.fixed, *pre.overridden])


def test_statistics_refused_or_overridden(pixels) -> None:
    x, y = pixels
    nostats = contract_for(BANDS, stats=None)
    with pytest.raises(ValueError, match="statistics absent"):
        apply_contract(make_data(x, y, BANDS), nostats)
    pre = apply_contract(make_data(x, y, BANDS), nostats, override=True)
    assert any("dataset's own statistics" in n for n in pre.notes)
    assert pre.shift == pytest.approx([float(x[:, i].mean()) for i in range(3)])


def test_nodata_pixels_become_zero(pixels) -> None:
    x, y = pixels
    x = x.copy()
    x[0, 1, 3, 4] = 0  # nodata in one band masks the pixel in every band
    out = apply_contract(make_data(x, y, BANDS), contract_for(BANDS))(x[:1])
    assert (out[0, :, 3, 4] == 0).all() and (out[0, :, 3, 5] != 0).all()


def test_pools_and_batch_invariance(pixels) -> None:
    x, y = pixels
    contract = contract_for(BANDS)
    enc, data = encoder_for(contract), make_data(x, y, BANDS)
    pre = apply_contract(data, contract)
    cls, labels = extract_features(enc, data, pre, pool="cls", batch_size=5, progress=False)
    assert cls.shape == (12, 64) and np.array_equal(labels, y)
    cls64, _ = extract_features(enc, data, pre, pool="cls", batch_size=64, progress=False)
    np.testing.assert_allclose(cls, cls64, atol=1e-5)
    last1, _ = extract_features(enc, data, pre, pool="lastn", n=1, progress=False)
    np.testing.assert_allclose(last1, cls64, atol=1e-6)  # last block's normed class token
    last2, _ = extract_features(enc, data, pre, pool="lastn", n=2, progress=False)
    mean, _ = extract_features(enc, data, pre, pool="mean", progress=False)
    assert last2.shape == (12, 128) and mean.shape == (12, 64)
    assert not np.allclose(mean, cls64)
    with pytest.raises(ValueError, match="pool: expected one of"):
        extract_features(enc, data, pre, pool="max", progress=False)


def test_band_stats_features(pixels) -> None:
    """The baseline is each band's mean and std (band-major); p10/p90 only when asked."""
    x, y = pixels
    data = make_data(x, y, BANDS)
    feats = band_stats_features(data, ["B03", "B02"])
    valid = x[:, [1, 0]].reshape(12, 2, -1).astype(np.float64)
    assert feats.shape == (12, 4)
    np.testing.assert_allclose(feats[:, 0::2], valid.mean(2), rtol=1e-5)
    np.testing.assert_allclose(feats[:, 1::2], valid.std(2), rtol=1e-5)
    more = band_stats_features(data, ["B03"], percentiles=True)
    assert more.shape == (12, 4)
    np.testing.assert_allclose(more[:, :2], feats[:, :2], rtol=1e-6)
    np.testing.assert_allclose(more[:, 3], np.percentile(valid[:, 0], 90, axis=1), rtol=1e-5)


# ---------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, eurosat_folder) -> tuple[Path, Path, Path]:
    """A synthetic EuroSAT folder, a matching tiny export and one whose GSD differs."""
    root = tmp_path_factory.mktemp("probe")
    src = eurosat_folder(root / "eurosat")
    data = open_labelled(src, progress=False)
    bands = [b for b in data.bands if b != "B10"]
    stats = {b: {k: data.stats[b][k] for k in ("mean", "std")} for b in bands}
    exports = []
    for name, gsd in (("enc", 10.0), ("enc_gsd20", 20.0)):
        contract = contract_for(bands, stats=stats, gsd=gsd)
        exports.append(save_pretrained(encoder_for(contract), root / name))
    return src, exports[0], exports[1]


def test_cli_end_to_end(cli_setup, tmp_path: Path, capsys) -> None:
    src, enc, _ = cli_setup
    out = tmp_path / "report"
    assert main(["--encoder", str(enc), "--data", str(src), "--out", str(out),
                 "--folds", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for word in ("pretrained", "random_init", "band_stats", "linear top-1", "kNN-10", "kNN-20"):
        assert word in printed
    report = json.loads((out / "report.json").read_text())
    for method in ("pretrained", "random_init", "band_stats"):
        r = report[method]
        for metric in ("accuracy", "balanced_accuracy"):
            assert set(r["linear"][metric]) == {"mean", "std"}
            assert 0.0 <= r["linear"][metric]["mean"] <= 1.0
            for k in ("10", "20"):
                assert set(r["knn"][k][metric]) == {"mean", "std"}
        assert len(r["linear"]["folds"]) == 3
    # brightness separates: 23 of 24 (its 12 std features are noise to a 16-sample fit)
    assert report["band_stats"]["linear"]["accuracy"]["mean"] >= 0.95
    assert report["data"]["samples"] == 24 and report["override_contract"] is False
    assert "B10" not in report["preprocess"]["bands"]
    assert (out / "report.md").read_text().startswith("# eofm-probe report")
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["confusion_png"] == "confusion.png"
    assert report["band_stats_features"] == ["mean", "std"]
    assert report["feature_dim"]["band_stats"] == 2 * len(report["preprocess"]["bands"])
    # the encoder's weights digest, for eofm-export --evaluation to check
    assert report[WEIGHTS_DIGEST] == weights_digest(from_pretrained(enc))
    # the confusion picture is labelled with the class names
    drawn = confusion_png(report["pretrained"]["linear"]["confusion"], tmp_path / "c.png",
                          report["data"]["classes"])
    assert read_png(out / "confusion.png").shape[:2] == drawn["size"]
    assert drawn["labels"] == [c[:16] + ".." if len(c) > 18 else c
                               for c in report["data"]["classes"]]


def test_confusion_png_has_class_names_axes_and_a_scale(tmp_path: Path) -> None:
    """Class names on both axes (long ones cut), percentages in cells where they fit, and the
    picture grows with the names; many classes give small type and colour-only cells."""
    m = [[30, 2, 0], [5, 20, 1], [0, 0, 0]]
    bare = confusion_png(m, tmp_path / "a.png")  # the old call: the classes' indices
    assert bare["labels"] == ["0", "1", "2"] and bare["cell_text"]
    named = confusion_png(m, tmp_path / "b.png", ["AnnualCrop", "HerbaceousVegetation", "Sea"])
    assert named["labels"] == ["AnnualCrop", "HerbaceousVegeta..", "Sea"]
    assert named["size"][0] > bare["size"][0] and named["size"][1] >= bare["size"][1]
    ten = np.eye(10, dtype=int) * 5 + 1
    names = [f"land cover class {i}" for i in range(10)]
    wide = confusion_png(ten, tmp_path / "n.png", names)
    narrow = confusion_png(ten, tmp_path / "i.png")
    assert wide["size"][0] > narrow["size"][0] and wide["size"][1] > narrow["size"][1]
    assert read_png(tmp_path / "b.png").shape[:2] == named["size"]
    assert named["size"][0] > 3 * named["cell"] and named["size"][1] > 3 * named["cell"]
    many = confusion_png(np.eye(80, dtype=int), tmp_path / "c.png")
    assert many["scale"] == 1 and not many["cell_text"] and many["cell"] < named["cell"]
    assert confusion_png(m, tmp_path / "d.png", ["a", "b"])["labels"] == ["a", "b", "2"]


def test_cross_validation_shows_progress_unless_quiet(capsys) -> None:
    x, y = clusters(60, 3, 4)
    feats = {"a": x, "b": x[:, ::-1].copy()}
    cross_validate(feats, y, "class", 3, 2, 0, ks=(5,), progress=True)
    assert "cross-validation" in capsys.readouterr().err
    cross_validate(feats, y, "class", 3, 2, 0, ks=(5,))
    assert "cross-validation" not in capsys.readouterr().err


def test_cli_notes_a_gsd_difference(cli_setup, tmp_path: Path, capsys) -> None:
    """A GSD difference is evaluated and reported as a note (printed, JSON and markdown)."""
    src, _, enc20 = cli_setup
    args = ["--encoder", str(enc20), "--data", str(src), "--out", str(tmp_path / "r"),
            "--folds", "2", "--quiet"]
    assert main(args) == 0
    note = ("different GSD: the contract expects 20 m, the batch has 10 m "
            "(at its own 10 m, not resized)")
    assert f"note: {note}" in capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["override_contract"] is False
    assert note in report["preprocess"]["notes"] and report["preprocess"]["overridden"] == []
    md = (tmp_path / "r" / "report.md").read_text()
    assert note in md and "OVERRIDDEN" not in md


def test_cli_probes_a_spectral_export_on_a_subset_of_its_bands(cli_setup, tmp_path: Path,
                                                               capsys) -> None:
    """A spectral encoder exported with S2 + S1 bands, probed on S2-only EuroSAT data: it is
    fed the 12 S2 bands it has; VV and VH, absent, are a note in the report, not a refusal."""
    from eofm.models.tokenizers import sar_stand_in

    src, enc, _ = cli_setup
    bands = list(from_pretrained(enc).contract.bands)
    s2 = spectral_contract(bands, stats=from_pretrained(enc).contract.stats)
    sar_wl, sar_bw = sar_stand_in(["VV", "VH"])
    contract = InputContract(**{
        **s2.to_dict(), "sensors": ["s2_l1c", "s1_grd"], "bands": [*s2.bands, "VV", "VH"],
        "wavelengths": [*s2.wavelengths, *sar_wl.tolist()],
        "bandwidths": [*s2.bandwidths, *sar_bw.tolist()],
        "stats": {**s2.stats, "VV": {"mean": -12.0, "std": 4.0}, "VH": {"mean": -19.0, "std": 4.0}}})
    export = save_pretrained(spectral_encoder(contract), tmp_path / "spectral")
    out = tmp_path / "r"
    assert main(["--encoder", str(export), "--data", str(src), "--out", str(out), "--folds", "2",
                 "--quiet"]) == 0
    pre = json.loads((out / "report.json").read_text())["preprocess"]
    assert pre["bands"] == list(s2.bands) and pre["wavelengths"] == list(s2.wavelengths)
    (note,) = [n for n in pre["notes"] if "absent from the data" in n]
    assert note.startswith("contract band(s) ['VV', 'VH'] absent") and "12 of its 14" in note
    assert f"note: {note}" in capsys.readouterr().out and note in (out / "report.md").read_text()


def test_a_spectral_adapter_fed_fewer_bands_than_it_reduces_to_is_noted(pixels) -> None:
    """An adapter (a reducer to out_bands) trained on more bands passes fewer through
    unchanged: the tokenizer then meets the bands' own, narrower widths, which pretraining
    never fed it, and the report says so; fed at least out_bands, nothing is noted."""
    from eofm.finetune.features import note_adapter_bypass

    x, y = pixels
    contract = spectral_contract([*BANDS, "B08"])
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer="spectral", img_size=16, contract=contract,
                       tokenizer_kwargs={"adapter": {"out_bands": 4}})
    pre = apply_contract(make_data(x, y, BANDS), enc.contract)  # 3 of the 4 bands
    note_adapter_bypass(pre, enc)
    (note,) = [n for n in pre.notes if n.startswith("spectral adapter bypassed")]
    assert "reduces its 4 contract bands to 4, but the 3 bands fed are fewer" in note
    full = apply_contract(make_data(np.concatenate([x, x[:, :1]], axis=1), y,
                                    [*BANDS, "B08"]), enc.contract)
    note_adapter_bypass(full, enc)
    assert not [n for n in full.notes if n.startswith("spectral adapter")]
    plain = spectral_encoder(contract)  # no adapter: nothing to bypass
    pre = apply_contract(make_data(x, y, BANDS), plain.contract)
    note_adapter_bypass(pre, plain)
    assert not [n for n in pre.notes if n.startswith("spectral adapter")]


def test_cli_refuses_then_overrides(cli_setup, tmp_path: Path, capsys) -> None:
    src, _, _ = cli_setup
    data = open_labelled(src, progress=False)
    contract = contract_for([b for b in data.bands if b != "B10"], stats=None)
    nostats = save_pretrained(encoder_for(contract), tmp_path / "nostats")
    args = ["--encoder", str(nostats), "--data", str(src), "--out", str(tmp_path / "r"),
            "--folds", "2", "--quiet"]
    assert main(args) == 2
    assert "statistics absent" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.json").exists()
    assert main([*args, "--override-contract"]) == 0
    assert "OVERRIDDEN contract difference: statistics absent" in capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["override_contract"] is True
    assert any("statistics absent" in p for p in report["preprocess"]["overridden"])
    assert "OVERRIDDEN" in (tmp_path / "r" / "report.md").read_text()


def test_cli_multilabel_shards(cli_setup, sample_data: Path, tmp_path: Path, capsys) -> None:
    from eofm.data_shards.build import BuildConfig, build

    _, enc, _ = cli_setup
    shards = tmp_path / "ben"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(shards), progress=False))
    out = tmp_path / "r"
    out.mkdir()
    (out / "confusion.png").write_bytes(b"\x89PNG stale, of an earlier single-label report")
    assert main(["--encoder", str(enc), "--data", str(shards), "--out", str(out), "--folds", "2",
                 "--pool", "mean", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "linear micro-mAP" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["kind"] == "multilabel" and report["data"]["modality"] == "s2"
    assert report["confusion_png"] is None and not (out / "confusion.png").exists()
    assert report["data"]["samples"] == 6
    pre = report["preprocess"]
    assert any("resized (120, 120) -> (16, 16)" in f for f in pre["fixed"])
    assert any("different processing_level" in n for n in pre["notes"])  # L2A data, L1C contract
    for method in ("pretrained", "random_init", "band_stats"):
        for metric in ("micro_map", "macro_map"):
            assert 0.0 <= report[method]["linear"][metric]["mean"] <= 1.0
        assert set(report[method]["knn"]["10"]["micro_map"]) == {"mean", "std"}
        assert set(report[method]["knn"]["10"]["macro_map"]) == {"mean", "std", "folds_scored"}
    fold = report["pretrained"]["linear"]["folds"][0]  # 43 classes, 3 samples: most absent
    assert fold["macro_left_out_no_positive"] > 0
    assert fold["macro_map_classes"] + fold["macro_left_out_no_positive"] + \
        fold["macro_left_out_no_negative"] == len(report["data"]["classes"])
    assert "note: macro-mAP averages only classes with both" in printed


def test_pretraining_contract_accepts_its_own_data(tmp_path: Path, eurosat_folder) -> None:
    """The contract pretraining writes for a dataset takes that dataset with nothing to note."""
    from eofm.data_shards.build import BuildConfig, build
    from eofm.data_shards.manifest import load_manifest
    from eofm.pretrain.data import band_info, input_contract

    src = eurosat_folder(tmp_path / "eurosat", classes=2, per_class=3)
    shards = tmp_path / "shards"
    build(BuildConfig(str(src), str(shards), progress=False))
    manifest = load_manifest(shards)
    info = band_info(manifest, "s2", None)
    enc = create_model("vit_test_patch8", bands=info.bands, img_size=16)
    contract = input_contract("mae", info, manifest, enc, str(shards))
    pre = apply_contract(open_labelled(shards), contract)
    assert (pre.fixed, pre.notes, pre.overridden) == ([], [], [])
    assert pre.bands == info.bands and pre.size == (16, 16)
    assert pre.shift == pytest.approx(info.shift.tolist())



def test_pooled_labelled_data_is_checked_sensor_by_sensor() -> None:
    """Labelled data pooled from L1C and L2A inputs reports both: its level is "L1C+L2A"; an
    L1C-only encoder notes the L2A part (sensor and level); an L1C+L2A encoder notes nothing."""
    rng = np.random.default_rng(0)
    x = rng.integers(100, 3000, (12, 3, 16, 16)).astype(np.uint16)
    data = make_data(x, np.arange(12) % 3, BANDS)
    data.sensors = ["s2_l1c", "s2_l2a"]  # as a pooled manifest's sensor_ids give it
    assert data.processing_level == "L1C+L2A"
    notes = apply_contract(data, contract_for(BANDS)).notes
    assert any("different sensor: the contract names ['s2_l1c'], the data is pooled from "
               "['s2_l1c', 's2_l2a']" in n for n in notes), notes
    assert any("different processing_level: the contract expects 'L1C', the batch has "
               "'L1C+L2A'" in n for n in notes), notes
    both = contract_for(BANDS, sensors=("s2_l1c", "s2_l2a"), processing_level="L1C+L2A")
    assert not [n for n in apply_contract(data, both).notes
                if "sensor" in n or "processing_level" in n]
    pooled_manifest = ModalityInfo("s2_l1c", BANDS, "uint16", [3, 16, 16], [0.0] * 3, 10.0,
                                   data.stats, sensors=["s2_l1c", "s2_l2a"])
    m = Manifest(modalities={"s2": pooled_manifest}, labels=LabelInfo("class", ["a", "b", "c"]))
    read = LabelledData(source="memory", modality="s2", manifest=m, labels=np.arange(12) % 3,
                        keys=[str(i) for i in range(12)], pixels=lambda i: x[i])
    assert read.sensors == ["s2_l1c", "s2_l2a"] and read.processing_level == "L1C+L2A"


def test_cli_random_init_over_several_seeds(cli_setup, tmp_path: Path, capsys) -> None:
    """--random-seeds 3: random_init stays seed SEED's (the same as a one-seed run), and the
    range row covers exactly the three per-seed means."""
    src, enc, _ = cli_setup
    base = ["--encoder", str(enc), "--data", str(src), "--folds", "3", "--quiet", "--seed", "2"]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--out", str(tmp_path / "three"), "--random-seeds", "3"]) == 0
    printed = capsys.readouterr().out
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    three = json.loads((tmp_path / "three" / "report.json").read_text())
    assert "random_init_seeds" not in one and "random_init x3 (range)" in printed
    assert three["random_init"]["linear"] == one["random_init"]["linear"]
    seeds = three["random_init_seeds"]
    assert seeds["seeds"] == [2, 3, 4]
    acc = seeds["linear"]["accuracy"]
    assert acc["per_seed"][0] == one["random_init"]["linear"]["accuracy"]["mean"]
    assert (acc["min"], acc["max"]) == (min(acc["per_seed"]), max(acc["per_seed"]))
    knn10 = seeds["knn"]["10"]["accuracy"]["per_seed"]
    assert len(knn10) == 3 and not any(k.startswith("random_init@") for k in three)
    assert "random_init x3 (range)" in (tmp_path / "three" / "report.md").read_text()
    # fold by fold against every random seed and the band statistics, on the same folds
    paired = three["paired"]
    assert list(paired) == ["random_init", "random_init@3", "random_init@4", "band_stats"]
    for ref in ("random_init", "band_stats"):
        ours = [f["accuracy"] for f in three["pretrained"]["linear"]["folds"]]
        theirs = [f["accuracy"] for f in three[ref]["linear"]["folds"]]
        diff = np.subtract(ours, theirs)
        lin = paired[ref]["linear"]
        assert lin["mean"] == pytest.approx(diff.mean()) and lin["min"] == pytest.approx(diff.min())
        assert lin["won"] + lin["tied"] + lin["lost"] == 3
        assert lin["won"] == int((diff > 1e-9).sum())
        assert f"pretrained - {ref}, fold by fold (linear top-1): {lin['mean']:+.3f}" in printed
    assert set(paired["band_stats"]["knn"]) == {"10", "20"}
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "none"), "--random-seeds", "0"])
    assert "--random-seeds: expected at least 1, got 0" in capsys.readouterr().err


def test_random_seeds_are_in_number_order_for_the_pairs_and_the_range() -> None:
    """Seeds 2 and 10: ``random_init@2`` comes before ``@10`` (not text order) in the keys the
    paired differences are listed by and in the seed range, so the two agree."""
    def scores(v: float) -> dict:
        one = {"accuracy": {"mean": v}, "balanced_accuracy": {"mean": v}}
        return {"linear": one, "knn": {"10": one}}

    results = {"pretrained": scores(0.9), "random_init": scores(0.1),
               "random_init@10": scores(0.3), "random_init@2": scores(0.2)}
    assert random_seed_keys(results) == ["random_init@2", "random_init@10"]
    seeds = random_seed_range(results, "class", 1)
    assert seeds is not None and seeds["seeds"] == [1, 2, 10]
    assert seeds["linear"]["accuracy"]["per_seed"] == [0.1, 0.2, 0.3]
    assert list(results) == ["pretrained", "random_init"]  # the further seeds were popped


def test_model_card_shows_a_13_band_probe_report(cli_setup, tmp_path: Path, capsys) -> None:
    """An export's card built from eofm-probe's report.json of a 13-band encoder shows the
    probe's table (every method, linear and kNN, mean ± std: 13 bands' statistics in the
    report must not crowd out the baselines) and no local absolute path."""
    from eofm.finetune.report import table_rows

    src, _, _ = cli_setup
    data = open_labelled(src, progress=False)
    assert len(data.bands) == 13
    stats = {b: {k: data.stats[b][k] for k in ("mean", "std")} for b in data.bands}
    enc = save_pretrained(encoder_for(contract_for(data.bands, stats=stats)), tmp_path / "enc13")
    out = tmp_path / "r"
    assert main(["--encoder", str(enc), "--data", str(src), "--out", str(out), "--folds", "2",
                 "--random-seeds", "2", "--quiet"]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    card = (save_pretrained(from_pretrained(enc), tmp_path / "card",
                            card={"evaluation": report}) / "README.md").read_text()
    section = card.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    header, rows = table_rows(report)
    # 2 folds of 24 samples: 12 training samples, so kNN-20 used k=12 and its column says so
    assert len(header) == 5 and header[-1] == "kNN-20 (k=12) top-1"
    for row, name in zip(rows, ("This encoder", "Random init", "Band statistics (per-band "
                                "mean, std", "Random init, 2 seeds"), strict=True):
        line = next((x for x in lines if x.startswith(f"| {name}")), None)
        assert line is not None, (name, section)
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert cells == row[1:], (name, cells, row)  # linear top-1, bal-acc, kNN-10, kNN-20
    for local in (str(tmp_path), str(src), str(enc)):
        assert local not in card
    assert "more values in the evaluation report" not in card
    lin = report["paired"]["band_stats"]["linear"]  # the fold-by-fold differences too
    assert (f"- minus `band_stats`: {lin['mean']:+.3f} ± {lin['std']:.3f}; won {lin['won']}, "
            f"tied {lin['tied']}, lost {lin['lost']} of 2 folds") in section
    assert "- minus `random_init@1`:" in section


def test_a_mistyped_export_folder_is_named_not_a_hub_traceback(offline_hub, tmp_path: Path,
                                                                monkeypatch, capsys) -> None:
    """``--encoder exports/quickstartt`` (no such folder; ``exports`` is one, so not a Hub repo
    id): a ValueError naming the argument and what the folder holds, and exit status 2; a Hub
    id the offline, empty cache cannot give is named with the Hub's reason."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exports" / "quickstart").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"'exports/quickstartt': no such export folder; "
                                         r"'exports' is a folder here and holds \[quickstart\]"):
        from_pretrained("exports/quickstartt")
    for repo in ("hf-hub:exports/quickstartt", "someorg/quickstartt"):
        with pytest.raises(ValueError, match=rf"'{repo}': no local folder of that name, and the "
                                             r"Hub repo '[\w/]+' could not be read \(\w+"):
            from_pretrained(repo)
    assert main(["--encoder", "exports/quickstartt", "--data", str(tmp_path), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eofm-probe: error: 'exports/quickstartt': no such export folder")
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_cli_fixed_test_set(cli_setup, tmp_path: Path, capsys, eurosat_folder) -> None:
    """--test-data: probes fit on --data and are scored once on the other set (of other
    images: one sharing --data's is refused, test_test_set_overlap.py); a test set of
    another task is refused."""
    src, enc, _ = cli_setup
    test = eurosat_folder(tmp_path / "test", per_class=4, seed=1, tag="other")
    out = tmp_path / "r"
    assert main(["--encoder", str(enc), "--data", str(src), "--test-data", str(test), "--out",
                 str(out), "--quiet"]) == 0
    assert "fixed test set" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == f"fixed test set {test}" and report["folds"] == 1
    assert report["test_data"]["samples"] == 12 and report["data"]["samples"] == 24
    for method in ("pretrained", "random_init", "band_stats"):
        assert len(report[method]["linear"]["folds"]) == 1
        assert report[method]["knn"]["10"]["accuracy"]["std"] == 0.0
    assert sum(map(sum, report["pretrained"]["linear"]["confusion"])) == 12  # the test set's
    assert report["band_stats"]["linear"]["accuracy"]["mean"] >= 0.9  # brightness separates
    assert "scored once on the fixed test set" in (out / "report.md").read_text()
    card = (save_pretrained(from_pretrained(enc), tmp_path / "card",
                            card={"evaluation": report}) / "README.md").read_text()
    intro = card.split("## Evaluation", 1)[1].split("\n\n", 2)[1]
    assert "scored on a fixed test set" in intro and "over folds" not in intro, intro
    # a split built apart lists only its own classes: labels matched to --data's by name
    sub = eurosat_folder(tmp_path / "sub", classes=3, per_class=4, seed=1, tag="other")
    (sub / "Class0").rename(tmp_path / "gone")  # this split holds Class1 and Class2 only
    assert main(["--encoder", str(enc), "--data", str(src), "--test-data", str(sub), "--out",
                 str(tmp_path / "r2"), "--quiet"]) == 0
    capsys.readouterr()
    r2 = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert r2["test_data"]["class_counts"] == [0, 4, 4]  # in --data's class order
    confusion = np.asarray(r2["band_stats"]["linear"]["confusion"])  # rows: true class
    assert confusion.sum(axis=1).tolist() == [0, 4, 4]  # Class1 and Class2 in their own rows
    assert np.trace(confusion) >= 7  # brightness separates: remapped to the right classes
    (sub / "Class1").rename(sub / "Class7")
    assert main(["--encoder", str(enc), "--data", str(src), "--test-data", str(sub), "--out",
                 str(tmp_path / "r3"), "--quiet"]) == 2
    assert "--test-data classes ['Class7'] are not in --data" in capsys.readouterr().err


def test_cli_label_set_regroups_bigearthnet(cli_setup, sample_data: Path, tmp_path: Path,
                                            capsys) -> None:
    """--label-set bigearthnet19: the 43 CORINE names of the BigEarthNet sample become the 19
    classes papers report, merged by name; class labels are refused."""
    from eofm.data_shards.label_sets import get_label_set
    from eofm.finetune.datasets import open_labelled

    src, enc, _ = cli_setup
    ben = sample_data / "bigearthnet"
    data = open_labelled(ben, modality="s2", progress=False)
    regrouped = data.relabel("bigearthnet19")
    ben19 = get_label_set("bigearthnet19")
    assert regrouped.classes == list(ben19.classes) and regrouped.label_set == "bigearthnet19"
    for row43, row19 in zip(data.labels, regrouped.labels, strict=True):
        want = {ben19.mapping[data.classes[k]] for k in np.flatnonzero(row43)} - {None}
        assert {ben19.classes[j] for j in np.flatnonzero(row19)} == want
    assert "Peatbogs" in data.classes and "Inland wetlands" in {  # a merge the sample holds
        ben19.classes[j] for row in regrouped.labels for j in np.flatnonzero(row)}
    out = tmp_path / "r"
    assert main(["--encoder", str(enc), "--data", str(ben), "--label-set", "bigearthnet19",
                 "--out", str(out), "--folds", "2", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["classes"] == list(ben19.classes)
    assert report["data"]["label_set"] == "bigearthnet19"
    assert "regrouped by the `bigearthnet19` label set" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["--encoder", str(enc), "--data", str(src), "--label-set", "bigearthnet19",
                 "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    assert "regroups multi-labels; this dataset has class labels" in capsys.readouterr().err


# ---------------------------------------------------------------- reviewer findings
def test_cli_s2_offset_refused_for_shards_and_recorded_for_a_raw_folder(
        cli_setup, tmp_path: Path, capsys) -> None:
    """--s2-offset was silently ignored for built shards (their pixels got their offset at
    build time) and report.json did not say which offset was applied: a forced offset the
    build did not apply is refused (status 2) naming the recorded decision, and the report
    records the offset (the raw folder's build record)."""
    from eofm.data_shards.build import BuildConfig, build

    src, enc, _ = cli_setup
    shards = tmp_path / "shards"
    build(BuildConfig(str(src), str(shards), progress=False))
    assert main(["--encoder", str(enc), "--data", str(shards), "--out", str(tmp_path / "r"),
                 "--s2-offset", "-1000", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{shards}: s2_offset '-1000'" in err and "extra.s2_offset" in err, err
    assert "eofm-shard build --s2-offset auto" in err and "offset +0 DN for 24 item(s)" in err
    assert not (tmp_path / "r" / "report.json").exists()
    out = tmp_path / "raw"
    assert main(["--encoder", str(enc), "--data", str(src), "--out", str(out), "--folds", "3",
                 "--s2-offset", "-1000", "--quiet"]) == 0
    applied = json.loads((out / "report.json").read_text())["data"]["s2_offset"]
    assert applied["mode"] == "-1000"
    assert [(g["offset"], g["status"], g["items"]) for g in applied["groups"]] == [
        (-1000, "forced", 24)]


def test_one_source_image_cannot_be_split_by_image() -> None:
    """Tiles of one image stay on one side of a split: a training part of one image's tiles
    cannot give the linear probe a validation slice. It used to crash with "folds: expected
    2..1 (the number of groups), got 2"; now the image is named with the ways out, and
    cross-validation checks every fold's training part up front."""
    from eofm.finetune.probe import check_fold_training

    y = np.array([0, 1, 0, 1])
    one = ["scene"] * 4
    with pytest.raises(ValueError) as e:
        train_val_split(y, np.arange(4), 4, groups=one)
    msg = str(e.value)
    assert "the 4 tile(s) of one source image, 'scene'" in msg and "--no-group-tiles" in msg
    assert "--folds" not in msg  # a fixed split has no folds to lower
    fit, val = train_val_split(y, np.arange(4), 4)  # tile by tile: fine
    assert len(fit) and len(val)
    two = ["a", "a", "b", "b"]
    folds = stratified_folds(y, 2, groups=two)
    with pytest.raises(ValueError, match=r"cross-validation fold 1 of 2: its training part "
                                         r"holds the 2 tile\(s\) of one source image, '[ab]'.*"
                                         r"--no-group-tiles.*more images, or fewer --folds"):
        check_fold_training(folds, 4, two)
    check_fold_training(stratified_folds(y, 2), 4)  # ungrouped: 2 samples train each fold
    feats = {"m": np.random.default_rng(0).normal(size=(4, 3))}
    with pytest.raises(ValueError, match="cross-validation fold 1 of 2"):
        cross_validate(feats, y, "class", 2, 2, 0, groups=two)


def _one_image_tiles(root: Path, image: str, n: int = 4) -> Path:
    """A one-class EuroSAT-layout folder of ``n`` 16 px tiles cut from one image (keys
    ``<image>_r<row>_c<col>``, as ``eofm-shard build --tile`` names them)."""
    import tifffile

    rng = np.random.default_rng(len(image))
    (root / "Class0").mkdir(parents=True)
    for i in range(n):
        tifffile.imwrite(root / "Class0" / f"{image}_r0_c{16 * i}.tif",
                         rng.integers(500, 3000, (16, 16, 13)).astype(np.uint16),
                         photometric="minisblack", planarconfig="contig")
    return root


def test_cli_training_tiles_of_one_image_with_a_fixed_test_set(cli_setup, tmp_path: Path,
                                                                capsys) -> None:
    """--data of one image's tiles with a separate --test-data: refused (status 2) before any
    feature is computed, naming the image and --no-group-tiles (not --folds, which the fixed
    split does not use); with --no-group-tiles the probe runs."""
    _, enc, _ = cli_setup
    data, test = _one_image_tiles(tmp_path / "d", "scene"), _one_image_tiles(tmp_path / "t",
                                                                             "other")
    args = ["--encoder", str(enc), "--data", str(data), "--test-data", str(test), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--data " + str(data) + " holds the 4 tile(s) of one source image, 'Class0_scene'" \
        in err, err
    assert "--no-group-tiles" in err and "folds: expected" not in err and "--folds" not in err
    assert main([*args, "--out", str(tmp_path / "r2"), "--no-group-tiles"]) == 0


def test_help_gives_the_defaults_of_pool_and_batch_size(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default cls)" in text and "(default 64)" in text and "(default 4)" in text


def _tiled_images(root: Path, images: int = 3, tiles: int = 2) -> Path:
    """A two-class EuroSAT-layout folder of 16 px tiles: ``images`` images per class, each cut
    into ``tiles`` tiles (keys ``Class<c>_img<i>_r0_c<col>``, as ``eofm-shard build --tile``
    names them), the tiles of one image alike (as neighbouring, overlapping tiles are)."""
    import tifffile

    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"Class{c}").mkdir(parents=True)
        for i in range(images):
            base = rng.integers(500, 3000, (16, 16, 13)).astype(np.uint16)
            for t in range(tiles):
                tifffile.imwrite(root / f"Class{c}" / f"img{i}_r0_c{16 * t}.tif", base + t,
                                 photometric="minisblack", planarconfig="contig")
    return root


def test_cli_no_group_tiles_is_flagged_in_table_report_and_warning(cli_setup, tmp_path: Path,
                                                                   capsys) -> None:
    """--no-group-tiles over tiles of fewer images puts tiles of one image on both sides of the
    folds (a 0.25 micro-mAP read 0.93 on BigEarthNet tiles): report.json says so
    (group_tiles, source_images), and the table title, report.md and a printed warning flag
    the scores as optimistic; with grouping (the default) nothing is flagged."""
    ungrouped = "tiles of one image on both sides of splits: optimistic"
    _, enc, _ = cli_setup
    src = _tiled_images(tmp_path / "tiles")
    args = ["--encoder", str(enc), "--data", str(src), "--folds", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "ungrouped"), "--no-group-tiles"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "ungrouped" / "report.json").read_text())
    assert report["group_tiles"] is False and report["source_images"] == 6
    assert report["data"]["samples"] == 12 and report["fold_groups"] is None
    title = printed.splitlines()[0]
    assert f"2-fold, {ungrouped}, pool" in title, title
    assert ("WARNING: --no-group-tiles: the 12 samples are tiles of 6 images, split tile by "
            f"tile: {ungrouped}") in printed
    md = (tmp_path / "ungrouped" / "report.md").read_text()
    assert "tile by tile (`--no-group-tiles`)" in md and "**--no-group-tiles: the 12" in md
    assert ungrouped in md
    assert main([*args, "--out", str(tmp_path / "grouped")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "grouped" / "report.json").read_text())
    assert report["group_tiles"] is True and report["fold_groups"] == 6
    assert ungrouped not in printed and "WARNING" not in printed
    assert ungrouped not in (tmp_path / "grouped" / "report.md").read_text()


def test_untiled_data_without_grouping_is_not_flagged(cli_setup, tmp_path: Path,
                                                      capsys) -> None:
    """--no-group-tiles on samples that are each their own image changes nothing: no flag."""
    src, enc, _ = cli_setup
    assert main(["--encoder", str(enc), "--data", str(src), "--out", str(tmp_path / "r"),
                 "--folds", "2", "--quiet", "--no-group-tiles"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["group_tiles"] is False and report["source_images"] == 24
    assert "optimistic" not in printed and "WARNING" not in printed


def test_samples_a_build_dropped_are_noted_in_table_and_report_md(tmp_path: Path) -> None:
    """data.dropped_samples (LabelledData.describe) reaches eofm-probe's printed table and
    report.md, not capitalised (the note starts with the data's path)."""
    from eofm.finetune.report import format_table, markdown

    y = np.array([[1, 0], [1, 1], [0, 1], [1, 1]])
    report = _ml_report([multilabel_metrics(y, np.random.default_rng(1).normal(size=y.shape))])
    report["data"]["dropped_samples"] = {"nodata": 2, "limits": {"max_nodata": 0.5},
                                         "note": "d: its build dropped 2 tile(s) (...)"}
    report["architecture"] = "vit"
    report["preprocess"] = {"bands": ["B02"], "size": [16, 16], "method": "meanstd",
                            "fixed": [], "notes": [], "overridden": []}
    assert format_table(report).splitlines()[-1] == "note: d: its build dropped 2 tile(s) (...)"
    assert "\nNote: d: its build dropped 2 tile(s) (...).\n" in markdown(report, None)


def test_report_md_says_the_per_class_scores_are_means_over_folds() -> None:
    """report.md's per-class table is the mean of per-fold scores while the confusion matrix
    pools the folds' predictions (a class read 0.540 in one and 55% in the other, unexplained):
    the table says which it is; with a fixed test set (one fold) there is nothing to say."""
    from eofm.finetune.report import markdown

    y = np.array([[1, 0], [1, 1], [0, 1], [1, 1]])
    report = _ml_report([multilabel_metrics(y, np.random.default_rng(s).normal(size=y.shape))
                         for s in (1, 2)])
    report["architecture"] = "vit"
    report["preprocess"] = {"bands": ["B02"], "size": [16, 16], "method": "meanstd",
                            "fixed": [], "notes": [], "overridden": []}
    said = "Each class's AP is the mean of its per-fold APs"
    assert said in markdown(report, None)
    report["test_data"] = {"source": "t", "samples": 4}
    assert said not in markdown(report, None)
