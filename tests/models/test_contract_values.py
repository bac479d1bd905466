"""An input contract's numbers must be usable: statistics finite, a std (or a percentile
contract's p98 - p2) above 0, a GSD finite and above 0. Unchecked, an export with a NaN mean
loaded and gave NaN features, and a negative std silently flipped a band's sign. An export's
timm ``pretrained_cfg`` mean/std must be the contract's normalisation (timm normalises with
one, eofm with the other)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from eofm.models import InputContract, create_model, from_pretrained
from eofm.models.hub import save_pretrained
from eofm.models.normalise import normalisation_params

BANDS = ("B02", "B03")
STATS = {"B02": {"mean": 1000.0, "std": 200.0, "p2": 700.0, "p98": 1400.0},
         "B03": {"mean": 900.0, "std": 220.0, "p2": 600.0, "p98": 1300.0}}


def _stats(band: str, key: str, value: object) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {b: dict(s) for b, s in STATS.items()}
    out[band][key] = value
    return out


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("mean", math.nan, "expected a finite number"),
    ("std", math.inf, "expected a finite number"),
    ("std", -5.0, "expected a standard deviation > 0"),
    ("std", 0.0, "expected a standard deviation > 0"),
])
def test_a_contract_with_unusable_statistics_is_refused(key: str, value: float,
                                                        expected: str) -> None:
    with pytest.raises(ValueError, match=rf"stats\.B03\.{key}: {expected}"):
        InputContract(bands=BANDS, stats=_stats("B03", key, value))


def test_a_percentile_contract_with_p98_not_above_p2_is_refused() -> None:
    stats = _stats("B02", "p98", 700.0)  # == p2: a zero scale
    with pytest.raises(ValueError, match=r"stats\.B02\.p98: expected a value above p2"):
        InputContract(bands=BANDS, stats=stats, normalisation="percentile")
    InputContract(bands=BANDS, stats=stats, normalisation="meanstd")  # p2/p98 unused


@pytest.mark.parametrize("gsd", [-10.0, 0.0, math.inf, math.nan])
def test_a_contract_gsd_that_is_not_a_positive_finite_number_is_refused(gsd: float) -> None:
    with pytest.raises(ValueError, match=r"gsd: expected a finite number of metres > 0"):
        InputContract(bands=BANDS, gsd=gsd)


def test_from_dict_names_the_config_field() -> None:
    d = InputContract(bands=BANDS, stats=STATS, gsd=10.0).to_dict()
    d["stats"]["B02"]["std"] = -5.0
    where = "EXPORT/config.json: eofm_contract"
    with pytest.raises(ValueError, match=r"^EXPORT/config\.json: eofm_contract\.stats\.B02\.std: "
                                         r"expected a standard deviation > 0 to normalise "
                                         r"with, got -5\.0$"):
        InputContract.from_dict(d, where=where)
    d["stats"]["B02"]["std"], d["gsd"] = 200.0, -10
    with pytest.raises(ValueError, match=r"^EXPORT/config\.json: eofm_contract\.gsd: expected"):
        InputContract.from_dict(d, where=where)


@pytest.mark.parametrize(("key", "value"), [("std", -5.0), ("mean", math.nan),
                                            ("std", math.inf)])
def test_normalisation_params_refuse_a_non_finite_or_non_positive_scale(key: str,
                                                                        value: float) -> None:
    contract = InputContract(bands=BANDS, stats=STATS)
    contract.stats["B02"][key] = value  # changed after the contract was checked
    with pytest.raises(ValueError, match=r"contract\.stats\['B02'\]: expected usable 'mean' "
                                         r"and 'std'"):
        normalisation_params(contract)


def test_normalisation_params_refuse_a_negative_percentile_range() -> None:
    contract = InputContract(bands=BANDS, stats=STATS, normalisation="percentile")
    contract.stats["B03"]["p98"] = 500.0  # below p2, changed after the contract was checked
    with pytest.raises(ValueError, match=r"a scale p98 - p2 > 0"):
        normalisation_params(contract)
    contract.stats["B03"]["p98"] = 1300.0
    assert normalisation_params(contract) == ([700.0, 600.0], [700.0, 700.0])


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test-size export with a contract carrying mean/std statistics."""
    torch.manual_seed(0)
    contract = InputContract(bands=BANDS, stats=STATS, normalisation="meanstd", gsd=10.0,
                             input_size=(16, 16), patch_size=8)
    enc = create_model("vit_test_patch8", bands=list(BANDS), img_size=16, contract=contract)
    return save_pretrained(enc.eval(), tmp_path_factory.mktemp("exp") / "enc")


def _edited(export: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``export`` with its config.json changed by ``edit(config)``."""
    out = tmp_path / "edited"
    out.mkdir()
    for p in export.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    config = json.loads((out / "config.json").read_text())
    edit(config)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("mean", math.nan, "expected a finite number"),
    ("std", -5.0, "expected a standard deviation > 0"),
])
def test_from_pretrained_refuses_unusable_contract_statistics(export: Path, tmp_path: Path,
                                                             key: str, value: float,
                                                             expected: str) -> None:
    def edit(c: dict) -> None:
        c["eofm_contract"]["stats"]["B02"][key] = value

    bad = _edited(export, tmp_path, edit)
    with pytest.raises(ValueError, match=rf"config\.json: eofm_contract\.stats\.B02\.{key}: "
                                         rf"{expected}"):
        from_pretrained(bad)


def test_from_pretrained_refuses_a_negative_contract_gsd(export: Path, tmp_path: Path) -> None:
    bad = _edited(export, tmp_path, lambda c: c["eofm_contract"].__setitem__("gsd", -10))
    with pytest.raises(ValueError, match=r"config\.json: eofm_contract\.gsd: expected a finite "
                                         r"number of metres > 0"):
        from_pretrained(bad)


@pytest.mark.parametrize("key", ["mean", "std"])
def test_from_pretrained_refuses_a_timm_normalisation_other_than_the_contract_s(
        export: Path, tmp_path: Path, key: str) -> None:
    assert from_pretrained(export).pretrained_cfg[key] == [STATS[b][key] for b in BANDS]
    bad = _edited(export, tmp_path, lambda c: c["pretrained_cfg"].__setitem__(key, [1.0, 1.0]))
    with pytest.raises(ValueError, match=rf"config\.json: pretrained_cfg\.{key}: expected the "
                                         r"eofm_contract's normalisation"):
        from_pretrained(bad)
