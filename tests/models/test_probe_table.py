"""The eofm-probe table shared by eofm-probe's report and the model card (models/probe_table.py)."""

from __future__ import annotations

from eofm.models.card import render_model_card
from eofm.models.probe_table import probe_table


def _scores(v: float, knn: bool = True) -> dict:
    one = {"accuracy": {"mean": v, "std": 0.01}, "balanced_accuracy": {"mean": v - 0.1,
                                                                      "std": 0.02}}
    return {"linear": one, **({"knn": {"10": one, "20": one}} if knn else {})}


def _report() -> dict:
    span = {"min": 0.1, "max": 0.25}
    return {"data": {"kind": "class", "source": "/home/alice/eurosat", "samples": 40,
                     "classes": ["a", "b"]},
            "knn_k": [10, 20], "folds": 2, "pool": "avg",
            "pretrained": _scores(0.9), "random_init": _scores(0.2),
            "band_stats": _scores(0.5, knn=False),  # a kNN result absent: a dash, not a crash
            "random_init_seeds": {"seeds": [0, 1, 2], "linear": {"accuracy": span},
                                  "knn": {"10": {"accuracy": span}}}}


def test_probe_table_rows_and_header() -> None:
    header, rows = probe_table(_report())
    assert header == ["method", "linear top-1", "linear bal-acc", "kNN-10 top-1",
                      "kNN-20 top-1"]
    assert rows[0] == ["pretrained", "0.900 ± 0.010", "0.800 ± 0.020", "0.900 ± 0.010",
                       "0.900 ± 0.010"]
    assert rows[2] == ["band_stats", "0.500 ± 0.010", "0.400 ± 0.020", "-", "-"]
    assert rows[3] == ["random_init x3 (range)", "0.100 - 0.250", "-", "0.100 - 0.250", "-"]
    multi = {**_report(), "data": {"kind": "multilabel"}}
    for m in ("pretrained", "random_init", "band_stats"):
        multi[m] = {"linear": {"micro_map": {"mean": 0.7, "std": 0.0}}}
    header, rows = probe_table(multi, capitalise=True)
    assert header[:3] == ["Method", "Linear micro-mAP", "Linear macro-mAP"]
    assert rows[0][:3] == ["pretrained", "0.700 ± 0.000", "-"]


def test_the_card_and_the_probe_report_show_one_table() -> None:
    from eofm.finetune.report import table_rows

    report = _report()
    config = {"architecture": "eofm_vit_test_patch8", "num_features": 64, "global_pool": "avg",
              "eofm_contract": {"bands": ["B02"], "objective": "mae"}}
    card = render_model_card(config, {"evaluation": report})
    header, rows = table_rows(report)
    assert (header, rows) == probe_table(report)
    lines = card.split("## Evaluation", 1)[1].splitlines()
    assert "| Method | Linear top-1 | Linear bal-acc | kNN-10 top-1 | kNN-20 top-1 |" in lines
    for row, name in zip(rows, ("This encoder", "Random init (same", "Band statistics",
                                "Random init, 3 seeds"), strict=True):
        line = next(x for x in lines if x.startswith(f"| {name}"))
        assert [c.strip() for c in line.strip("|").split("|")][1:] == row[1:], name
    assert "alice" not in card and "`eofm-probe` on `eurosat`" in card


def test_a_score_of_one_fold_says_so() -> None:
    """A macro-mAP defined in one fold only used to read "0.655 ± 0.000", as if exact."""
    from eofm.models.probe_table import mean_std_cell

    assert mean_std_cell({"mean": 0.655, "std": 0.0, "folds_scored": 1}) == "0.655 (1 fold)"
    assert mean_std_cell({"mean": 0.655, "std": 0.01, "folds_scored": 3}) == "0.655 ± 0.010"
    assert mean_std_cell({"mean": None, "std": None, "folds_scored": 0}) == "-"


def _with_knn_folds(report: dict, used: dict[str, list[int]]) -> dict:
    """``report`` whose methods' kNN results record, per fold, the k used (as report.json's
    per-fold ``k``: the requested k capped at the training split's size)."""
    out = {**report}
    for m in ("pretrained", "random_init"):
        knn = {k: {**v, "folds": [{"accuracy": 0.5, "k": n} for n in used[k]]}
               for k, v in report[m]["knn"].items()}
        out[m] = {**report[m], "knn": knn}
    return out


def test_a_capped_knn_column_names_the_k_it_used() -> None:
    """Too few training samples for k=20: kNN used 4 neighbours, and the header says so in the
    probe table and the model card (it used to say "kNN-20" whatever k was used)."""
    report = _with_knn_folds(_report(), {"10": [4, 4], "20": [4, 4]})
    header, _ = probe_table(report)
    assert header[3:] == ["kNN-10 (k=4) top-1", "kNN-20 (k=4) top-1"]
    config = {"architecture": "eofm_vit_test_patch8", "num_features": 64, "global_pool": "avg",
              "eofm_contract": {"bands": ["B02"], "objective": "mae"}}
    card = render_model_card(config, {"evaluation": report})
    assert "| kNN-10 (k=4) top-1 | kNN-20 (k=4) top-1 |" in card
    # folds of different sizes: the range used; an uncapped k keeps its plain name
    header, _ = probe_table(_with_knn_folds(_report(), {"10": [10, 10], "20": [14, 15]}))
    assert header[3:] == ["kNN-10 top-1", "kNN-20 (k=14-15) top-1"]
