"""An export's weights are compared with the architecture its config.json asks for before that
architecture is allocated: :func:`eofm.models.from_pretrained` and timm's ``local-dir:`` path
build the encoder on the meta device, compare it with the weights file's header and only then
build it for real. A config.json of a few bytes asking for a far larger model than its weights
allocated all of it (``{"embed_dim": 8192, "depth": 24}``: about 77 GB) before the mismatch
was refused; now it is refused in the usual error, naming the tensors, with nothing allocated."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eofm.models import InputContract, create_model, from_pretrained, save_pretrained
from eofm.models.hub import build_encoder, read_config
from eofm.models.weights import read_weights

pytestmark = pytest.mark.usefixtures("one_thread")

BANDS = ["B02", "B03", "B04"]
ARCH = "vit_test_patch8"  # embed_dim 64, depth 2
# about 2.4 GB of float32 parameters (12 blocks of 2048 x 2048 x 12): more than the address
# space the loading process below is given beyond what it holds once imported
LARGER = {"embed_dim": 2048, "depth": 12, "num_heads": 16}
HEADROOM = 2**30  # bytes of address space the load may take beyond the imported interpreter


def _export(tmp_path: Path, name: str = "e", **model_args: object) -> Path:
    """A vit_test_patch8 export at 16 px whose config.json then asks for ``model_args``."""
    contract = InputContract(bands=BANDS, normalisation="meanstd",
                             stats={b: {"mean": 0.0, "std": 1.0} for b in BANDS},
                             input_size=(16, 16), patch_size=8)
    folder = save_pretrained(create_model(ARCH, bands=BANDS, img_size=16, contract=contract),
                             tmp_path / name)
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["model_args"].update(model_args)
    path.write_text(json.dumps(config))
    return folder


# loads in a fresh interpreter whose address space is capped at what it holds once eofm and
# timm are imported plus HEADROOM: the larger architecture cannot be allocated there
_LOAD_CAPPED = """
import json, resource, sys
import timm
import eofm.models as m
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]), vm + int(sys.argv[1])))
for how, folder in json.loads(sys.argv[2]):
    try:
        if how == "eofm":
            m.from_pretrained(folder)
        else:
            timm.create_model("local-dir:" + folder, pretrained=True)
        out = {"loaded": True}
    except BaseException as e:  # an allocation failure is a RuntimeError or a MemoryError
        out = {"loaded": False, "error": type(e).__name__, "message": str(e)}
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def capped_loads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """What loading the larger-config export (from_pretrained: "eofm", timm: "timm") and the
    export as it was written ("matching") gives in one capped interpreter; and the larger
    export's weights file ("weights")."""
    root = tmp_path_factory.mktemp("capped")
    larger, matching = _export(root, "larger", **LARGER), _export(root, "matching")
    loads = {"eofm": ["eofm", str(larger)], "timm": ["timm", str(larger)],
             "matching": ["eofm", str(matching)]}
    run = subprocess.run([sys.executable, "-c", _LOAD_CAPPED, str(HEADROOM),
                          json.dumps(list(loads.values()))],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    results = [json.loads(line) for line in run.stdout.strip().splitlines()[-len(loads):]]
    return {**dict(zip(loads, results, strict=True)),
            "weights": {"path": str(larger / "model.safetensors")}}


@pytest.mark.parametrize("how", ["eofm", "timm"])
def test_a_config_asking_for_a_far_larger_model_is_refused_before_it_is_allocated(
        capped_loads: dict[str, dict[str, object]], how: str) -> None:
    out, weights = capped_loads[how], capped_loads["weights"]["path"]
    assert out.get("error") == "ValueError", out  # not an allocation failure
    message = str(out["message"])
    assert message.startswith(f"{weights}: the weights do not match the config's {ARCH} "
                              "(model_args "), out
    assert "cls_token: checkpoint (1, 1, 64) vs model (1, 1, 2048)" in message
    assert "missing tensors ['blocks.10.attn.proj.bias'" in message


def test_the_matching_export_loads_in_the_same_capped_interpreter(
        capped_loads: dict[str, dict[str, object]]) -> None:
    """The cap leaves room for the export's own model: the refusal above is the check's."""
    assert capped_loads["matching"] == {"loaded": True}


def test_the_header_shapes_are_the_stored_tensors_shapes(tmp_path: Path) -> None:
    from eofm.models.weights import read_weight_shapes

    weights = _export(tmp_path) / "model.safetensors"
    assert read_weight_shapes(weights) == {k: tuple(v.shape)
                                           for k, v in read_weights(weights).items()}
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(weights.read_bytes()[:-7])
    for read in (read_weight_shapes, read_weights):
        with pytest.raises(ValueError, match=r"not a complete safetensors file") as e:
            read(cut)
        assert str(e.value).startswith(f"{cut}: ")


def test_the_encoder_is_built_as_before_from_the_same_draws(tmp_path: Path) -> None:
    """The meta build draws nothing from the RNG: the encoder the check returns is
    initialised as build_encoder initialises it (the tensors a non-strict load leaves)."""
    from eofm.models.hub import build_checked_encoder

    folder = _export(tmp_path, depth=3)
    config = read_config(folder / "config.json")
    torch.manual_seed(0)
    checked = build_checked_encoder(config, folder / "model.safetensors", strict=False)
    after = torch.rand(1)
    torch.manual_seed(0)
    plain = build_encoder(config)
    assert torch.equal(torch.rand(1), after)
    ours, theirs = checked.state_dict(), plain.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert {b.device.type for b in checked.buffers()} == {"cpu"}  # pos_embed computed
    assert torch.equal(checked.pos_embed, plain.pos_embed)


def test_a_non_strict_load_still_takes_a_deeper_config_and_refuses_a_wider_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    deeper = _export(tmp_path, "deeper", depth=3)
    stored = read_weights(deeper / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensors \['blocks\.2\.attn\.proj\.bias'"):
        from_pretrained(deeper)
    with caplog.at_level(logging.WARNING, logger="eofm.models.weights"):
        enc = from_pretrained(deeper, strict=False)
    assert len(enc.blocks) == 3
    key = "blocks.1.mlp.fc1.weight"
    assert torch.equal(enc.state_dict()[key], stored[key])
    warned = [r.getMessage() for r in caplog.records if "loading non-strictly" in r.getMessage()]
    assert len(warned) == 1 and "missing tensors ['blocks.2.attn.proj.bias'" in warned[0]
    wider = _export(tmp_path, "wider", mlp_ratio=2.0)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight: checkpoint \(256, 64\) "
                                         r"vs model \(128, 64\)"):
        from_pretrained(wider, strict=False)


def test_a_registered_factory_that_reads_its_values_while_building_still_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """A model registered outside eofm may read a tensor's values as it builds, which a meta
    tensor cannot give: it is built for real and its weights checked as they load, as before."""
    from eofm.models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    def vit_reads_values_unit(**kw: object) -> torch.nn.Module:
        model = create_model(ARCH, **kw)
        model.cls_scale = float(model.cls_token.detach().abs().sum())  # a value, not a shape
        return model

    registry.register_model(vit_reads_values_unit, timm=False)
    encoder = create_model("vit_reads_values_unit", bands=BANDS, img_size=16)
    folder = save_pretrained(encoder, tmp_path / "custom")
    with caplog.at_level(logging.INFO, logger="eofm.models.hub"):
        loaded = from_pretrained(folder)
    assert "vit_reads_values_unit cannot be built on the meta device" in caplog.text
    assert torch.equal(loaded.cls_token, encoder.cls_token)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["depth"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing tensors \['blocks\.2\.attn\.proj\.bias'"):
        from_pretrained(folder)
