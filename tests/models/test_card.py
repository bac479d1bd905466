"""The generated model card: its "How to load" snippet, executed, feeds the encoder exactly what
eofm-probe/eofm-finetune's contract preprocessing feeds it (nodata included); the licence and
the Hub dataset ids in its metadata; :func:`eofm.models.normalise_input`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

import eofm.models
from eofm.data_shards.manifest import LabelInfo, Manifest, ModalityInfo
from eofm.finetune.datasets import LabelledData
from eofm.finetune.features import apply_contract
from eofm.models import InputContract, create_model, from_pretrained, save_pretrained
from eofm.models.card import check_license, render_model_card
from eofm.models.hub import encoder_config, read_config

BANDS = ["B02", "B03", "B04"]


def _contract(**kw) -> InputContract:
    stats = {b: {"mean": 1000.0 + 100 * i, "std": 300.0 + 10 * i} for i, b in enumerate(BANDS)}
    base = dict(sensors=("s2_l1c",), bands=BANDS, gsd=10.0, units="DN (x 0.0001 = physical)",
                processing_level="L1C", nodata=0.0, normalisation="meanstd", stats=stats,
                input_size=(16, 16), patch_size=8, objective="mae", data="s2_64")
    return InputContract(**{**base, **kw})


def _encoder(contract: InputContract) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vit_test_patch8", bands=BANDS, img_size=16, contract=contract).eval()


def _raw() -> np.ndarray:
    """(2, 3, 16, 16) uint16 pixels in BANDS order with nodata (0): a strip in every band, and
    single pixels in one band only (still nodata for the whole pixel)."""
    x = np.random.default_rng(0).integers(1, 4000, (2, 3, 16, 16)).astype(np.uint16)
    x[0, :, :, :5] = 0
    x[1, 2, 3, 7] = 0
    x[1, 0, 9, 1] = 0
    return x


def _data(x: np.ndarray) -> LabelledData:
    """In-memory labelled data holding ``x`` (the dataset's own statistics, nodata 0)."""
    stats = {b: {"mean": float(x[:, i].mean()), "std": float(x[:, i].std())}
             for i, b in enumerate(BANDS)}
    info = ModalityInfo("s2_l1c", BANDS, str(x.dtype), list(x.shape[1:]), [0.0] * 3, 10.0, stats)
    m = Manifest(modalities={"s2": info}, labels=LabelInfo("class", ["a"]))
    return LabelledData(source="memory", modality="s2", manifest=m, labels=np.zeros(len(x), int),
                        keys=[str(i) for i in range(len(x))], pixels=lambda i: x[i])


def _snippet(folder: Path) -> str:
    """The card's first python block, loading ``folder`` in place of the repo id, without its
    example batch (``raw = ...``): these tests give it their own ``raw``."""
    text = (folder / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code, "no python block in the card"
    example = re.compile(r"^raw = .*\n", re.M)
    assert len(example.findall(code.group(1))) == 1, "no (single) example batch in the card"
    return example.sub("", code.group(1)).replace('"ORG/NAME"', repr(str(folder)))


def test_the_cards_snippet_executed_feeds_what_eofm_probe_feeds(tmp_path) -> None:
    contract = _contract()
    folder = save_pretrained(_encoder(contract), tmp_path / "enc")
    raw = _raw()
    scope: dict = {"raw": torch.from_numpy(raw.astype(np.int32))}  # as a user reads a tile
    exec(_snippet(folder), scope)  # the card's own code, on a local folder

    pre = apply_contract(_data(raw), contract)  # eofm-probe / eofm-finetune's path
    ref = pre(raw)
    assert (ref[0, :, :, :5] == 0).all() and (ref[1, :, 3, 7] == 0).all()
    assert torch.equal(scope["x"], ref)  # nodata pixels set to 0, bit for bit
    with torch.no_grad():
        assert torch.equal(scope["features"], scope["encoder"](ref))
    assert torch.equal(eofm.models.normalise_input(raw, contract), ref)


def test_the_cards_snippet_of_a_gsd_aware_encoder_passes_the_gsd_it_was_trained_at(
        tmp_path) -> None:
    """gsd_pos: the card's call names ``gsd=`` (the contract's GSD unless the data's differs)
    and gives the features of the call pretraining made (the training input's GSD)."""
    contract = _contract(gsd=30.0)
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=16, contract=contract,
                       gsd_pos=True).eval()
    folder = save_pretrained(enc, tmp_path / "enc")
    code = _snippet(folder)
    assert "features = encoder(x, gsd=GSD)" in code and "GSD = c.gsd" in code
    scope: dict = {"raw": torch.from_numpy(_raw().astype(np.int32))}
    exec(code, scope)
    with torch.no_grad():
        trained = scope["encoder"](scope["x"], gsd=30.0)
        assert torch.equal(scope["features"], trained)
        assert torch.equal(scope["encoder"](scope["x"]), trained)  # left out: the contract's
    plain = _snippet(save_pretrained(_encoder(_contract()), tmp_path / "plain"))
    assert "features = encoder(x)" in plain and "gsd=" not in plain


def test_normalise_input_follows_the_method_and_names_missing_statistics() -> None:
    stats = {b: {"p2": 100.0 * (i + 1), "p98": 1000.0 * (i + 1)} for i, b in enumerate(BANDS)}
    c = _contract(normalisation="percentile", stats=stats, nodata=None)
    raw = torch.full((1, 3, 8, 8), 550.0)
    raw[0, 1, 2, 2] = float("nan")
    x = eofm.models.normalise_input(raw, c)
    assert torch.allclose(x[0, 0, 0, 0], torch.tensor(0.5)) and (x[0, :, 2, 2] == 0).all()
    with pytest.raises(ValueError, match=r"contract.stats\['B02'\].*'mean'"):
        eofm.models.normalise_input(raw, _contract(stats={b: {"p2": 1.0} for b in BANDS}))


def test_a_band_without_data_in_an_image_is_zeroed_alone() -> None:
    """A band that is nodata everywhere in an image (EnMAP's water-vapour bands in some
    products) blanked every pixel of every band, so the whole image reached the encoder as
    zeros; pretraining feeds the other bands and that band as 0 (its mean)."""
    stats = {b: {"p2": 100.0 * (i + 1), "p98": 1000.0 * (i + 1)} for i, b in enumerate(BANDS)}
    c = _contract(normalisation="percentile", stats=stats, nodata=0.0)
    raw = torch.full((2, 3, 8, 8), 550.0)
    raw[0, 2] = 0.0  # band 3 empty in image 0
    raw[1, 2, 1, 1] = 0.0  # one nodata pixel in image 1: that pixel only
    x = eofm.models.normalise_input(raw, c)
    assert (x[0, 2] == 0).all() and torch.allclose(x[0, 0], torch.tensor(0.5))
    assert torch.allclose(x[0, 1], torch.full((8, 8), (550.0 - 200.0) / 1800.0))
    assert (x[1, :, 1, 1] == 0).all() and torch.allclose(x[1, 0, 0, 0], torch.tensor(0.5))
    assert int((x[1] == 0).all(dim=0).sum()) == 1


def test_card_text_states_the_nodata_rule_and_the_percentile_statistics() -> None:
    stats = {b: {"p2": 100.0, "p98": 900.0} for b in BANDS}
    config = encoder_config(_encoder(_contract(normalisation="percentile", stats=stats)))
    text = render_model_card(config)
    assert "`x = (raw - p2) / (p98 - p2)`" in text and "| Band | P2 | P98 |" in text
    assert "equal to the nodata value 0 in any band" in text
    assert "eofm.models.normalise_input(raw, c)" in text
    cfg = config["pretrained_cfg"]  # timm's (x - mean) / std: the same numbers
    assert cfg["mean"] == [100.0] * len(BANDS) and cfg["std"] == [800.0] * len(BANDS)


def test_licence_goes_into_header_timm_cfg_and_text(tmp_path) -> None:
    folder = save_pretrained(_encoder(_contract()), tmp_path / "enc", card={"license": "cc-by-4.0"})
    meta = ModelCard.load(folder / "README.md").data.to_dict()
    assert meta["license"] == "cc-by-4.0"
    assert read_config(folder / "config.json")["pretrained_cfg"]["license"] == "cc-by-4.0"
    text = (folder / "README.md").read_text()
    assert "released under `cc-by-4.0`" in text and "licences of the pretraining data" in text
    default = save_pretrained(_encoder(_contract()), tmp_path / "d")
    assert read_config(default / "config.json")["pretrained_cfg"]["license"] == "apache-2.0"
    for bad in ("Apache 2.0", "MIT", "", "apache-2.0; rm"):
        with pytest.raises(ValueError, match="license: expected a Hub licence id"):
            check_license(bad)
    with pytest.raises(ValueError, match=r"did you mean 'apache-2\.0'"):  # the Hub's spelling
        check_license("Apache 2.0")
    with pytest.raises(ValueError, match="did you mean 'mit'"):
        save_pretrained(_encoder(_contract()), tmp_path / "x", card={"license": "MIT"})
    assert not (tmp_path / "x").exists()


def test_a_licence_the_hub_does_not_list_goes_in_as_other_with_its_name_and_link(
        tmp_path, caplog) -> None:
    card = {"license": "other", "license_name": "copernicus-sentinel-data-1.0",
            "license_link": "https://sentinels.copernicus.eu/documents/247904/690755/TC"}
    with caplog.at_level("WARNING", logger="eofm.models.hub"):
        folder = save_pretrained(_encoder(_contract()), tmp_path / "enc", card=card)
    assert not caplog.records  # named and linked: nothing to warn about
    loaded = ModelCard.load(folder / "README.md")
    meta = loaded.data.to_dict()
    assert {k: meta[k] for k in card} == card
    assert read_config(folder / "config.json")["pretrained_cfg"]["license"] == "other"
    assert f"released under `other` ({card['license_name']}, {card['license_link']})" in \
        loaded.text
    assert from_pretrained(folder).license_terms == {"name": card["license_name"],
                                                     "link": card["license_link"]}
    for change, needle in (({"license_name": "Copernicus terms"}, "license_name: expected an id "
                                                                  "for the licence like "
                                                                  "'my-license-1.0'"),
                           ({"license_name": 3}, "license_name: expected an id"),
                           ({"license_link": "LICENSE"}, r"license_link: expected an http\(s\) URL"),
                           ({"license": "mit"}, "license_name, license_link: only with license "
                                                "'other' .* got license 'mit'")):
        with pytest.raises(ValueError, match=needle):
            save_pretrained(_encoder(_contract()), tmp_path / "x", card={**card, **change})
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("card", "notes"), [
    ({"license": "cc-by-nc-sa-4.0"}, []),
    ({"license": "apache2"}, ["'apache2' is not on the Hub's licence list",
                              "the Hub writes it 'apache-2.0'", "use 'other' with its name"]),
    ({"license": "gpl3"}, ["the Hub writes it 'gpl-3.0'"]),
    # another licence one letter away is not offered as what was meant
    ({"license": "cc-by-sa-2.0"}, ["'cc-by-sa-2.0' is not on the Hub's licence list"]),
    ({"license": "other"}, ["'other' without its name (license_name) or a URL of its text"]),
    ({"license": "other", "license_name": "terms"}, ["'other' without a URL of its text"]),
])
def test_licence_fields_the_hub_would_not_read_are_warned_about_not_refused(
        tmp_path, caplog, card: dict, notes: list[str]) -> None:
    """The Hub adds licence ids now and then, so an id missing from eofm's copy of its list
    is written as given, with a warning; a near-miss of a listed id is named, not applied."""
    with caplog.at_level("WARNING", logger="eofm.models.hub"):
        folder = save_pretrained(_encoder(_contract()), tmp_path / "enc", card=card)
    assert ModelCard.load(folder / "README.md").data.to_dict()["license"] == card["license"]
    text = " | ".join(r.getMessage() for r in caplog.records)
    assert len(caplog.records) == (1 if notes else 0), text
    for note in notes:
        assert note in text
    if notes:
        assert str(folder) in text and "cc-by-nc-2.0" not in text


