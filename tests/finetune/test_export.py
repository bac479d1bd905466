"""``eofm-export`` and Hub loading on a real (tiny, 2-step) pretraining run of the bundled scene.

No test touches the network: the Hub is a pre-populated huggingface_hub cache in offline mode,
and the upload path runs against recording stand-ins for ``HfApi.create_repo/upload_folder``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file

from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.reader import ShardDataset, collate
from eofm.data_shards.sensors import get_sensor
from eofm.finetune.evaluation_check import WEIGHTS_DIGEST, weights_digest
from eofm.finetune.export import encoder_from_checkpoint, export_run, load_checkpoint, main
from eofm.finetune.probe_cli import encoder_record
from eofm.models import InputContract, create_model, from_pretrained, save_pretrained
from eofm.models.hub import EXPORT_FILES, load_exported
from eofm.pretrain.config import load_config
from eofm.pretrain.data import band_info, prepare_batch

ROOT = Path(__file__).resolve().parents[2]
ARCH = "vit_test_patch8"
SECRET = "hf_DO_NOT_LOG_0123456789abcdef"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


QS_BANDS = load_config(ROOT / "launch" / "configs" / "quickstart.yaml").data.bands["s2"]
C = len(QS_BANDS)


@pytest.fixture(scope="module")
def run(sample_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(run dir, dataset dir) of the real quickstart CLI, 2 steps of a test-size MAE."""
    tmp = tmp_path_factory.mktemp("export_run")
    out, data = tmp / "run", tmp / "s2_64"
    cmd = [sys.executable, "-m", "eofm.pretrain", "--config", "launch/configs/quickstart.yaml",
           "schedule.steps=2", f"runtime.out_dir={out}", f"data.path={data}",
           f"data.build_from={sample_data / 'sentinel2_l1c_scene'}", f"model.name={ARCH}",
           "objective.decoder_dim=32", "objective.decoder_depth=1", "objective.decoder_heads=2",
           "data.num_workers=0", "logging.progress=false"]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, data


@pytest.fixture(scope="module")
def exported(run: tuple[Path, Path], tmp_path_factory) -> Path:
    """The run exported once, encoder only."""
    return export_run(run[0], tmp_path_factory.mktemp("exported") / "tiny-mae")


def _checkpoint(run_dir: Path) -> dict:
    return load_checkpoint(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1])


def _batch(data: Path, n: int = 4) -> dict:
    it = iter(ShardDataset(data, bands={"s2": QS_BANDS}, rank=0, world_size=1,
                           shuffle_shards=False))
    return collate([next(it) for _ in range(n)])


def test_round_trip_gives_identical_outputs_on_a_real_batch(run, exported) -> None:
    run_dir, data = run
    ckpt = _checkpoint(run_dir)
    ref = create_model(ARCH, tokenizer="plain", bands=QS_BANDS, img_size=64).eval()
    ref.load_state_dict({k[8:]: v for k, v in ckpt["model"].items() if k.startswith("encoder.")})
    enc = from_pretrained(exported)
    assert not enc.training and enc.model_name == ARCH
    for k, v in ref.state_dict().items():
        assert torch.equal(v, enc.state_dict()[k]), k

    batch = _batch(data)
    info = band_info(load_manifest(data), "s2", QS_BANDS)
    x, _ = prepare_batch(batch, info, torch.device("cpu"))
    c = enc.contract  # the contract alone reproduces pretraining's normalisation
    mean = torch.tensor([c.stats[b]["mean"] for b in c.bands])[:, None, None]
    std = torch.tensor([c.stats[b]["std"] for b in c.bands])[:, None, None]
    torch.testing.assert_close((batch["s2"].float() - mean) / std, x)
    with torch.no_grad():
        assert torch.equal(ref(x), enc(x))
        assert torch.equal(ref.forward_features(x), enc.forward_features(x))
        for a, b in zip(ref.forward_intermediates(x, 2), enc.forward_intermediates(x, 2),
                        strict=True):
            assert torch.equal(a, b)


