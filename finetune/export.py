"""``eofm-export``: a pretraining run (its newest checkpoint) or checkpoint file -> a Hub folder.

The encoder is rebuilt from the checkpoint's resolved config exactly as pretraining built it,
its weights are loaded strictly, and its input contract is filled from the dataset manifest
and the sensor registry (bands in order, wavelengths, GSD, units, processing level, nodata,
mean/std normalisation, input and patch size, objective, data). Then
:func:`eofm.models.save_pretrained` writes the folder, and ``--push-to-hub`` uploads it with
huggingface_hub's ``HfApi`` (the token comes from ``HF_TOKEN`` or ``hf auth login``; eofm only
asks huggingface_hub whether there is one, before any work, and never passes or logs it); with
``--private`` an existing public repo is refused, never uploaded to. A Hub that cannot be
reached or refuses the upload is one error line naming the repo and the finished export folder.
The card's ``license`` (``--license``; by default the licence of the export a continued run
started from, as pretraining recorded it, else apache-2.0) also goes into timm's
``pretrained_cfg``; its ``datasets`` metadata lists only Hub dataset ids (``--dataset-id``): the
local dataset folder is named in the card's pretraining table, not linked as a Hub dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from eofm.data_shards.command import REFUSED, error, run_command, stdout_may_close
from eofm.data_shards.manifest import Manifest, load_manifest
from eofm.data_shards.outputs import unwritable_reason
from eofm.data_shards.remote import redact
from eofm.data_shards.sensors import get_sensor
from eofm.models import InputContract, ViTEncoder
from eofm.models.card import DEFAULT_LICENSE, check_license
from eofm.models.hub import hub_repo_id, load_weights, save_pretrained
from eofm.models.hub_licenses import check_license_terms
from eofm.pretrain.config import DataConfig
from eofm.pretrain.data import BandInfo, band_info, input_contract, input_gsd_note, sample_gsd
from eofm.pretrain.encoders import INIT_ORIGIN, build_encoder
from eofm.pretrain.resume import nodata_now_per_band, recorded_anew

from .checkpoint_read import (  # re-exported: their public home before the split
    ENCODER_PREFIX,
    find_checkpoint,
    load_checkpoint,
    strip_wrappers,
)
from .evaluation_check import (  # re-exported: their public home before the split
    WEIGHTS_DIGEST,
    check_evaluation,
    contract_differences,
    read_evaluation,
    weights_digest,
)
from .finetuned import finetuned_license
from .hub_push import check_dataset_ids, check_hub_token, push_folder  # re-exported too

__all__ = ["WEIGHTS_DIGEST", "check_dataset_ids", "check_evaluation", "check_hub_token",
           "contract_differences", "encoder_from_checkpoint", "export_folder_reason",
           "export_run", "find_checkpoint", "load_checkpoint", "main", "push_folder",
           "read_evaluation", "weights_digest"]

log = logging.getLogger(__name__)

def _encoder(cfg: Mapping[str, Any], bands: Sequence[str]) -> ViTEncoder:
    """The encoder exactly as pretraining built it (weights not loaded)."""
    m = cfg["model"]
    return build_encoder(m["name"], m["tokenizer"], m["img_size"], m.get("overrides") or {}, bands)


def _dataset(cfg: Mapping[str, Any], data: str | None, data_flag: str = "--data"
             ) -> tuple[BandInfo, Manifest, str]:
    """Band info, manifest and path of the pretraining dataset (``data`` overrides the config;
    ``data_flag`` is the command's flag for it, named in the advice)."""
    path = str(data or cfg["data"]["path"])
    if data is None and "***" in path and redact(path) == path:  # stored redacted: no retry
        raise ValueError(f"{path}: checkpoints keep data.path without its credentials; pass "
                         f"{data_flag} with the full URL (or a copy of the dataset)")
    manifest = load_manifest(path)
    picked = DataConfig(modalities=list(cfg["data"].get("modalities") or []),
                        bands=dict(cfg["data"].get("bands") or {}))
    has = list(manifest.modalities)
    modality = picked.modality(has) or next(iter(manifest.modalities))
    if modality not in manifest.modalities:
        raise ValueError(f"{redact(path)}: the run was pretrained on modality {modality!r} "
                         f"(its data.modalities / data.bands), this dataset has {has}; expected "
                         "the dataset the run was trained on (or a copy)")
    bands = (cfg["data"].get("bands") or {}).get(modality)
    try:
        info = band_info(manifest, modality, bands)
    except KeyError as e:
        raise ValueError(f"{redact(path)}: modality {modality!r} has bands "
                         f"{list(manifest.modalities[modality].bands)}, not {e} that the run was "
                         f"trained on (data.bands {bands}); expected the dataset the run was "
                         "trained on (or a copy)") from None
    return info, manifest, path


def _gsd_factor(ckpt: Mapping[str, Any], info: BandInfo, crop: int | None) -> float:
    """The objective's input GSD over the loaded sample's (SatMAE++ downsamples its crop), as
    the trainer wrote it into the checkpoint's contract; 1 for checkpoints without one."""
    stored = ckpt.get("contract")
    gsd = stored.get("gsd") if isinstance(stored, Mapping) else None
    return float(gsd) / sample_gsd(info, crop) if gsd else 1.0


def encoder_from_checkpoint(ckpt: Mapping[str, Any], *, data: str | None = None,
                            data_flag: str = "--data"
                            ) -> tuple[ViTEncoder, dict[str, Tensor], dict[str, Any]]:
    """(encoder with weights and contract, the objective's other tensors, model-card fields).

    The contract is the one the checkpoint was trained with (its ``contract`` entry; a
    dataset rebuilt since, e.g. with other statistics, does not change it, and a warning names
    what differs); a checkpoint without one (older) takes it from the dataset at ``data``
    (default: the config's ``data.path``), which also gives the model card's data fields.
    ``data_flag`` is the calling command's flag that gives ``data``, as its errors and
    warnings name it: ``--data`` for eofm-export, ``--pretrain-data`` for eofm-probe ``--run``.
    A run continued from an export (``model.init_from``) gives the encoder that export's
    licence, as pretraining recorded it (:func:`_inherited_license`), the way ``from_pretrained``
    gives an export's: ``pretrained_cfg.license`` and ``license_terms``.
    """
    cfg = ckpt["config"]
    state = strip_wrappers(ckpt["model"])
    card: dict[str, Any] = {}
    stored = ckpt.get("contract") if isinstance(ckpt.get("contract"), Mapping) else None
    try:
        info, manifest, path = _dataset(cfg, data, data_flag)
    except (ValueError, OSError) as e:
        if data is not None:  # asked for: never exported without it
            raise ValueError(f"{data_flag} {redact(str(data))}: cannot use it as the pretraining "
                             f"dataset ({e})") from None
        if stored is None:
            raise ValueError(
                f"data.path: cannot read the pretraining dataset ({e}); its manifest gives the "
                "bands, wavelengths and statistics of the contract and the checkpoint stores no "
                f"contract. Pass {data_flag} PATH (a copy of the dataset the run was trained on)"
            ) from None
        if data is None and "***" in str(cfg["data"].get("path")):
            log.warning("%s; the input contract is the checkpoint's, the model card leaves out "
                        "the pretraining dataset's fields", e)
        contract = InputContract.from_dict(ckpt["contract"])
        encoder = _encoder(cfg, contract.bands)
    else:
        encoder = _encoder(cfg, info.bands)
        o, crop = cfg["objective"], cfg["data"].get("crop_size")
        factor = _gsd_factor(ckpt, info, crop)
        contract = input_contract(o["name"], info, manifest, encoder, path, crop_size=crop,
                                  gsd_factor=factor)
        if stored is not None:
            trained = InputContract.from_dict(stored)
            now, then = contract.to_dict(), trained.to_dict()
            if nodata_now_per_band("nodata", then.get("nodata"), now.get("nodata")):
                # written before contracts held per-band nodata (its bands' values differ):
                # pretraining zeroed each band's own value, which the dataset gives
                log.info("%s: the checkpoint's contract predates per-band nodata; the export "
                         "records the dataset's per-band values %s", redact(path),
                         now["nodata"])
                trained = dataclasses.replace(trained, nodata=contract.nodata)
                then = trained.to_dict()
            diff = sorted(k for k in then if k != "data" and then[k] != now.get(k)
                          and not recorded_anew(k, then[k], now.get(k)))
            if diff:
                log.warning("%s: the dataset no longer gives the input contract this checkpoint "
                            "was trained with (%s differ); keeping the checkpoint's", redact(path),
                            ", ".join(diff))
            contract = trained
        card["input_gsd_note"] = input_gsd_note(info, crop, encoder.img_size, factor)
        card["native_gsd"] = [get_sensor(info.sensor).band(b).gsd_m for b in info.bands]
        card["pretraining"] = {"data_source": manifest.source or None,
                               "samples": manifest.sample_count}
    if encoder.tokenizer.bands is not None and list(contract.bands) != list(encoder.tokenizer.bands):
        raise ValueError(f"contract: bands {list(contract.bands)} differ from the encoder's "
                         f"{list(encoder.tokenizer.bands)}")
    encoder.contract = contract
    own = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    load_weights(encoder, own, strict=True)
    if (inherited := _inherited_license(ckpt)) is not None:  # its weights derive from them
        encoder.pretrained_cfg = {"license": inherited[0]}
        encoder.license_terms = inherited[1]
    rest = {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIX)}
    o, d = cfg["objective"], cfg["data"]
    card["pretraining"] = {
        "steps": int(ckpt.get("step", 0)), "global_batch_size": d.get("batch_size"),
        "mask_ratio": o.get("mask_ratio") if o["name"] in ("mae", "selectivemae", "satmaepp") else None,
        "tokenizer": cfg["model"]["tokenizer"], **card.get("pretraining", {})}
    if isinstance(ckpt.get("elapsed_s"), (int, float)):  # training wall-clock, every resume
        ranks = len(ckpt.get("data") or []) or 1
        card["pretraining"]["wall_clock_hours"] = round(ckpt["elapsed_s"] / 3600.0, 3)
        card["pretraining"]["process_hours"] = round(ckpt["elapsed_s"] * ranks / 3600.0, 3)
    if o["name"] == "softcon":  # the online encoder is exported; its settings live in params
        from eofm.pretrain.objectives.softcon import card_fields

        card["pretraining"].update(card_fields(o.get("params") or {}))
    if cfg["model"].get("init_from"):  # continual pretraining from an eofm export
        origin = str(cfg["model"]["init_from"])
        card["pretraining"]["continued_from"] = origin
        if (repo_id := _base_model(ckpt, origin)) is not None:
            card["base_model"] = repo_id
    return encoder.eval(), rest, card


