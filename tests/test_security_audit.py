"""What we write and publish: no credentials from URLs in config.yaml, config.json or the model
card; checkpoint rotation never deletes through a symlink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eofm.models.card import public_contract, public_path
from eofm.pretrain.checkpoint import DS_MARKER, CheckpointManager
from eofm.pretrain.config import CONFIG_NAME, load_config, save_resolved

SECRET = "s3cr3tpass"
URLS = [f"https://alice:{SECRET}@data.example.org/ds",
        f"https://data.example.org/ds?X-Amz-Signature={SECRET}&x=1",
        f"pipe:env AWS_SECRET_ACCESS_KEY={SECRET} aws s3 cp s3://b/ds/x -"]


@pytest.mark.parametrize("url", URLS)
def test_published_data_fields_hold_no_credentials(url: str) -> None:
    """config.json's ``eofm_contract.data`` and the card go through public_path/contract."""
    assert SECRET not in public_path(url)
    assert SECRET not in json.dumps(public_contract({"bands": ["B02"], "data": url}))
    assert public_path("https://data.example.org/ds") == "https://data.example.org/ds"
    assert public_path("org/hf_pretrained_model") == "org/hf_pretrained_model"


def test_probe_section_of_the_card_holds_no_credentials() -> None:
    """An eofm-probe report on a remote dataset, shown in the card (--evaluation)."""
    from eofm.models.card import _probe_section

    acc = {"accuracy": {"mean": 0.9, "std": 0.01}, "balanced_accuracy": {"mean": 0.9, "std": 0.01}}
    scores = {"linear": acc, "knn": {"10": acc}}
    report = {"data": {"kind": "class", "source": URLS[0], "samples": 10, "classes": ["a", "b"]},
              "knn_k": [10], "folds": 2, "pool": "avg", "pretrained": scores,
              "random_init": scores, "band_stats": scores}
    text = "\n".join(_probe_section(report))
    assert "data.example.org/ds" in text and SECRET not in text


def test_config_yaml_holds_no_url_credentials(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.path={URLS[0]}", f"data.build_from={URLS[1]}"], check=False)
    path = save_resolved(cfg, tmp_path)
    text = path.read_text()
    assert path.name == CONFIG_NAME and SECRET not in text
    back = yaml.safe_load(text)
    assert back["data"]["path"] == "https://***@data.example.org/ds"
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, renamed


def test_keep_last_k_never_deletes_through_a_symlinked_checkpoint(tmp_path: Path) -> None:
    """A ``step_*.pt`` that is a symlink to a file elsewhere: pruning removes the link only."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    precious = outside / "precious.pt"
    precious.write_bytes(b"keep me")
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "step_000000001.pt").symlink_to(precious)
    manager = CheckpointManager(ckpt, keep_last_k=1, rank=0)
    for step in (2, 3):
        manager.save({"step": step}, step)
    assert precious.read_bytes() == b"keep me"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_000000003.pt"]


class _FakeEngine:
    """Writes a DeepSpeed-like folder: enough for CheckpointManager.save_deepspeed's rotation."""

    def save_checkpoint(self, directory: str, tag: str, client_state: dict,
                        save_latest: bool) -> None:
        (Path(directory) / tag).mkdir(parents=True, exist_ok=True)
        (Path(directory) / tag / "mp_rank_00_model_states.pt").write_bytes(b"x")


def test_deepspeed_rotation_never_deletes_through_a_symlinked_step_folder(tmp_path: Path) -> None:
    """A ``step_*`` folder that is a symlink (complete or not) to a folder elsewhere, and a
    ``universal`` symlink: rotation never empties their targets."""
    outside = tmp_path / "elsewhere"
    (outside / "a").mkdir(parents=True)
    (outside / "a" / DS_MARKER).write_text("1\n")
    (outside / "a" / "data.bin").write_bytes(b"keep me")
    (outside / "b").mkdir()
    (outside / "b" / "data.bin").write_bytes(b"keep me too")
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "step_000000001").symlink_to(outside / "a", target_is_directory=True)
    (ckpt / "step_000000002").symlink_to(outside / "b", target_is_directory=True)  # incomplete
    (ckpt / "universal").symlink_to(outside / "b", target_is_directory=True)
    manager = CheckpointManager(ckpt, keep_last_k=1, rank=0)
    for step in (3, 4):
        manager.save_deepspeed(_FakeEngine(), step, {"step": step})
    assert (outside / "a" / "data.bin").read_bytes() == b"keep me"
    assert (outside / "b" / "data.bin").read_bytes() == b"keep me too"
    assert (ckpt / "step_000000004" / DS_MARKER).is_file()
    assert not (ckpt / "step_000000003").exists()