def test_datasets_metadata_holds_only_hub_ids_and_the_local_name_stays_in_the_table() -> None:
    config = encoder_config(_encoder(_contract()))
    plain = ModelCard(render_model_card(config))
    assert "datasets" not in plain.data.to_dict()
    assert "| Data | s2_64 |" in plain.text
    hub = ModelCard(render_model_card(config, {"datasets": ["org/ssl4eo-s12"]}))
    assert hub.data.to_dict()["datasets"] == ["org/ssl4eo-s12"]
    assert "| Hub datasets | org/ssl4eo-s12 |" in hub.text and "| Data | s2_64 |" in hub.text


def test_config_extra_adds_keys_and_never_replaces_the_exports_own(tmp_path) -> None:
    folder = save_pretrained(_encoder(_contract()), tmp_path / "e", config_extra={"task": {"k": 1}})
    assert read_config(folder / "config.json")["task"] == {"k": 1}
    with pytest.raises(ValueError, match=r"config_extra: keys \['architecture'\] are the "):
        save_pretrained(_encoder(_contract()), tmp_path / "f", config_extra={"architecture": "x"})
    assert not (tmp_path / "f").exists()


def test_a_sentinel2_card_says_its_pixels_are_offset_free_and_others_do_not(tmp_path) -> None:
    """eofm-shard removes the +1000 DN offset of Sentinel-2 products of processing baseline
    04.00 and later; the card (beside the bands and in its snippet) said nothing of it, so raw
    2022+ L2A pixels fed through the snippet were off by ~0.65 std."""
    note = "Sentinel-2 pixels are offset-free DN (reflectance x 10000)"
    for sensors in (("s2_l1c",), ("s2_l2a",), ("s2_l2a+s1_grd",)):
        text = render_model_card(encoder_config(_encoder(_contract(sensors=sensors))))
        bands = text.split("## Sensor and bands", 1)[1].split("## Normalisation", 1)[0]
        assert note in bands and "processing baseline 04.00 or later" in bands, sensors
        assert "subtract 1000 from every valid pixel" in bands, sensors
        assert "# Sentinel-2: offset-free DN; subtract 1000" in _snippet_text(text), sensors
    folder = save_pretrained(_encoder(_contract(sensors=("s2_l2a",))), tmp_path / "s2")
    assert note in (folder / "README.md").read_text()
    s1 = InputContract(sensors=("s1_grd",), bands=("VV", "VH"), gsd=10.0, units="dB",
                       normalisation="meanstd", input_size=(16, 16), patch_size=8,
                       stats={b: {"mean": -12.0, "std": 5.0} for b in ("VV", "VH")})
    enc = create_model("vit_test_patch8", bands=["VV", "VH"], img_size=16, contract=s1)
    other = (save_pretrained(enc, tmp_path / "s1") / "README.md").read_text()
    assert "offset-free" not in other and "subtract 1000" not in other