def _base_model(ckpt: Mapping[str, Any], origin: str) -> str | None:
    """The Hub repo id a run continued from (the card's ``base_model``), None for a local
    export folder: as the run recorded it when it read ``model.init_from`` (``origin``), under
    the checkpoint's ``init_origin`` (:func:`eofm.pretrain.encoders.init_origin`), wherever the
    export runs. An older checkpoint without that record: :func:`hub_repo_id` of ``origin``
    here, relative to this working directory (a warning says so when it names a Hub repo: a
    relative local folder of the pretraining's directory reads as one elsewhere)."""
    record = ckpt.get(INIT_ORIGIN)
    if isinstance(record, Mapping) and record.get("kind") == "folder":
        return None
    if isinstance(record, Mapping) and record.get("kind") == "hub" and record.get("repo_id"):
        return str(record["repo_id"])
    repo_id = hub_repo_id(origin)
    if repo_id is not None:
        log.warning("model.init_from %r: read as the Hub repo %s for the card's base_model; this "
                    "checkpoint does not record how pretraining read it (older eofm), and a "
                    "local folder of that name relative to the pretraining's working directory "
                    "would be no Hub lineage", origin, repo_id)
    return repo_id


def _inherited_license(ckpt: Mapping[str, Any]) -> tuple[str, dict[str, str]] | None:
    """(licence id, an ``other`` licence's ``{"name", "link"}``) of the export a run continued
    from, as pretraining recorded it with the init origin
    (:func:`eofm.pretrain.encoders.init_origin`); None for a run not continued, or a
    checkpoint of an older eofm that did not record it."""
    record = ckpt.get(INIT_ORIGIN)
    if not isinstance(record, Mapping) or record.get("license") is None:
        return None
    terms = record.get("license_terms") or {}
    if not isinstance(terms, Mapping) or set(terms) - {"name", "link"}:
        raise ValueError(f"checkpoint {INIT_ORIGIN}.license_terms: expected {{'name': str, "
                         f"'link': str}}, got {terms!r}")
    try:
        licence = check_license(record["license"])
        name, link = check_license_terms(licence, terms.get("name"), terms.get("link"))
    except ValueError as e:
        raise ValueError(f"checkpoint {INIT_ORIGIN}.{e}") from None
    return licence, {k: v for k, v in (("name", name), ("link", link)) if v}


