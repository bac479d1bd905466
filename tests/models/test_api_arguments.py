"""Python API entry points of eofm.models refuse arguments of the wrong kind at the entry point,
naming the argument, what was expected and what came (not deep inside torch, and not silently):
``create_model`` (its name and the common numeric overrides) and ``from_pretrained``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from eofm.models import create_model, from_pretrained, save_pretrained

NAME = "vit_test_patch8"


@pytest.mark.parametrize("name", [5, None, b"vit_test_patch8"])
def test_create_model_name_must_be_a_string(name: object) -> None:
    with pytest.raises(TypeError, match=rf"name: expected a registered model name .*got the "
                                        rf"{type(name).__name__} "):
        create_model(name)  # type: ignore[arg-type]


@pytest.mark.parametrize("img_size", ["64", 64.0, (64,), (16, 16, 16), 0, -8, [16, "16"], True,
                                      np.float64(16)])
@pytest.mark.parametrize("name", [NAME, "resnet50"])
def test_create_model_refuses_an_img_size_that_is_not_a_size(name: str, img_size: object) -> None:
    with pytest.raises(ValueError, match=rf"img_size \({name}\): expected a positive int or an "
                                         rf"\(H, W\) pair of positive ints.*got the "
                                         rf"{type(img_size).__name__} "):
        create_model(name, img_size=img_size)


def test_create_model_takes_every_spelling_of_a_size() -> None:
    for size, want in [(16, (16, 16)), ([16, 32], (16, 32)), ((32, 16), (32, 16)),
                       (np.int64(16), (16, 16)), ([np.int32(16), 32], (16, 32))]:
        assert create_model(NAME, img_size=size).img_size == want


def test_numpy_numbers_build_and_are_kept_as_python_numbers() -> None:
    """depth=np.int64(2) built before the argument checks (a review found it refused): it
    builds again, and the overrides an export writes to config.json are Python numbers."""
    import json

    model = create_model(NAME, img_size=np.int64(16), depth=np.int64(2),
                         drop_path_rate=np.float32(0.25))
    assert len(model.blocks) == 2
    assert model.model_overrides == {"img_size": 16, "depth": 2, "drop_path_rate": 0.25}
    assert [type(v) for v in model.model_overrides.values()] == [int, int, float]
    json.dumps(model.model_overrides)


@pytest.mark.parametrize("rate", [2.0, 1.0, -0.1, "0.1", None, float("nan")])
def test_create_model_refuses_a_drop_path_rate_outside_0_1(rate: object) -> None:
    with pytest.raises(ValueError, match=rf"drop_path_rate \({NAME}\): expected a number in "
                                         rf"\[0, 1\).*got the {type(rate).__name__} "):
        create_model(NAME, img_size=16, drop_path_rate=rate)


def test_create_model_keeps_a_usable_drop_path_rate() -> None:
    assert isinstance(create_model(NAME, img_size=16, drop_path_rate=0).blocks[-1].drop_path1,
                      torch.nn.Identity)
    assert create_model(NAME, img_size=16, drop_path_rate=0.3).blocks[-1].drop_path1.drop_prob \
        == pytest.approx(0.3)


@pytest.mark.parametrize(("key", "value"), [("embed_dim", "64"), ("embed_dim", 64.0),
                                            ("depth", 2.0), ("depth", "2"), ("num_heads", -2),
                                            ("mlp_ratio", 0), ("mlp_ratio", "4"),
                                            ("reference_gsd", "10")])
def test_create_model_refuses_other_numeric_overrides_of_the_wrong_kind(key: str,
                                                                        value: object) -> None:
    with pytest.raises(ValueError, match=rf"{key} \({NAME}\): expected .*got the "
                                         rf"{type(value).__name__} {value!r}"):
        create_model(NAME, img_size=16, **{key: value})


def test_ranges_the_model_checks_keep_its_own_message() -> None:
    with pytest.raises(ValueError, match=r"depth: expected at least 1 transformer block, got 0"):
        create_model(NAME, img_size=16, depth=0)
    with pytest.raises(ValueError, match=r"embed_dim: expected a positive multiple of 4, got 6"):
        create_model(NAME, img_size=16, embed_dim=6)


@pytest.mark.parametrize(("key", "hint"), [("patch_size", r"part of the model name"),
                                           ("in_chans", r"pass bands=\[\.\.\.\] instead")])
def test_create_model_says_what_to_pass_instead_of_timm_arguments(key: str, hint: str) -> None:
    with pytest.raises(ValueError, match=rf"overrides: \['{key}'\] are not valid .*{key}: .*{hint}"):
        create_model(NAME, **{key: 8})


def test_timm_create_model_gets_the_same_checks() -> None:
    with pytest.raises(ValueError, match=r"img_size \(vit_test_patch8\): .*got the str '64'"):
        timm.create_model("eofm_vit_test_patch8", img_size="64")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny vit_test_patch8 export at 16 px."""
    return save_pretrained(create_model(NAME, img_size=16),
                           tmp_path_factory.mktemp("api") / "export")


@pytest.mark.parametrize("source", [None, 5, ["a/b"]])
def test_from_pretrained_source_must_be_a_path_or_repo_id(source: object) -> None:
    with pytest.raises(TypeError, match=rf"path_or_repo_id: expected an export folder .*got "
                                        rf"{type(source).__name__} "):
        from_pretrained(source)  # type: ignore[arg-type]


def test_from_pretrained_refuses_an_empty_source_rather_than_the_current_folder() -> None:
    with pytest.raises(ValueError, match=r"path_or_repo_id: .*got an empty string"):
        from_pretrained("")


@pytest.mark.parametrize("device", ["bogus", "gpu", 3.5])
def test_from_pretrained_names_an_unknown_device(export: Path, device: object) -> None:
    with pytest.raises(ValueError, match=rf"device: expected a torch device such as 'cpu'.*got "
                                         rf"{device!r}"):
        from_pretrained(export, device=device)  # type: ignore[arg-type]


def test_from_pretrained_names_a_cuda_device_this_machine_lacks(export: Path) -> None:
    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    with pytest.raises(ValueError, match=rf"device: .*'{missing}'"):
        from_pretrained(export, device=missing)


def test_from_pretrained_checks_its_arguments_before_reading(tmp_path: Path) -> None:
    """A bad device is named even when the source does not exist: nothing is read first."""
    with pytest.raises(ValueError, match=r"device: .*'bogus'"):
        from_pretrained(tmp_path / "absent", device="bogus")


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"strict": "no"}, r"strict: expected True or False, got 'no'"),
    ({"img_size": "32"}, r"img_size: expected a positive int .*got the str '32'"),
    ({"img_size": 32.0}, r"img_size: expected a positive int .*got the float 32\.0"),
])
def test_from_pretrained_refuses_other_arguments_of_the_wrong_kind(export: Path, kw: dict,
                                                                   pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        from_pretrained(export, **kw)


def test_from_pretrained_still_loads_with_good_arguments(export: Path) -> None:
    enc = from_pretrained(str(export), device=torch.device("cpu"), img_size=[32, 32])
    assert enc.img_size == (32, 32) and enc.contract.input_size == (32, 32)
