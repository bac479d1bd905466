"""``eofm-finetune``'s loaders compare an export's weights with what its config.json asks for
before allocating it, as ``from_pretrained`` does: :func:`load_encoder` (the encoder a
fine-tune starts from) and :func:`load_finetuned` (encoder and task head). They built the
network first and refused the mismatch only as the weights loaded, so a config.json of a few
bytes asking for a far larger encoder, or a head of far more outputs, allocated all of it
first (and ``random_init`` built it without looking at the weights at all).

What is allocated is seen where every module registers its parameters: no parameter outside
the meta device may be larger than the largest tensor the weights file holds."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from eofm.finetune.encoder import load_encoder
from eofm.finetune.finetuned import TASK_KEY, export_finetuned, load_finetuned, task_record
from eofm.finetune.tasks import FinetuneModel
from eofm.models import InputContract, create_model, save_pretrained
from eofm.models.hub import build_encoder, read_config
from eofm.models.weights import read_weight_shapes

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = "vit_test_patch8"  # embed_dim 64, depth 2: no stored tensor over 256 x 64 values
BANDS = ["B02", "B03", "B04"]
LARGER = {"embed_dim": 512, "depth": 4, "num_heads": 8}  # a 2048 x 512 mlp: 64x its largest
MANY = 2000  # head outputs a config.json may ask for: a (2000, 64) fc weight, 8x the largest


def _encoder(**kw: object) -> torch.nn.Module:
    contract = InputContract(bands=BANDS, normalisation="meanstd",
                             stats={b: {"mean": 0.0, "std": 1.0} for b in BANDS},
                             input_size=(16, 16), patch_size=8)
    torch.manual_seed(0)
    return create_model(ARCH, bands=BANDS, img_size=16, contract=contract, **kw)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pretrained export ("encoder") and a fine-tuned classification export of 4 classes
    ("finetuned") of the test ViT."""
    root = tmp_path_factory.mktemp("exports")
    model = FinetuneModel(_encoder(global_pool="avg"), "classification", 4, pool="avg",
                          encoder_kwargs={"bands": BANDS}).eval()
    results = {"task": "classification", "test_samples": 4, "test_source": "memory",
               "metrics": {"accuracy": 0.5}}
    export_finetuned(model, root / "finetuned", results=results,
                     record=task_record(model, classes=list("abcd")))
    return {"encoder": save_pretrained(_encoder(), root / "encoder"),
            "finetuned": root / "finetuned"}


def _edited(folder: Path, out: Path, *, model_args: dict | None = None,
            task: dict | None = None, head: dict | None = None) -> Path:
    """A copy of the export ``folder`` at ``out`` whose config.json's ``model_args``,
    task record and its head layout are updated with those given."""
    out.mkdir()
    for f in folder.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    config = json.loads((out / "config.json").read_text())
    config["model_args"].update(model_args or {})
    if task or head:
        config[TASK_KEY].update(task or {})
        config[TASK_KEY]["head"].update(head or {})
    (out / "config.json").write_text(json.dumps(config))
    return out


def _largest_stored(folder: Path) -> int:
    """The number of values of the largest tensor in ``folder``'s model.safetensors."""
    return max(map(math.prod, read_weight_shapes(folder / "model.safetensors").values()))