def _snippet_text(card: str) -> str:
    """The first python block of a card's text."""
    code = re.search(r"```python\n(.*?)```", card, re.S)
    assert code, "no python block in the card"
    return code.group(1)


STACKED = ["B02", "B03", "B04", "VV", "VH"]


def _stacked_contract() -> InputContract:
    """A stacked Sentinel-2 + Sentinel-1 contract: nodata 0 in the optical bands, none in the
    radar bands (dB, where 0 is a measurement)."""
    stats = {b: {"mean": 1000.0, "std": 300.0} for b in STACKED[:3]}
    stats.update(VV={"mean": -10.0, "std": 4.0}, VH={"mean": -17.0, "std": 4.0})
    return InputContract(sensors=("s2_l2a+s1_grd",), bands=STACKED, gsd=10.0,
                         processing_level="L1 GRD+L2A", nodata=[0.0, 0.0, 0.0, None, None],
                         normalisation="meanstd", stats=stats, input_size=(16, 16),
                         patch_size=8, objective="mae", data="s2s1")


def _stacked_raw() -> np.ndarray:
    """(2, 5, 16, 16) float32 raw S2 DN and S1 dB: an S2 fill strip (0 in every S2 band), an
    S2 fill pixel in one band, and 0 dB in VV (data, not nodata)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(1, 4000, (2, 3, 16, 16)),
                        rng.uniform(-25, -1, (2, 2, 16, 16))], axis=1).astype(np.float32)
    x[0, :3, :, :4] = 0
    x[1, 1, 3, 7] = 0
    x[1, 3, 9, 1] = 0  # 0 dB in VV
    return x


def test_a_stacked_card_gives_each_bands_nodata_and_its_snippet_feeds_what_eofm_probe_feeds(
        tmp_path) -> None:
    """A stacked S2 + S1 export's contract held nodata null (the bands' values differ), so the
    card's snippet normalised S2's fill value 0 as a measurement; with per-band nodata the card
    says which bands have which, and the snippet zeroes S2's fill but not 0 dB in VV."""
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=STACKED, img_size=16,
                       contract=_stacked_contract()).eval()
    folder = save_pretrained(enc, tmp_path / "enc")
    text = (folder / "README.md").read_text()
    assert "| Nodata value | per band (see the band table; - for none) |" in text
    assert "| Native GSD (m) | Nodata |" in text
    assert re.search(r"\| 0 \| B02 \|.*\| 0 \|\n", text) and re.search(r"\| 3 \| VV \|.*\| - \|\n",
                                                                       text)
    assert ("equal to its band's nodata value (0 for B02, B03, B04; none for VV, VH)"
            in text)
    assert ModelCard(text).data.eofm["contract"]["nodata"] == [0.0, 0.0, 0.0, None, None]

    raw = _stacked_raw()
    scope: dict = {"raw": torch.from_numpy(raw)}
    exec(_snippet(folder), scope)
    x = scope["x"]
    assert (x[0, :, :, :4] == 0).all() and (x[1, :, 3, 7] == 0).all()
    assert x[1, 3, 9, 1] == pytest.approx(2.5) and (x[1, :, 9, 1] != 0).all()
    stats = {b: {"mean": 1.0, "std": 1.0} for b in STACKED}
    info = ModalityInfo("s2_l2a+s1_grd", STACKED, "float32", [5, 16, 16],
                        [0.0, 0.0, 0.0, None, None], 10.0, stats)
    data = LabelledData(source="memory", modality="s2s1",
                        manifest=Manifest(modalities={"s2s1": info},
                                          labels=LabelInfo("class", ["a"])),
                        labels=np.zeros(2, int), keys=["0", "1"], pixels=lambda i: raw[i])
    assert torch.equal(x, apply_contract(data, enc.contract)(raw))  # eofm-probe's path