def _note_relicense(encoder: ViTEncoder, license: str | None, license_name: str | None,
                    card: dict[str, Any]) -> None:
    """Warn, and add a pretraining-table row, when an export of a continued run is given
    (``license``, ``license_name``) another licence than the one its weights inherit (the
    export it continued from); warn when that licence is unknown (an older checkpoint)."""
    origin = card.get("pretraining", {}).get("continued_from")
    if origin is None:
        return
    own = (getattr(encoder, "pretrained_cfg", None) or {}).get("license")
    if own is None:
        if license is None:
            log.warning("model.init_from %s: this checkpoint does not record the licence of the "
                        "export the run continued from (older eofm); the export is released "
                        "under %s: check that export's licence, and pass --license to match it",
                        origin, DEFAULT_LICENSE)
        return
    theirs = getattr(encoder, "license_terms", None) or {}
    name = (license_name or "").strip() or None  # 'other' by another name is another licence
    if license is None or (license == own and (own != "other" or name in (None,
                                                                          theirs.get("name")))):
        return
    inherited = own + (f" ({theirs['name']})" if theirs.get("name") else "")
    given = license + (f" ({name})" if name else "")
    log.warning("model.init_from %s: the run continued from an export licensed %s; this export "
                "is released under %s as asked (--license), not under the licence its weights "
                "inherit: make sure you hold the rights to relicense them", origin, inherited,
                given)
    card["pretraining"]["continued_from_license"] = (f"{inherited} (this export: {given}, set "
                                                     "explicitly)")