def test_folder_layout_and_model_card_hold_the_contract(run, exported, sample_data) -> None:
    _, data = run
    assert sorted(p.name for p in exported.iterdir()) == sorted([*EXPORT_FILES,
                                                                 "reconstructions.png"])
    config, state = load_exported(exported)
    assert config["architecture"] == "eofm_" + ARCH and config["num_features"] == 64
    assert "decoder" not in config["extra_state"] and not any(k.startswith("decoder.") for k in state)
    mod = load_manifest(data).modalities["s2"]
    sensor = get_sensor("s2_l1c")
    c = config["eofm_contract"]
    assert c["bands"] == QS_BANDS  # B08 then B8A then B09: the config's order, not sorted
    assert c["wavelengths"] == [sensor.band(b).center_wavelength_nm for b in QS_BANDS]
    assert c["stats"] == {b: {"mean": mod.stats[b]["mean"], "std": mod.stats[b]["std"]}
                          for b in QS_BANDS}
    assert (c["sensors"], c["gsd"], c["processing_level"], c["nodata"]) == (["s2_l1c"], 10.0,
                                                                             "L1C", 0.0)
    assert (c["input_size"], c["patch_size"], c["objective"], c["normalisation"]) == (
        [64, 64], 8, "mae", "meanstd")
    assert config["pretrained_cfg"]["input_size"] == [C, 64, 64]
    assert from_pretrained(exported).contract.to_dict() == c
    assert c["data"] == f".../{data.name}"  # the dataset's local path is not published
    for name in ("README.md", "config.json"):  # the raw files, front matter included
        raw = (exported / name).read_text()
        assert str(data.parent) not in raw and str(sample_data) not in raw, name

    card = ModelCard.load(exported / "README.md")
    meta = card.data.to_dict()
    assert meta["eofm"]["contract"] == c
    hours = _checkpoint(run[0])["elapsed_s"] / 3600.0  # training wall-clock, in the card
    assert f"| Wall clock hours | {round(hours, 3):g} |" in card.content
    assert {"earth-observation", "remote-sensing", "eofm", "s2_l1c"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "timm"
    assert "datasets" not in meta  # a local folder name is no Hub dataset id (--dataset-id is)
    assert f"| Data | .../{data.name} |" in card.text  # it is named in the pretraining table
    text = card.text
    rows = [line for line in text.splitlines() if line.startswith("| ") and " nm" not in line]
    band_rows = [r.split(" | ")[1] for r in rows if r.split(" | ")[0].strip("| ").isdigit()]
    assert band_rows == QS_BANDS
    for b in QS_BANDS:
        w = sensor.band(b).center_wavelength_nm
        assert any(r.startswith("| ") and f" {b} | {w:.6g} |" in r for r in rows), b
        assert f"| {b} | {mod.stats[b]['mean']:.6g} | {mod.stats[b]['std']:.6g} |" in text
    for needle in ("| Input size (H x W, px) | 64 x 64 |", "| Patch size (px) | 8 |",
                   "| Input GSD (m) | 10 |", "| Objective | mae |", "| Steps | 2 |",
                   "Method: `meanstd`", 'from_pretrained("ORG/NAME")', "## Evaluation"):
        assert needle in text, needle


def test_evaluation_numbers_go_into_the_card(run, tmp_path) -> None:
    ev = {"pretrained": {"linear": {"accuracy_mean": 0.81}}, "random_init": {"knn_20": 0.4},
          "encoder": "/home/someone/exports/tiny", "data": {"source": "C:\\data\\eurosat"}}
    out = export_run(run[0], tmp_path / "e", evaluation=ev)
    text = (out / "README.md").read_text()
    assert "| encoder | .../tiny |" in text and "| data / source | .../eurosat |" in text
    assert "someone" not in text and "C:" not in text  # local absolute paths are not published
    assert "| pretrained / linear / accuracy_mean | 0.81 |" in text
    assert "| random_init / knn_20 | 0.4 |" in text


def test_a_run_continued_from_a_hub_model_names_it_as_base_model(run, tmp_path) -> None:
    """model.init_from as a Hub repo id becomes the card's base_model (the Hub's lineage); a
    local folder is only named in the pretraining table."""
    ckpt = load_checkpoint(sorted((run[0] / "checkpoints").glob("step_*.pt"))[-1])
    for origin, base in (("eofm-org/s2-tiny", "eofm-org/s2-tiny"), (str(tmp_path), None)):
        ckpt["config"]["model"]["init_from"] = origin
        out = export_run(_save_ckpt(ckpt, tmp_path / "c.pt"), tmp_path / f"e{base is None}")
        card = ModelCard.load(out / "README.md")
        assert card.data.to_dict().get("base_model") == base
        assert (card.data.to_dict().get("base_model_relation") == "finetune") == bool(base)
        shown = origin if base else f".../{tmp_path.name}"  # a local absolute path: its name
        assert f"| Continued from | {shown} |" in card.text
        for name in ("README.md", "config.json"):  # the raw files, front matter included
            assert str(tmp_path) not in (out / name).read_text(), name


def _save_ckpt(ckpt: dict, path: Path) -> Path:
    torch.save(ckpt, path)
    return path


def test_the_cards_lineage_is_how_pretraining_read_init_from_wherever_it_is_exported(
        run, exported, tmp_path, monkeypatch, offline_hub) -> None:
    """A run continued from the local export exp/mae (a relative path of ORG/NAME form),
    exported from a directory without exp/mae, got base_model: exp/mae, a false Hub lineage:
    the export decided folder or Hub repo in its own working directory. The run records how it
    read model.init_from (init_origin) and the card follows it; a Hub repo is base_model."""
    from eofm.pretrain.trainer import Trainer

    run_dir, _ = run
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(exported, work / "exp" / "mae")
    offline_hub(exported, "eofm-org/s2-tiny")
    for origin, record in (("exp/mae", {"kind": "folder", "path": str(work / "exp" / "mae")}),
                           ("eofm-org/s2-tiny", {"kind": "hub", "repo_id": "eofm-org/s2-tiny",
                                                 "revision": None})):
        monkeypatch.chdir(work)  # pretraining runs here, where exp/mae is
        out = tmp_path / "runs" / origin.replace("/", "_")
        args = [f"model.init_from={origin}", f"runtime.out_dir={out}", "data.build_from=null",
                "logging.sample_keys=false", "logging.preview_every=0", "data.num_workers=0"]
        assert Trainer(load_config(run_dir / "config.yaml", args)).fit() == 0
        monkeypatch.chdir(elsewhere)  # no exp/mae here: "exp/mae" reads as a Hub id
        card = ModelCard.load(export_run(out, tmp_path / "e" / out.name) / "README.md")
        base = record.get("repo_id")
        assert card.data.to_dict().get("base_model") == base, origin
        assert (card.data.to_dict().get("base_model_relation") == "finetune") == bool(base)
        assert f"| Continued from | {origin} |" in card.text
        # with the export's licence, which the run's export inherits
        assert _checkpoint(out)["init_origin"] == {**record, "license": "apache-2.0"}


def test_a_run_resumed_elsewhere_keeps_the_lineage_its_first_launch_read(
        run, exported, tmp_path, monkeypatch) -> None:
    """A requeued job may start in another working directory, where exp/mae is not a folder:
    the resumed run does not read model.init_from, and it used to decide the lineage anew
    there (a Hub repo exp/mae). Its checkpoints keep the first launch's record."""
    from eofm.pretrain.trainer import Trainer

    run_dir, _ = run
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(exported, work / "exp" / "mae")
    out = tmp_path / "runs" / "resumed"
    args = ["model.init_from=exp/mae", f"runtime.out_dir={out}", "data.build_from=null",
            "logging.sample_keys=false", "logging.preview_every=0", "data.num_workers=0"]
    monkeypatch.chdir(work)
    assert Trainer(load_config(run_dir / "config.yaml", [*args, "schedule.steps=2"])).fit() == 0
    monkeypatch.chdir(elsewhere)
    assert Trainer(load_config(run_dir / "config.yaml", [*args, "schedule.steps=3"])).fit() == 0
    assert _checkpoint(out)["step"] == 3
    assert _checkpoint(out)["init_origin"] == {"kind": "folder",
                                               "path": str(work / "exp" / "mae"),
                                               "license": "apache-2.0"}
    card = ModelCard.load(export_run(out, tmp_path / "e") / "README.md")
    assert "base_model" not in card.data.to_dict()


def test_checkpoint_that_does_not_match_its_config_is_refused(run, tmp_path) -> None:
    ckpt = _checkpoint(run[0])
    deeper = {**ckpt, "config": {**ckpt["config"], "model": {**ckpt["config"]["model"],
                                                              "overrides": {"depth": 3}}}}
    with pytest.raises(ValueError, match=r"missing tensors \['blocks\.2\.attn\.proj\.bias'"):
        export_run(_save_ckpt(deeper, tmp_path / "a.pt"), tmp_path / "a")
    narrow = {**ckpt, "config": {**ckpt["config"], "model": {**ckpt["config"]["model"],
                                                              "overrides": {"mlp_ratio": 2.0}}}}
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight: checkpoint \(256, 64\) "
                                         r"vs model \(128, 64\)"):
        export_run(_save_ckpt(narrow, tmp_path / "b.pt"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_folder_whose_tensors_do_not_match_its_config_is_refused(exported,
                                                                         tmp_path) -> None:
    state = load_file(exported / "model.safetensors")
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    del state["norm.bias"]
    state["head.weight"] = torch.zeros(2, 64)
    state["cls_token"] = torch.zeros(1, 1, 32)
    save_file(state, bad / "model.safetensors")
    with pytest.raises(ValueError) as e:
        from_pretrained(bad)
    msg = str(e.value)
    assert "missing tensors ['norm.bias']" in msg and "unexpected tensors ['head.weight']" in msg
    assert "cls_token: checkpoint (1, 1, 32) vs model (1, 1, 64)" in msg
    with pytest.raises(ValueError, match="cls_token"):  # a shape mismatch is never loadable
        from_pretrained(bad, strict=False)
    (bad / "config.json").unlink()
    with pytest.raises(ValueError, match=r"missing \['config.json'\]"):
        from_pretrained(bad)


def test_timm_hf_hub_and_repo_id_load_offline(exported, offline_hub) -> None:
    repo_id = "eofm-test/tiny-mae"
    offline_hub(exported, repo_id)
    ref = from_pretrained(exported)
    x = torch.randn(2, C, 64, 64)
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    assert model.pretrained_cfg["hf_hub_id"] == repo_id
    assert model.contract == ref.contract
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
        assert torch.equal(from_pretrained(repo_id)(x), ref(x))
        local = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
        assert torch.equal(local(x), ref(x))
    fresh = timm.create_model(f"hf-hub:{repo_id}")  # timm's default: architecture only
    assert fresh.contract == ref.contract
    assert not torch.equal(fresh.state_dict()["norm.weight"] + fresh.cls_token.sum(),
                           ref.state_dict()["norm.weight"] + ref.cls_token.sum())
    with pytest.raises(ValueError, match="no registered pretrained weights"):
        timm.create_model(ARCH, pretrained=True)


def test_push_to_hub_calls_the_hub_api_and_never_logs_the_token(run, tmp_path, monkeypatch,
                                                                caplog, capsys,
                                                                no_network) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, *args, **kwargs):
        calls.append(("create_repo", args, kwargs))
        return "https://huggingface.co/org/tiny-mae"

    def upload_folder(self, *args, **kwargs):
        calls.append(("upload_folder", args, kwargs))
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        assert files == sorted([*EXPORT_FILES, "reconstructions.png"])  # the finished folder
        return type("Commit", (), {"commit_url": "https://huggingface.co/org/tiny-mae/commit/1"})

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "repo_info", _repo_info(private=True))
    caplog.set_level("DEBUG")
    out = tmp_path / "pushed"
    assert main([str(run[0]), "--out", str(out), "--push-to-hub", "org/tiny-mae",
                 "--private"]) == 0
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    (_, args, kw), (_, _, up) = calls
    assert (args or (kw.pop("repo_id"),)) == ("org/tiny-mae",)
    assert kw == {"repo_type": "model", "private": True, "exist_ok": True}
    assert up["repo_id"] == "org/tiny-mae" and up["repo_type"] == "model"
    assert Path(up["folder_path"]) == out and "token" not in up
    assert 'from_pretrained("org/tiny-mae")' in (out / "README.md").read_text()
    printed = capsys.readouterr()
    for text in (caplog.text, printed.out, printed.err):
        assert SECRET not in text
    calls.clear()
    assert main([str(run[0]), "--out", str(tmp_path / "x"), "--push-to-hub", "no repo"]) == 2
    assert "push_to_hub" in capsys.readouterr().err and not calls
    assert not (tmp_path / "x").exists()