def test_a_one_number_nodata_card_keeps_its_table_and_rule() -> None:
    text = render_model_card(encoder_config(_encoder(_contract())))
    assert "| Nodata value | 0 |" in text and "| Nodata |" not in text
    assert "| Input GSD (m) | Native GSD (m) |\n" in text
    assert "equal to the nodata value 0 in any band, or not finite," in text
    assert "its band's nodata value" not in text


def _probe_report(**extra) -> dict:
    """A minimal multi-label eofm-probe report.json of 24 tiles, for the card's evaluation."""
    ap = {"micro_map": {"mean": 0.9, "std": 0.05}, "macro_map": {"mean": 0.8, "std": 0.05}}
    scores = {"linear": ap, "knn": {"10": ap}}
    return {"data": {"kind": "multilabel", "source": "/home/alice/ben64", "samples": 24,
                     "classes": ["a", "b"]},
            "knn_k": [10], "folds": 3, "pool": "cls", "pretrained": scores,
            "random_init": scores, "band_stats": scores, **extra}


def _evaluation_intro(report: dict) -> str:
    """The first paragraph of the card's evaluation section."""
    config = {"architecture": "eofm_vit_test_patch8", "num_features": 64, "global_pool": "avg",
              "eofm_contract": {"bands": ["B02"], "objective": "mae"}}
    card = render_model_card(config, {"evaluation": report})
    return card.split("## Evaluation", 1)[1].strip().split("\n\n", 1)[0]