def run_pictures(checkpoint: Path, step: int) -> dict[str, tuple[bytes, str]]:
    """The run's newest reconstruction picture (``logging.preview_every``) at or before
    ``step``, for the model card; none when the checkpoint is not in a run's folder."""
    if checkpoint.parent.name != "checkpoints":
        return {}
    found = []
    for p in (checkpoint.parent.parent / "previews").glob("step_*.png"):
        s = p.stem.removeprefix("step_")
        if s.isdigit() and int(s) <= step:
            found.append((int(s), p))
    if not found:
        return {}
    s, p = max(found)
    return {"reconstructions.png": (p.read_bytes(), (
        f"Reconstructions at pretraining step {s} (rows: the input as the encoder saw it, the "
        f"pixels hidden from it in grey, the reconstruction; fixed samples and mask)"))}


def export_run(run_or_checkpoint: str | Path, out_dir: str | Path, *, with_decoder: bool = False,
               push_to_hub: str | None = None, private: bool = False,
               evaluation: dict | None = None, data: str | None = None,
               pictures: Mapping[str, tuple[bytes, str]] | None = None,
               dataset_ids: Sequence[str] = (), license: str | None = None,
               license_name: str | None = None, license_link: str | None = None,
               evaluation_source: str = "evaluation") -> Path:
    """Export the newest checkpoint of a run (or a checkpoint file) to ``out_dir``; its path.

    ``with_decoder`` also stores the objective's other tensors (``decoder.*`` for MAE) so
    pretraining can continue; ``evaluation`` goes into the model card once checked to be of
    this encoder (:func:`check_evaluation`; ``evaluation_source`` names it in the refusal:
    the report file); ``data`` replaces the
    config's dataset path (a moved dataset); ``pictures`` (``{name.png: (bytes, caption)}``)
    join the run's newest reconstruction picture in the card; ``dataset_ids`` (Hub dataset
    repo ids ``ORG/NAME``) go into the card's ``datasets`` metadata; ``license`` (a Hub
    licence id) into its header and timm's ``pretrained_cfg``, with ``license_name`` and
    ``license_link`` for a licence the Hub does not list (``license="other"``; an id the Hub
    may not know is warned about: :func:`eofm.models.hub_licenses.license_notes`). Without
    ``license``: a run continued from an export inherits its licence (and an ``other``
    licence's name and link: :func:`_inherited_license`), others get apache-2.0; a ``license``
    other than the inherited one is used, with a warning and a row in the card's pretraining
    table (the publisher may hold the rights; the card should not hide the change).
    """
    if license is not None:  # checked before the checkpoint is read; else once it is
        check_license_terms(check_license(license), license_name, license_link)
    ids = check_dataset_ids(dataset_ids)
    if push_to_hub is not None:
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(push_to_hub)
        except ValueError as e:
            raise ValueError(f"push_to_hub: expected a repo id ORG/NAME, got {push_to_hub!r} "
                             f"({e})") from None
        if "/" not in push_to_hub:
            raise ValueError(f"push_to_hub: expected ORG/NAME, got {push_to_hub!r}")
        check_hub_token(push_to_hub)  # before the checkpoint is read and the folder written
    path = find_checkpoint(run_or_checkpoint)
    log.info("exporting %s", path)
    encoder, rest, card = encoder_from_checkpoint(load_checkpoint(path), data=data)
    if with_decoder and not rest:
        raise ValueError(f"with_decoder: {path} holds no tensors besides the encoder's")
    if evaluation is not None:
        check_evaluation(evaluation, encoder, evaluation_source)
    _note_relicense(encoder, license, license_name, card)
    card.update(repo_id=push_to_hub, evaluation=evaluation, datasets=ids,
                license=finetuned_license(encoder, license), license_name=license_name,
                license_link=license_link)
    card["pretraining"]["checkpoint"] = path.name
    shown = {**run_pictures(path, int(card["pretraining"]["steps"])), **(pictures or {})}
    out = save_pretrained(encoder, out_dir, card=card, extra_state=rest if with_decoder else None,
                          pictures=shown)
    if push_to_hub is not None:
        push_folder(out, push_to_hub, private=private)
    return out