def _repo_info(private: bool):
    """A stand-in for ``HfApi.repo_info`` of an existing repo of that visibility."""
    def repo_info(self, repo_id, **kwargs):
        return type("RepoInfo", (), {"id": repo_id, "private": private})
    return repo_info


def test_private_push_to_an_existing_public_repo_is_refused(run, tmp_path, monkeypatch, capsys,
                                                            no_network) -> None:
    """create_repo(exist_ok=True) leaves an existing repo public: --private checks and uploads
    nothing; without --private the same repo is pushed to."""
    monkeypatch.setenv("HF_TOKEN", SECRET)  # a push without a token is refused up front
    calls: list[str] = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: calls.append("create_repo"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *a, **k: calls.append("upload"))
    monkeypatch.setattr(HfApi, "repo_info", _repo_info(private=False))
    ckpt = sorted((run[0] / "checkpoints").glob("step_*.pt"))[-1]
    argv = [str(ckpt), "--out", str(tmp_path / "e"), "--push-to-hub", "org/public"]
    assert main([*argv, "--private"]) == 2
    err = capsys.readouterr().err
    assert "'org/public' already exists and is public" in err and "nothing was uploaded" in err
    assert calls == ["create_repo"]
    calls.clear()
    assert main(argv) == 0 and calls == ["create_repo", "upload"]


