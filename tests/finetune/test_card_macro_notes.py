"""The model card's evaluation table says what eofm-probe says of multi-label macro-mAP: with
test folds where classes had no positive (or no negative), it averages only the classes
scored there. report.md and the printed table said so; the card showed "Linear macro-mAP
0.612 ± 0.104" as if over every class. One function (eofm.models.probe_table) now gives the
note to all three."""

from __future__ import annotations

import numpy as np

import eofm.models.probe_table as probe_table
from eofm.finetune import probe
from eofm.finetune.report import aggregate, format_table, markdown
from eofm.models.card import render_model_card

CLASSES = ["a", "b", "c"]


def _report(folds: list[dict]) -> dict:
    """A multi-label eofm-probe report of these per-fold scores, as eofm-probe writes it."""
    agg = aggregate(folds, "multilabel")
    return {"data": {"kind": "multilabel", "source": "/home/alice/ben", "samples": 12,
                     "classes": CLASSES},
            "encoder": "e", "architecture": "eofm_vit_test_patch8", "pool": "cls",
            "folds": len(folds), "knn_k": [], "feature_dim": {"pretrained": 4},
            "preprocess": {"bands": ["B02"], "size": [16, 16], "method": "meanstd",
                           "fixed": [], "notes": [], "overridden": []},
            **{m: {"linear": agg, "knn": {}} for m in ("pretrained", "random_init",
                                                       "band_stats")}}


def _folds(rng: np.random.Generator, labels: list[np.ndarray]) -> list[dict]:
    return [probe.multilabel_metrics(y, rng.normal(size=y.shape)) for y in labels]


def _evaluation(report: dict) -> str:
    config = {"architecture": "eofm_vit_test_patch8", "num_features": 64, "global_pool": "avg",
              "eofm_contract": {"bands": ["B02"], "objective": "mae"}}
    card = render_model_card(config, {"evaluation": report})
    return card.split("## Evaluation", 1)[1].split("\n## ", 1)[0]


def _report_md_notes(report: dict) -> list[str]:
    """report.md's paragraphs on macro-mAP."""
    return [p for p in markdown(report, None).split("\n\n") if p.startswith("Macro-mAP")]


def test_the_cards_table_carries_report_mds_macro_map_notes() -> None:
    rng = np.random.default_rng(0)
    full = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    one_image = np.array([[1, 0, 1]] * 4)  # tiles of one image: no class has both
    no_c = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]])  # class c: no positive
    report = _report(_folds(rng, [full, no_c, one_image]))
    notes = _report_md_notes(report)
    assert len(notes) == 2 and "left out (no positive + no negative) per fold: 0 + 0, " \
        "1 + 0, 1 + 2" in notes[0] and "mean over the 2 of 3 folds" in notes[1]
    printed = format_table(report)  # eofm-probe's table: the same notes
    assert all(n[:1].lower() + n[1:] in printed for n in notes)
    section = _evaluation(report)
    table_end = section.rindex("| Band statistics")
    for note in notes:  # under the table, word for word
        assert f"\n\n{note}" in section and section.index(note) > table_end, note
    undefined = _report(_folds(rng, [one_image, one_image]))
    assert "Macro-mAP is undefined (shown as -)" in _evaluation(undefined)
    assert "| - |" in _evaluation(undefined)
    every = _report(_folds(rng, [full, full]))  # every fold scored every class: no note
    assert _report_md_notes(every) == [] and "Macro-mAP" not in _evaluation(every)


def test_the_left_out_keys_are_named_once_for_probe_and_the_card() -> None:
    """eofm.models may import nothing from eofm.finetune: the keys the probe writes and the
    card's notes read are spelled in both, and must agree."""
    assert getattr(probe_table, "MACRO_LEFT_OUT", None) == probe.MACRO_LEFT_OUT
