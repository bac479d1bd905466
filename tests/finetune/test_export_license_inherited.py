"""A run continued from an export (``model.init_from``) and an export loaded and saved again keep
that export's licence: continual pretraining from a cc-by-nc-4.0 export was exported as
apache-2.0 without a word, and ``save_pretrained`` of a loaded export relicensed it the same way.
The licence travels with the init origin pretraining records in its checkpoints."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from eofm.finetune.export import export_run, load_checkpoint
from eofm.models import create_model, from_pretrained, save_pretrained
from eofm.pretrain.config import load_config

BANDS = ["B02", "B03", "B04", "B08"]  # tiny_run_config's
OTHER = {"license": "other", "license_name": "esa-data-terms",
         "license_link": "https://esa.int/terms"}


def _licence(export: Path) -> tuple[str, dict, str]:
    """(config.json's pretrained_cfg.license, its license_terms, the card's header licence)."""
    config = json.loads((export / "config.json").read_text())
    card = ModelCard.load(export / "README.md").data.to_dict()
    return config["pretrained_cfg"]["license"], config.get("license_terms", {}), card["license"]


def _newest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*.pt"))[-1]


@pytest.fixture(scope="module")
def continued(tiny_run_config: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, Path]:
    """(a 1-step run continued from a cc-by-nc-4.0 export, that export)."""
    from eofm.pretrain.trainer import Trainer

    tmp = tmp_path_factory.mktemp("continued")
    torch.manual_seed(0)
    donor = save_pretrained(create_model("vit_test_patch8", bands=BANDS, img_size=32),
                            tmp / "nc", card={"license": "cc-by-nc-4.0"})
    config = tiny_run_config({"schedule": {"steps": 1, "warmup_steps": 0}}, name="continued")
    cfg = load_config(str(config), [f"runtime.out_dir={tmp / 'run'}",
                                    f"model.init_from={donor}"])
    assert Trainer(cfg).fit() == 0
    return tmp / "run", donor


def test_a_continued_run_is_exported_under_the_licence_of_the_export_it_started_from(
        continued, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run, donor = continued
    record = load_checkpoint(_newest(run))["init_origin"]
    assert record == {"kind": "folder", "path": str(donor.resolve()), "license": "cc-by-nc-4.0"}
    with caplog.at_level(logging.WARNING):
        out = export_run(run, tmp_path / "inherited")
    assert _licence(out) == ("cc-by-nc-4.0", {}, "cc-by-nc-4.0")
    assert "released under `cc-by-nc-4.0`" in (out / "README.md").read_text()
    assert "licen" not in caplog.text  # nothing to warn about: the licence is the inherited one


def test_another_licence_for_a_continued_run_is_used_with_a_warning_and_a_card_row(
        continued, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The publisher may hold the rights: not refused, but said in the log and in the card."""
    run, _ = continued
    with caplog.at_level(logging.WARNING):
        out = export_run(run, tmp_path / "mit", license="mit")
    assert _licence(out) == ("mit", {}, "mit")
    assert ("continued from an export licensed cc-by-nc-4.0; this export is released under mit"
            in caplog.text)
    assert ("| Continued from license | cc-by-nc-4.0 (this export: mit, set explicitly) |"
            in (out / "README.md").read_text())
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the same licence, given: nothing to say
        same = export_run(run, tmp_path / "same", license="cc-by-nc-4.0")
    assert "licen" not in caplog.text
    assert "Continued from license" not in (same / "README.md").read_text()


def test_an_other_licence_is_inherited_with_its_name_and_link(continued, tmp_path: Path,
                                                              caplog) -> None:
    """The init origin carries an 'other' licence's terms; a new name is another licence."""
    run, _ = continued
    ckpt = load_checkpoint(_newest(run))
    ckpt["init_origin"] = {**ckpt["init_origin"], "license": "other",
                           "license_terms": {"name": OTHER["license_name"],
                                             "link": OTHER["license_link"]}}
    torch.save(ckpt, tmp_path / "step_000000001.pt")
    out = export_run(tmp_path / "step_000000001.pt", tmp_path / "other")
    terms = {"name": "esa-data-terms", "link": "https://esa.int/terms"}
    assert _licence(out) == ("other", terms, "other")
    card = ModelCard.load(out / "README.md").data.to_dict()
    assert (card["license_name"], card["license_link"]) == (terms["name"], terms["link"])
    with caplog.at_level(logging.WARNING):
        renamed = export_run(tmp_path / "step_000000001.pt", tmp_path / "renamed",
                             license="other", license_name="my-terms-2")
    assert _licence(renamed)[:2] == ("other", {"name": "my-terms-2",
                                               "link": "https://esa.int/terms"})
    assert "licensed other (esa-data-terms); this export is released under other (my-terms-2)" \
        in caplog.text


def test_a_checkpoint_from_before_the_licence_was_recorded_keeps_the_default(
        continued, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An older checkpoint's init origin has no licence: apache-2.0 as before, with a warning
    that the export it continued from may have another."""
    run, donor = continued
    ckpt = load_checkpoint(_newest(run))
    ckpt["init_origin"] = {"kind": "folder", "path": str(donor)}
    torch.save(ckpt, tmp_path / "step_000000001.pt")
    with caplog.at_level(logging.WARNING):
        out = export_run(tmp_path / "step_000000001.pt", tmp_path / "old")
    assert _licence(out) == ("apache-2.0", {}, "apache-2.0")
    assert "does not record the licence of the export the run continued from" in caplog.text


def test_a_damaged_licence_record_is_refused_naming_the_field(continued, tmp_path) -> None:
    run, _ = continued
    ckpt = load_checkpoint(_newest(run))
    ckpt["init_origin"] = {**ckpt["init_origin"], "license": "CC-BY-NC-4.0"}
    torch.save(ckpt, tmp_path / "step_000000001.pt")
    with pytest.raises(ValueError, match=r"checkpoint init_origin\.license: expected a Hub licence "
                                         r"id.*got 'CC-BY-NC-4.0'"):
        export_run(tmp_path / "step_000000001.pt", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("licence", [{"license": "cc-by-nc-4.0"}, OTHER])
def test_an_export_loaded_and_saved_again_keeps_its_licence(tmp_path: Path, licence) -> None:
    """save_pretrained of a from_pretrained encoder, no licence in the card: the export's own
    (with an 'other' licence's name and link); a licence in the card still goes over it."""
    torch.manual_seed(0)
    first = save_pretrained(create_model("vit_test_patch8", bands=BANDS, img_size=32),
                            tmp_path / "a", card=licence)
    loaded = from_pretrained(first)
    again = save_pretrained(loaded, tmp_path / "b")
    terms = {k.removeprefix("license_"): v for k, v in licence.items() if k != "license"}
    assert _licence(again) == (licence["license"], terms, licence["license"])
    assert _licence(save_pretrained(loaded, tmp_path / "c", card={"license": "mit"})) == \
        ("mit", {}, "mit")
    fresh = save_pretrained(create_model("vit_test_patch8", bands=BANDS, img_size=32),
                            tmp_path / "d")
    assert _licence(fresh) == ("apache-2.0", {}, "apache-2.0")  # no export behind it: default