def test_license_and_hub_dataset_ids_from_the_cli(run, tmp_path, capsys) -> None:
    ckpt = sorted((run[0] / "checkpoints").glob("step_*.pt"))[-1]
    out = tmp_path / "lic"
    assert main([str(ckpt), "--out", str(out), "--license", "cc-by-4.0", "--dataset-id",
                 "org/ssl4eo-s12", "--dataset-id", "org/s2-l1c"]) == 0
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-4.0" and meta["datasets"] == ["org/ssl4eo-s12", "org/s2-l1c"]
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["license"] == \
        "cc-by-4.0"
    assert "released under `cc-by-4.0`" in card.text
    capsys.readouterr()
    other = tmp_path / "other"
    assert main([str(ckpt), "--out", str(other), "--license", "other", "--license-name",
                 "esa-data-terms", "--license-link", "https://esa.int/terms"]) == 0
    meta = ModelCard.load(other / "README.md").data.to_dict()
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other", "esa-data-terms", "https://esa.int/terms")
    capsys.readouterr()
    for flags, needle in ((["--license", "Apache 2.0"], "license: expected a Hub licence id"),
                          (["--license", "other", "--license-name", " "],
                           "license_name: expected an id for the licence like 'my-license-1.0'"),
                          (["--license", "other", "--license-link", "https://a b"],
                           "license_link: expected an http(s) URL"),
                          (["--license", "other", "--license-link", "LICENSE"],
                           "license_link: expected an http(s) URL of the licence's text"),
                          (["--license-name", "terms"], "license_name: only with license "
                                                        "'other' (the Hub reads them only then), "
                                                        "got license 'apache-2.0'"),
                          (["--dataset-id", "s2_64"], "dataset_id: expected Hub dataset repo")):
        assert main([str(ckpt), "--out", str(tmp_path / "bad"), *flags]) == 2
        assert needle in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_with_decoder_stores_the_decoder_tensors(run, tmp_path) -> None:
    ckpt = _checkpoint(run[0])
    out = export_run(run[0], tmp_path / "dec", with_decoder=True)
    config, state = load_exported(out)
    assert config["extra_state"] == ["decoder"]
    dec = {k: v for k, v in ckpt["model"].items() if k.startswith("decoder.")}
    assert dec and {k for k in state if k.startswith("decoder.")} == set(dec)
    for k, v in dec.items():
        assert torch.equal(state[k], v), k
    enc = from_pretrained(out)  # the encoder still loads strictly
    assert not any(k.startswith("decoder.") for k in enc.state_dict())
    assert "decoder tensors" in (out / "README.md").read_text()