def probe_confusion(report_path: Path, report: Any) -> Path | None:
    """The confusion picture an eofm-probe report says it wrote beside itself (its
    ``confusion_png``, a plain file name); None for other reports or when it is gone."""
    name = report.get("confusion_png") if isinstance(report, Mapping) else None
    if not isinstance(name, str) or not name or Path(name).name != name:
        return None
    path = report_path.parent / name
    return path if path.is_file() else None


def export_folder_reason(out: str | Path) -> str | None:
    """Why ``out`` cannot become an export folder, or None when it can: a new one must be
    creatable (tried, then removed: ``os.access`` says yes to root where that fails, e.g. in
    ``/proc``), an existing one a folder with a folder creatable beside it (the export is
    written to a temporary folder there, then renamed into place)."""
    out = Path(out)
    if not os.path.lexists(out):
        return unwritable_reason(out, try_making=True)
    if not out.is_dir():
        return f"{out} exists and is not a folder"
    try:
        Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".check", dir=out.parent)).rmdir()
    except OSError as e:
        return (f"{out} cannot be replaced: no folder can be made beside it in {out.parent} "
                f"({e.strerror or e})")
    return None


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    p = argparse.ArgumentParser(
        prog="eofm-export",
        description="Export a pretrained encoder as a Hugging Face Hub folder: model.safetensors, "
                    "config.json (architecture + input contract) and a README.md model card.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a pretraining run directory (its newest checkpoint) or a step_*.pt file")
    p.add_argument("--out", required=True, help="export folder (created or replaced)")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", help="also upload to this Hub repo")
    p.add_argument("--private", action="store_true",
                   help="create the Hub repo as private; an existing public repo is refused")
    p.add_argument("--license", metavar="SPDX",
                   help="the weights' Hub licence id, e.g. apache-2.0, mit, cc-by-4.0 (default: "
                        "a run continued from an export (model.init_from) keeps that export's "
                        f"licence, others get {DEFAULT_LICENSE}; another licence than the "
                        "inherited one is warned about and noted in the card; the Hub's list: "
                        "https://huggingface.co/docs/hub/repositories-licenses); it should "
                        "respect the pretraining data's licences")
    p.add_argument("--license-name", metavar="ID",
                   help="with --license other (or an inherited other): an id for a licence the "
                        "Hub does not list, like my-license-1.0")
    p.add_argument("--license-link", metavar="URL",
                   help="with --license other (or an inherited other): an http(s) URL of its "
                        "text")
    p.add_argument("--dataset-id", action="append", default=[], metavar="ORG/NAME",
                   dest="dataset_ids", help="a Hub dataset the encoder was pretrained on, for "
                                            "the card's datasets metadata (repeatable)")
    p.add_argument("--with-decoder", action="store_true",
                   help="also store the decoder, so pretraining can continue from the export")
    p.add_argument("--data", help="the pretraining dataset, when it moved from the config's "
                                  "data.path")
    p.add_argument("--evaluation", type=Path, metavar="REPORT_JSON",
                   help="a JSON report (e.g. eofm-probe's report.json) shown in the model card; "
                        "an eofm-probe report of other weights or another input contract is "
                        "refused")
    return p