def test_the_card_flags_a_probe_that_split_tiles_of_one_image_across_folds() -> None:
    """eofm-probe --no-group-tiles over tiles of fewer images (report.json group_tiles false,
    source_images < samples) scores optimistically: the card's intro says so, as the probe's
    table does; grouped, untiled or older reports (no group_tiles) are not flagged."""
    flag = "tiles of one image on both sides of splits: optimistic"
    intro = _evaluation_intro(_probe_report(group_tiles=False, source_images=6))
    assert "`eofm-probe` on `ben64`" in intro and flag in intro
    assert "**`--no-group-tiles`: tiles of 6 images split tile by tile" in intro
    for fine in ({"group_tiles": True, "source_images": 6, "fold_groups": 6},
                 {"group_tiles": False, "source_images": 24}, {"fold_groups": None}):
        assert flag not in _evaluation_intro(_probe_report(**fine)), fine


def test_the_card_says_how_many_tiles_the_probe_datas_build_dropped() -> None:
    """report.json data.dropped_samples (counts per reason) reaches the card's intro, without
    the note's local path."""
    report = _probe_report()
    report["data"]["dropped_samples"] = {"nodata": 3, "limits": {"max_nodata": 0.5},
                                         "note": "/home/alice/ben64: its build dropped 3"}
    intro = _evaluation_intro(report)
    assert "The data's build dropped 3 tile(s) (3 for nodata): they are not among the " \
           "samples." in intro and "alice" not in intro
    assert "dropped" not in _evaluation_intro(_probe_report())