def test_cli_as_written_with_run_dir_and_checkpoint_file(run, tmp_path, capsys) -> None:
    exe = Path(sys.executable).with_name("eofm-export")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "eofm.finetune.export"]
    out = tmp_path / "from_run"
    done = subprocess.run([*cmd, str(run[0]), "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True)  # the installed command, as written
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}" in done.stdout and sorted(os.listdir(out)) == sorted(
        [*EXPORT_FILES, "reconstructions.png"])
    ckpt = sorted((run[0] / "checkpoints").glob("*.pt"))[-1]
    assert main([str(ckpt), "--out", str(tmp_path / "from_file")]) == 0
    x = torch.randn(1, C, 64, 64)
    with torch.no_grad():
        assert torch.equal(from_pretrained(out)(x), from_pretrained(tmp_path / "from_file")(x))
    capsys.readouterr()
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run directory or checkpoint file" in capsys.readouterr().err


def test_a_finetune_run_is_refused_with_where_its_own_export_is(run, tmp_path, capsys) -> None:
    """eofm-export pointed at an eofm-finetune run crashed with KeyError 'model' and a
    traceback (status 1); it is refused in one line naming the run's own export and its
    loader (status 2). A config lacking a pretraining section is named, not a KeyError."""
    from eofm.finetune.finetune_config import FinetuneConfig
    from eofm.pretrain.config import to_dict

    ckpt = _checkpoint(run[0])
    ft = tmp_path / "ft"
    (ft / "checkpoints").mkdir(parents=True)
    cfg = to_dict(FinetuneConfig())  # what Finetuner._client_state stores
    state = {"model": ckpt["model"], "step": 10, "config": cfg, "task": "classification",
             "num_outputs": 3, "target_norm": [0.0, 1.0], "contract": ckpt["contract"]}
    _save_ckpt(state, ft / "checkpoints" / "step_000000010.pt")
    for model_folder in (False, True):
        if model_folder:
            (ft / "model").mkdir()
        capsys.readouterr()
        assert main([str(ft), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "KeyError" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert "an eofm-finetune checkpoint" in err and "eofm-export exports pretraining" in err
        assert f"load_finetuned('{ft / 'model'}')" in err
        assert (f"its export is {ft / 'model'}" in err) == model_folder, err
        assert not (tmp_path / "o").exists()
    _save_ckpt({**state, "config": {"model": ckpt["config"]["model"]}}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"odd.pt: not an eofm pretraining checkpoint; its "
                                         r"config lacks the sections \['objective', 'data'\]"):
        load_checkpoint(tmp_path / "odd.pt")


def test_replaces_an_export_but_never_a_foreign_folder(run, exported, tmp_path) -> None:
    out = tmp_path / "again"
    shutil.copytree(exported, out)
    (out / "model.safetensors").write_bytes(b"stale")
    export_run(run[0], out)
    assert load_file(out / "model.safetensors").keys() == load_file(
        exported / "model.safetensors").keys()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"holds \['notes.txt'\]"):
        export_run(run[0], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_moved_dataset_needs_data_or_a_stored_contract(run, exported, tmp_path) -> None:
    ckpt = _checkpoint(run[0])
    # the trainer stores the contract in every checkpoint (the export publishes its data's
    # folder name only); an older one without it:
    public = {**ckpt["contract"], "data": f".../{run[1].name}"}
    assert InputContract.from_dict(public) == from_pretrained(exported).contract
    ckpt = {k: v for k, v in ckpt.items() if k != "contract"}
    moved = {**ckpt, "config": {**ckpt["config"], "data": {**ckpt["config"]["data"],
                                                            "path": str(tmp_path / "gone")}}}
    path = _save_ckpt(moved, tmp_path / "moved.pt")
    with pytest.raises(ValueError, match="--data PATH"):
        export_run(path, tmp_path / "a")
    out = export_run(path, tmp_path / "b", data=str(run[1]))
    contract = from_pretrained(exported).contract
    assert from_pretrained(out).contract.stats == contract.stats
    with_contract = {**moved, "contract": contract.to_dict()}
    out = export_run(_save_ckpt(with_contract, tmp_path / "c.pt"), tmp_path / "c")
    assert from_pretrained(out).contract == contract


@pytest.mark.parametrize("kind", ["grouped", "spectral"])
def test_other_tokenizers_round_trip(kind: str, tmp_path) -> None:
    bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    torch.manual_seed(0)
    enc = create_model(ARCH, tokenizer=kind, bands=bands, img_size=32).eval()
    out = save_pretrained(enc, tmp_path / kind)
    loaded = from_pretrained(out)
    x = torch.randn(2, len(bands), 32, 32)
    kw = {}
    if kind == "spectral":
        s2 = get_sensor("s2_l2a")
        kw = {"wavelengths": torch.tensor([s2.band(b).center_wavelength_nm for b in bands]),
              "bandwidths": torch.tensor([s2.band(b).bandwidth_nm for b in bands])}
    with torch.no_grad():
        assert torch.equal(enc(x, **kw), loaded(x, **kw))
    assert loaded.model_overrides == enc.model_overrides


def test_unexportable_encoders_are_refused(tmp_path) -> None:
    from eofm.models import build_tokenizer

    tok = build_tokenizer("plain", bands=["R", "G", "B"], patch_size=8, embed_dim=64)
    with pytest.raises(ValueError, match="Tokenizer instance cannot be exported"):
        save_pretrained(create_model(ARCH, tokenizer=tok, img_size=32), tmp_path / "t")
    with pytest.raises(ValueError, match="extra_state"):
        save_pretrained(create_model(ARCH, img_size=32), tmp_path / "u",
                        extra_state={"norm.weight": torch.zeros(1)})


def test_the_trained_contract_wins_over_a_rebuilt_dataset(run, exported, tmp_path,
                                                          caplog) -> None:
    """A dataset rebuilt after training (here: other statistics) does not change the contract
    the encoder was trained with; the export keeps the checkpoint's and says what differs."""
    ckpt = _checkpoint(run[0])
    trained = InputContract.from_dict(ckpt["contract"])
    band = trained.bands[0]
    shifted = {**trained.stats, band: {**trained.stats[band],
                                       "mean": trained.stats[band]["mean"] + 7.0}}
    ckpt["contract"] = {**ckpt["contract"], "stats": shifted}  # as trained on other statistics
    with caplog.at_level("WARNING"):
        out = export_run(_save_ckpt(ckpt, tmp_path / "c.pt"), tmp_path / "e")
    assert from_pretrained(out).contract.stats[band]["mean"] == shifted[band]["mean"]
    assert "no longer gives the input contract this checkpoint was trained with (stats " \
           "differ)" in caplog.text


def test_the_card_shows_the_runs_reconstructions_and_the_probe(run, tmp_path) -> None:
    """An export of a run with reconstruction pictures carries the newest one (and a probe's
    confusion matrix given beside its report), named in the card; replacing it works."""
    from eofm.data_shards.png import read_png

    previews = sorted((run[0] / "previews").glob("step_*.png"))
    assert previews  # the quickstart config draws them
    report = tmp_path / "probe" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"linear": {"accuracy": 0.5}, "confusion_png": None}))
    shutil.copy(previews[-1], report.parent / "confusion.png")
    out = tmp_path / "export"
    # a picture the report does not name (left by an earlier report) is not this report's
    assert main([str(run[0]), "--out", str(out), "--evaluation", str(report)]) == 0
    assert "probe_confusion" not in (out / "README.md").read_text()
    assert not (out / "probe_confusion.png").exists()
    report.write_text(json.dumps({"linear": {"accuracy": 0.5}, "confusion_png": "confusion.png"}))
    assert main([str(run[0]), "--out", str(out), "--evaluation", str(report)]) == 0
    card = (out / "README.md").read_text()
    assert "## Pictures" in card and "(reconstructions.png)" in card
    assert "(probe_confusion.png)" in card
    assert (read_png(out / "reconstructions.png") == read_png(previews[-1])).all()
    assert main([str(run[0]), "--out", str(out)]) == 0  # replaced: pictures are an export's
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json",
                                                     "model.safetensors", "reconstructions.png"]
    with pytest.raises(ValueError, match="pictures: expected PNG files named like"):
        save_pretrained(from_pretrained(out), tmp_path / "x", pictures={"A b.png": (b"x", "c")})