@stdout_may_close
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 on success, 2 when the input cannot be exported, 1 when the disk or the
    quota is full (the message names the export folder and the space left)."""
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if reason := export_folder_reason(a.out):  # up front, not after the checkpoint is read
        error("eofm-export", f"--out: {reason}")
        return REFUSED
    # OSError: an unreadable checkpoint or --evaluation file (a full disk is status 1)
    return run_command("eofm-export", lambda: _export(a), out=a.out,
                       refused=(ValueError, OSError),
                       interrupted=f"{a.out} holds the previous export or none until the new "
                                   "one is complete (it is replaced whole); if the upload was "
                                   f"cut short, it is: `hf upload REPO {a.out}`, or rerun")


def _export(a: argparse.Namespace) -> int:
    """Export as ``a`` says and print what was written."""
    evaluation = read_evaluation(a.evaluation) if a.evaluation else None
    pictures = {}
    confusion = probe_confusion(a.evaluation, evaluation) if a.evaluation else None
    if confusion is not None:  # eofm-probe wrote it beside, with this report
        pictures["probe_confusion.png"] = (confusion.read_bytes(), "Linear-probe confusion "
                                           "matrix of the evaluation (rows: true class)")
    out = export_run(a.checkpoint, a.out, with_decoder=a.with_decoder,
                     push_to_hub=a.push_to_hub, private=a.private, evaluation=evaluation,
                     data=a.data, pictures=pictures, dataset_ids=a.dataset_ids,
                     license=a.license, license_name=a.license_name,
                     license_link=a.license_link, evaluation_source=f"--evaluation {a.evaluation}")
    config = json.loads((out / "config.json").read_text())
    c = config["eofm_contract"]
    print(f"wrote {out}: {config['architecture']}, {len(c['bands'])} bands {c['bands']}, "
          f"input {c['input_size']}, patch {c['patch_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