@pytest.fixture
def allocated(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, ...]]]:
    """The shapes of the parameters modules register outside the meta device (each was
    allocated), while the test runs."""
    seen: list[tuple[int, ...]] = []
    register = torch.nn.Module.register_parameter

    def recording(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            seen.append(tuple(param.shape))
        register(self, name, param)

    monkeypatch.setattr(torch.nn.Module, "register_parameter", recording)
    yield seen


def test_the_recorder_sees_what_a_matching_load_allocates(
        exports: dict[str, Path], allocated: list[tuple[int, ...]]) -> None:
    """The exports as written load through both loaders, and their parameters are seen being
    allocated: the checks below that nothing larger is are not empty."""
    load_encoder(str(exports["encoder"]), drop_path=None)
    assert (256, 64) in allocated and max(map(math.prod, allocated)) == _largest_stored(
        exports["encoder"])
    allocated.clear()
    model = load_finetuned(exports["finetuned"])
    assert model.classes == list("abcd") and (4, 64) in allocated
    assert max(map(math.prod, allocated)) == _largest_stored(exports["finetuned"])


@pytest.mark.parametrize("random_init", [False, True])
def test_load_encoder_refuses_a_larger_config_before_building_it(
        exports: dict[str, Path], tmp_path: Path, allocated: list[tuple[int, ...]],
        random_init: bool) -> None:
    larger = _edited(exports["encoder"], tmp_path / "larger", model_args=LARGER)
    weights = larger / "model.safetensors"
    with pytest.raises(ValueError) as e:
        load_encoder(str(larger), drop_path=None, random_init=random_init, seed=0)
    assert max(map(math.prod, allocated), default=0) <= _largest_stored(larger), (
        f"allocated {max(allocated, key=math.prod)} before refusing")
    message = str(e.value)
    assert message.startswith(f"{weights}: the weights do not match the config's {ARCH} "
                              "(model_args "), message
    assert "cls_token: checkpoint (1, 1, 64) vs model (1, 1, 512)" in message
    assert "missing tensors ['blocks.2.attn.proj.bias'" in message


def test_load_finetuned_refuses_a_larger_encoder_before_building_it(
        exports: dict[str, Path], tmp_path: Path, allocated: list[tuple[int, ...]]) -> None:
    larger = _edited(exports["finetuned"], tmp_path / "larger", model_args=LARGER)
    with pytest.raises(ValueError) as e:
        load_finetuned(larger)
    assert max(map(math.prod, allocated), default=0) <= _largest_stored(larger), (
        f"allocated {max(allocated, key=math.prod)} before refusing")
    message = str(e.value)
    assert message.startswith(f"{larger / 'model.safetensors'}: the weights do not match the "
                              f"config's {ARCH} (model_args "), message
    assert "cls_token: checkpoint (1, 1, 64) vs model (1, 1, 512)" in message


def test_load_finetuned_refuses_a_larger_head_before_building_it(
        exports: dict[str, Path], tmp_path: Path, allocated: list[tuple[int, ...]]) -> None:
    """A record consistent in itself (layout, outputs and class names all say MANY) over
    weights whose head has 4 outputs: the head's tensors are compared before it is built."""
    many = _edited(exports["finetuned"], tmp_path / "many", head={"num_outputs": MANY},
                   task={"num_outputs": MANY, "classes": [f"c{i}" for i in range(MANY)]})
    with pytest.raises(ValueError) as e:
        load_finetuned(many)
    assert max(map(math.prod, allocated), default=0) <= _largest_stored(many), (
        f"allocated {max(allocated, key=math.prod)} before refusing")
    message = str(e.value)
    assert message.startswith(f"{many / 'model.safetensors'}: the head.* tensors do not match "
                              f"{many}/config.json's {TASK_KEY}.head: "), message
    assert f"head.fc.weight: checkpoint (4, 64) vs head ({MANY}, 64)" in message


def test_a_seeded_random_init_is_drawn_as_before(exports: dict[str, Path]) -> None:
    """The meta-device check draws nothing from the RNG: the seeded random encoder is the one
    build_encoder draws from that seed, and the caller's RNG is left as it was."""
    config = read_config(exports["encoder"] / "config.json")
    torch.manual_seed(7)
    state = torch.get_rng_state()
    fresh = load_encoder(str(exports["encoder"]), drop_path=0.1, random_init=True, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(3)
    plain = build_encoder(config, drop_path_rate=0.1)
    ours, theirs = fresh.state_dict(), plain.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert fresh.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