def test_pretraining_continues_from_an_export_with_its_decoder(run, tmp_path, caplog) -> None:
    """model.init_from an export made with --with-decoder: at step 0 the new run's decoder is
    the export's; a decoder of other shapes, or another objective, is named and left fresh."""
    from eofm.pretrain.objectives import build_objective
    from eofm.pretrain.trainer import Trainer

    run_dir, data = run
    out = export_run(run_dir, tmp_path / "dec", with_decoder=True)
    _, state = load_exported(out)
    dec = {k: v for k, v in state.items() if k.startswith("decoder.")}
    assert dec
    args = [f"model.init_from={out}", f"runtime.out_dir={tmp_path / 'next'}",
            "logging.sample_keys=false", "data.num_workers=0"]
    info = band_info(load_manifest(data), "s2", QS_BANDS)
    with caplog.at_level(logging.INFO, logger="eofm"):
        build_objective(load_config(run_dir / "config.yaml", args), info)
    assert f"model.init_from {out}: loaded its {len(dec)} decoder.* tensors" in caplog.text
    caplog.clear()
    wider = build_objective(load_config(run_dir / "config.yaml",
                                        [*args, "objective.decoder_dim=48"]), info)
    assert "do not fit this run's mae objective" in caplog.text and "shape mismatch" in caplog.text
    assert "decoder starts fresh" in caplog.text and wider.decoder is not None
    caplog.clear()
    build_objective(load_config(run_dir / "config.yaml", [
        *args, "objective={_replace_: true, name: softcon, params: {proj_hidden_dim: 64, "
        "proj_dim: 32, pred_hidden_dim: 64}}"]), info)
    assert "tensors of a 'mae' objective; this run trains 'softcon', so they were not used" \
        in caplog.text
    torch.manual_seed(123)  # another init than the run's: equal tensors come from the export
    ours = Trainer(load_config(run_dir / "config.yaml", args)).objective.state_dict()
    for k, v in dec.items():  # the trainer's objective at step 0
        assert torch.equal(ours[k], v), k


def test_a_run_whose_checkpoints_are_all_unreadable_says_so(tmp_path, capsys) -> None:
    """Not "no checkpoint found": how many there are and why each one is not exported."""
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "step_000000006").mkdir(parents=True)  # a DeepSpeed write that never finished
    (ckpts / "step_000000004.pt").write_bytes(b"PK\x03\x04 truncated")
    (ckpts / "step_000000002.pt").write_bytes(b"")
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert (f"{ckpts}: 3 checkpoint(s) found, none readable: step_000000006/: incomplete "
            f"DeepSpeed checkpoint (no COMPLETE: its write did not finish); step_000000004.pt: "
            f"not a complete torch archive (14 bytes: truncated or corrupt); step_000000002.pt: "
            f"empty file; nothing to export") in err
    assert "no checkpoint found" not in err and not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    assert main([str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err


# ---------------------------------------------------------------- --evaluation of this encoder
def test_the_weights_digest_is_the_encoders_wherever_it_was_loaded_from(run, exported,
                                                                         tmp_path) -> None:
    """Exports of one checkpoint are byte-identical only with the same --with-decoder (the
    decoder's tensors share the file): the digest eofm-probe records is of the encoder's
    tensors, so it is the same for both exports and the checkpoint itself, and changes with
    any weight."""
    with_decoder = export_run(run[0], tmp_path / "dec", with_decoder=True)
    files = [hashlib.sha256((f / "model.safetensors").read_bytes()).hexdigest()
             for f in (exported, with_decoder)]
    assert files[0] != files[1]
    ckpt = _checkpoint(run[0])
    own, _, _ = encoder_from_checkpoint(ckpt)
    digest = weights_digest(from_pretrained(exported))
    assert weights_digest(from_pretrained(with_decoder)) == digest == weights_digest(own)
    own.norm.bias.data[0] += 1e-6
    assert weights_digest(own) != digest


def _other_weights(run_dir: Path, path: Path) -> Path:
    """The run's checkpoint with one encoder weight nudged: another encoder, same contract."""
    ckpt = _checkpoint(run_dir)
    key = next(k for k in ckpt["model"] if k.endswith("encoder.norm.bias"))
    ckpt["model"][key] = ckpt["model"][key] + 0.5
    return _save_ckpt(ckpt, path)


def _report(path: Path, export: Path, **change) -> Path:
    """An eofm-probe report.json of ``export`` (what eofm-probe records of the encoder it
    probed), with ``change``s to its fields (None removes one)."""
    report = {"encoder": str(export), **encoder_record(from_pretrained(export)),
              "pretrained": {"linear": {"accuracy": {"mean": 0.93, "std": 0.01}}}}
    for k, v in change.items():
        if v is None:
            del report[k]
        else:
            report[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def test_an_evaluation_of_other_weights_is_refused(run, exported, tmp_path, capsys) -> None:
    """A probe report of another encoder was printed into the card as "This encoder"."""
    report = _report(tmp_path / "probe" / "report.json", exported)
    for flags in ([], ["--with-decoder"]):  # the probed checkpoint: accepted
        assert main([str(run[0]), "--out", str(tmp_path / "same"), "--evaluation", str(report),
                     *flags]) == 0
    assert "0.93" in (tmp_path / "same" / "README.md").read_text()
    capsys.readouterr()
    other = _other_weights(run[0], tmp_path / "other.pt")
    assert main([str(other), "--out", str(tmp_path / "o"), "--evaluation", str(report)]) == 2
    err = capsys.readouterr().err
    assert f"--evaluation {report}: this evaluation was made on another encoder" in err
    assert f"weights ({WEIGHTS_DIGEST}" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_an_older_report_is_checked_by_its_contract(run, exported, tmp_path, capsys,
                                                    caplog) -> None:
    """Without the digest (an older eofm-probe) the contract and architecture are compared:
    a match is accepted with a warning, a difference refused naming it."""
    other = _other_weights(run[0], tmp_path / "other.pt")
    old = _report(tmp_path / "old" / "report.json", exported, **{WEIGHTS_DIGEST: None})
    with caplog.at_level("WARNING"):
        assert main([str(other), "--out", str(tmp_path / "o1"), "--evaluation", str(old)]) == 0
    assert "made by an older eofm-probe without the encoder weights digest" in caplog.text
    contract = from_pretrained(exported).contract.to_dict()
    band = contract["bands"][0]
    stats = {**contract["stats"], band: {**contract["stats"][band], "mean": 1.0}}
    cases = (("stats", stats, f"stats ({band}: "),
             ("input_size", [32, 32], "input size ([32, 32] in the report"))
    for field, value, said in cases:
        capsys.readouterr()
        bad = _report(tmp_path / field / "report.json", exported,
                      **{WEIGHTS_DIGEST: None, "contract": {**contract, field: value}})
        assert main([str(run[0]), "--out", str(tmp_path / "o2"), "--evaluation", str(bad)]) == 2
        err = capsys.readouterr().err
        assert f"--evaluation {bad}: this evaluation was made on another encoder" in err
        assert said in err, err
    assert not (tmp_path / "o2").exists()


def test_the_cards_evaluation_states_how_the_probe_data_differed_from_the_contract(
        run, exported, tmp_path) -> None:
    """eofm-probe's report.json records how its data differed from the encoder's input
    contract (``preprocess``: differences overridden, noted, fixed by preprocessing), and its
    report.md and printout state them; the card showed the scores without them (e.g. an L2A
    dataset's numbers for an L1C encoder with other statistics, said nowhere). They follow
    the table, the overridden ones first, as eofm-probe prints them; a fixed test set's too."""
    scores = {"linear": {"accuracy": {"mean": 0.93, "std": 0.01}}}
    methods = {m: scores for m in ("pretrained", "random_init", "band_stats")}
    pre = {"fixed": ["resized (64, 64) -> (32, 32) (bilinear)"],
           "notes": ["different processing_level: the contract expects 'L1C', the batch has "
                     "'L2A'"],
           "overridden": ["different units: the contract expects 'dn', the batch has\n'refl'"]}
    test_pre = {"fixed": [], "notes": ["different GSD: the contract expects 10 m, the batch "
                                       "has 20 m"], "overridden": []}
    report = _report(tmp_path / "probe" / "report.json", exported, **methods, preprocess=pre,
                     override_contract=True, test_preprocess=test_pre)
    out = tmp_path / "e"
    assert main([str(run[0]), "--out", str(out), "--evaluation", str(report)]) == 0
    section = (out / "README.md").read_text().split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    assert "| This encoder | 0.930 ± 0.010 |" in section
    listed = [x for x in section.splitlines() if x.startswith("- ")]
    assert listed == [
        "- OVERRIDDEN contract difference: different units: the contract expects 'dn', the "
        "batch has 'refl'",
        "- note: different processing_level: the contract expects 'L1C', the batch has 'L2A'",
        "- fixed by preprocessing: resized (64, 64) -> (32, 32) (bilinear)",
        "- test set note: different GSD: the contract expects 10 m, the batch has 20 m"], section
    assert "How the evaluation data differed from this encoder's input contract" in section
    assert section.index("| This encoder") < section.index("- OVERRIDDEN")
    # no difference recorded: said so; a report without the record (older or other): nothing
    none = {"fixed": [], "notes": [], "overridden": []}
    for record, said in (({"preprocess": none}, True), ({}, False)):
        report = _report(tmp_path / "p2" / "report.json", exported, **methods, **record)
        assert main([str(run[0]), "--out", str(out), "--evaluation", str(report)]) == 0
        card = (out / "README.md").read_text()
        assert ("satisfied this encoder's input contract (eofm-probe recorded no difference)"
                in card) is said
        assert "differed from this encoder's input contract" not in card


def test_a_mistyped_local_path_is_not_asked_of_the_hub(exported, offline_hub, tmp_path,
                                                       monkeypatch) -> None:
    """'exports/nope' (a typo of a local export) looked like ORG/NAME and went to the Hub,
    retrying for half a minute offline before failing; 'hf-hub:ORG/NAME' still means the Hub
    when ORG is also a folder here."""
    import huggingface_hub

    (tmp_path / "exports").mkdir()
    shutil.copytree(exported, tmp_path / "exports" / "tiny")
    offline_hub(exported, "exports/tiny-mae")
    monkeypatch.chdir(tmp_path)
    calls: list[str] = []
    download = huggingface_hub.hf_hub_download

    def spy(repo_id, *a, **kw):
        calls.append(repo_id)
        return download(repo_id, *a, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with pytest.raises(ValueError, match=r"'exports/tiyn': no such export folder; 'exports' is "
                                         r"a folder here and holds \[tiny\]; for the Hub repo of "
                                         r"that name, pass 'hf-hub:exports/tiyn'"):
        from_pretrained("exports/tiyn")
    assert calls == []
    ref = from_pretrained("exports/tiny")
    hub = from_pretrained("hf-hub:exports/tiny-mae")
    assert calls == ["exports/tiny-mae", "exports/tiny-mae"]
    x = torch.randn(1, C, 64, 64)
    with torch.no_grad():
        assert torch.equal(hub(x), ref(x))


def test_one_parser_of_hub_ids_and_timm_reads_the_hub_when_org_is_a_folder(
        exported, offline_hub, tmp_path, monkeypatch) -> None:
    """hf-hub:ORG/NAME was known to the loader only: cards lost base_model for it, and timm's
    hf-hub: path was refused as a mistyped local path when ORG was also a folder here."""
    from eofm.models.hub import hub_repo_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme").mkdir()
    (tmp_path / "local" / "enc").mkdir(parents=True)
    assert hub_repo_id("hf-hub:acme/enc@v1") == "acme/enc"
    assert hub_repo_id("acme/enc@main") == "acme/enc"
    assert hub_repo_id("local/enc") is None  # a folder here
    assert hub_repo_id("hf-hub:local/enc") == "local/enc"
    assert hub_repo_id("runs/x/y") is None and hub_repo_id("s2_64") is None
    offline_hub(exported, "acme/enc")
    model = timm.create_model("hf-hub:acme/enc", pretrained=True).eval()
    x = torch.randn(1, C, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), from_pretrained(exported)(x))
