"""Writing an eofm export folder (:func:`save_pretrained`): ``model.safetensors``,
``config.json`` and ``README.md``, atomically; :mod:`eofm.models.hub` reads it back.

``config.json`` holds the registered architecture (its timm name), the encoder's
``create_model`` overrides less the attention backend (the loading machine picks that), timm's
``pretrained_cfg`` and the published input contract under ``eofm_contract``. Nothing is
pickled: weights are safetensors, with a canonical (sorted) header so two exports of the same
weights are the same bytes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from .card import DEFAULT_LICENSE, check_license, public_contract, render_model_card
from .contract import InputContract
from .hub_licenses import check_license_terms, license_notes
from .normalise import normalisation_params
from .registry import timm_architecture
from .tokenizers import Tokenizer
from .vit import ViTEncoder

__all__ = ["CARD_NAME", "CONFIG_NAME", "EXPORT_FILES", "NOT_EXPORTED", "PICTURE_NAME",
           "WEIGHTS_NAME", "encoder_config", "save_pretrained"]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
PICTURE_NAME = re.compile(r"^[a-z0-9_]+\.png$")  # pictures an export may carry for its card
# create_model overrides config.json's model_args leave out: the contract has its own key; the
# attention backend is how this machine computes the same attention, chosen where it runs
NOT_EXPORTED = ("contract", "attn_backend")


def _eofm_version() -> str:
    """The installed eofm version, or "unknown" from a bare checkout."""
    try:
        return metadata.version("eofm")
    except metadata.PackageNotFoundError:
        return "unknown"


def _jsonable(value: Any, where: str) -> Any:
    """``value`` with tuples as lists; a ValueError names the first part JSON cannot hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{where}: a {type(value).__name__} cannot be written to config.json; "
                     "build the encoder with create_model(name, **overrides) using plain values "
                     "(strings, numbers, lists, dicts)")


def _model_args(encoder: ViTEncoder) -> dict[str, Any]:
    """The encoder's ``create_model`` overrides, JSON-ready, without the contract and without
    ``attn_backend``: the attention kernel is the machine's choice, not the model's (every
    backend computes the same attention), and an export of a GPU run with ``xformers`` would
    fail at its first forward wherever xFormers or CUDA is missing (:data:`NOT_EXPORTED`)."""
    if not hasattr(encoder, "model_name"):
        raise ValueError("encoder: has no model_name; build it with eofm.models.create_model "
                         "so the export can name its architecture")
    over = {k: v for k, v in getattr(encoder, "model_overrides", {}).items()
            if k not in NOT_EXPORTED}
    if isinstance(over.get("tokenizer"), Tokenizer):
        raise ValueError("model_args.tokenizer: a Tokenizer instance cannot be exported; pass "
                         "tokenizer='plain'|'grouped'|'spectral' with its keyword arguments")
    return _jsonable(over, "model_args")


def _timm_cfg(encoder: ViTEncoder, contract: InputContract, license: str = DEFAULT_LICENSE
              ) -> dict[str, Any]:
    """timm ``pretrained_cfg`` fields (input size, per-band mean/std in raw units, license)."""
    h, w = contract.input_size or encoder.img_size
    cfg: dict[str, Any] = {
        "input_size": [len(contract.bands), h, w], "fixed_input_size": False,
        "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": 0,
        "first_conv": None, "classifier": None, "license": check_license(license),
        "description": "eofm encoder; mean/std are per band in raw pixel units, see eofm_contract",
    }
    # timm's (x - mean) / std: the contract's shift and scale (p2, p98 - p2: percentile); no
    # usable statistics: timm's cfg says nothing rather than something wrong
    with contextlib.suppress(ValueError):
        cfg["mean"], cfg["std"] = normalisation_params(contract)
    return cfg


def encoder_config(encoder: ViTEncoder, extra_state: Sequence[str] = (), *,
                   license: str = DEFAULT_LICENSE, license_name: str | None = None,
                   license_link: str | None = None) -> dict[str, Any]:
    """The ``config.json`` content for ``encoder``; ``extra_state``: extra tensor prefixes;
    ``license``: the weights' Hub licence id (timm's ``pretrained_cfg.license``), with
    ``license_name`` and ``license_link`` for ``other`` (under ``license_terms``: timm's
    ``pretrained_cfg`` takes no other keys; a fine-tune of the export inherits them).
    The contract is the published one: a local absolute path in its ``data`` is cut to its
    last part (:func:`eofm.models.card.public_contract`), so the exporter's folders never
    reach config.json or the card."""
    contract = encoder.contract
    terms = {k: v for k, v in (("name", license_name), ("link", license_link)) if v}
    return {
        **({"license_terms": terms} if terms else {}),
        "architecture": timm_architecture(encoder.model_name),  # what timm.create_model calls
        "model_args": _model_args(encoder),
        "num_features": encoder.num_features,
        "global_pool": encoder.global_pool,
        "pretrained_cfg": _timm_cfg(encoder, contract, license),
        "eofm_contract": public_contract(_jsonable(contract.to_dict(), "eofm_contract")),
        "extra_state": sorted(extra_state),
        "eofm_version": _eofm_version(),
    }


def _plain_state(encoder: ViTEncoder, extra_state: Mapping[str, Tensor] | None
                 ) -> tuple[dict[str, Tensor], list[str]]:
    """Encoder + extra tensors on the CPU, contiguous, unshared; and the extra prefixes."""
    state = dict(encoder.state_dict())
    extra = dict(extra_state or {})
    bad = sorted(k for k in extra if "." not in k or k.split(".", 1)[0] in
                 {s.split(".", 1)[0] for s in state})
    if bad:
        raise ValueError(f"extra_state: names must look like 'prefix.name' with a prefix the "
                         f"encoder does not use (e.g. 'decoder.'); got {bad[:5]}")
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for k, v in {**state, **extra}.items():
        t = v.detach().cpu().contiguous()
        if t.data_ptr() in seen and t.numel():  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.data_ptr())
        out[k] = t
    return out, sorted({k.split(".", 1)[0] for k in extra})


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that holds anything an export does not write."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"out_dir: {out_dir} exists and is not a folder")
    others = sorted(p.name for p in out_dir.iterdir()
                    if p.name not in EXPORT_FILES and not PICTURE_NAME.match(p.name))
    if others:
        raise ValueError(f"out_dir: {out_dir} holds {others[:5]}, which an export does not "
                         "write; refusing to replace it (choose an empty or new folder)")


_RUST_OS_ERROR = re.compile(r"(?:os error |code: )(\d+)")


def _os_error_code(text: str) -> int:
    """The errno a safetensors (Rust) error message quotes (``... (os error 28)`` or
    ``Os { code: 28, ... }``: ENOSPC), so a full disk stays recognisable as one; else EIO."""
    m = _RUST_OS_ERROR.search(text)
    return int(m.group(1)) if m else errno.EIO


def save_pretrained(encoder: ViTEncoder, out_dir: str | Path, *,
                    card: Mapping[str, Any] | None = None,
                    extra_state: Mapping[str, Tensor] | None = None,
                    pictures: Mapping[str, tuple[bytes, str]] | None = None,
                    config_extra: Mapping[str, Any] | None = None) -> Path:
    """Write model.safetensors, config.json and README.md to ``out_dir`` atomically; its path.

    ``card``: model-card fields (see :func:`eofm.models.card.render_model_card`; its
    ``license`` also goes into config.json's timm ``pretrained_cfg``; without one, the
    encoder's own: :func:`_export_license`);
    ``extra_state``: more tensors to store, named ``prefix.*`` (e.g. the MAE decoder);
    ``pictures``: ``{file name: (PNG bytes, caption)}`` written beside them and shown in the
    card (names like ``reconstructions.png``); ``config_extra``: more top-level config.json
    keys (e.g. a fine-tuned task's record), never one the export itself writes. A failed
    write (a full disk) raises an ``OSError`` naming ``out_dir``; the temporary folder is
    removed and an export already at ``out_dir`` stays as it was. Every file and the folder
    are fsynced before the folder is renamed into place, and the renames before a previous
    export is removed: a crash never leaves ``out_dir`` with data that did not reach the disk.
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    pictures = dict(pictures or {})
    bad = [n for n, (data, _) in pictures.items()
           if not PICTURE_NAME.match(n) or not data.startswith(b"\x89PNG")]
    if bad:
        raise ValueError(f"pictures: expected PNG files named like 'reconstructions.png', got "
                         f"{bad}")
    if pictures:
        card = {**(card or {}), "pictures": [(n, cap) for n, (_, cap) in pictures.items()]}
    state, prefixes = _plain_state(encoder, extra_state)
    licence, name, link = _export_license(encoder, card)
    card = {**(card or {}), "license": licence, "license_name": name, "license_link": link}
    config = encoder_config(encoder, prefixes, license=licence, license_name=name,
                            license_link=link)
    clash = sorted(set(config_extra or {}) & set(config))
    if clash:
        raise ValueError(f"config_extra: keys {clash} are the export's own; expected new keys")
    text = render_model_card(config, card)
    for note in license_notes(licence, name, link):
        log.warning("%s: %s", out_dir, note)
    config.update(config_extra or {})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt", "architecture": config["architecture"]})
        _canonical_header(tmp / WEIGHTS_NAME)
        # strict JSON (no NaN/Infinity, which the Hub's parser refuses; the contract keeps a
        # non-finite nodata as None): a ValueError names what cannot be written
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, allow_nan=False) + "\n",
                                       encoding="utf-8")
        (tmp / CARD_NAME).write_text(text, encoding="utf-8")
        for name, (data, _) in pictures.items():
            (tmp / name).write_bytes(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp (and safetensors) make files private
        for name in (*EXPORT_FILES, *pictures):
            os.chmod(tmp / name, 0o666 & ~umask)
            _fsync_file(tmp / name)
        _fsync_dir(tmp)  # its entries, before the folder takes out_dir's place
        old = None
        if out_dir.exists():
            old = tmp.with_name(tmp.name + ".old")  # unique, beside out_dir
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except BaseException:
            if old is not None:
                old.rename(out_dir)  # the previous export back in place
            raise
        _fsync_dir(out_dir.parent)  # the renames, before the previous export is gone
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError) as e:  # a full disk: safetensors names no file
        code = e.errno if isinstance(e, OSError) and e.errno else _os_error_code(str(e))
        free = shutil.disk_usage(out_dir.parent).free / 2**20
        raise OSError(code, f"cannot write the export {out_dir}: {type(e).__name__}: {e} "
                            f"({free:.1f} MiB free on its filesystem; a full disk is the usual "
                            f"cause); the previous export there, if any, is unchanged") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _export_license(encoder: ViTEncoder, card: Mapping[str, Any] | None = None
                   ) -> tuple[str, str | None, str | None]:
    """(licence, license_name, license_link) an export of ``encoder`` carries, checked: the
    card's ``license``, else the encoder's own (``pretrained_cfg.license`` of the export it
    was loaded from: its weights derive from them), else apache-2.0; an ``other`` licence's
    name and link are the card's, else the encoder's ``license_terms`` when the licence is its
    own (as a fine-tune's export inherits them: ``eofm.finetune.finetuned.finetuned_license``)."""
    card = card or {}
    own = (getattr(encoder, "pretrained_cfg", None) or {}).get("license")
    licence = check_license(card.get("license") or own or DEFAULT_LICENSE)
    terms = dict(getattr(encoder, "license_terms", None) or {}) if licence == own else {}
    name, link = (terms.get(k) if card.get(f"license_{k}") is None else card[f"license_{k}"]
                  for k in ("name", "link"))  # one given, even empty, is checked as given
    return (licence, *check_license_terms(licence, name, link))


def _fsync_file(path: Path) -> None:
    """Flush a written file to disk; an error (EIO: the data did not reach it) is raised."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (files made, renames) durable, where the OS opens and
    syncs folders (as :mod:`eofm.pretrain.checkpoint` does; models imports nothing of it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header in place with its keys sorted.

    safetensors writes the ``__metadata__`` map in a random order (a Rust ``HashMap``; 0.8.0
    still does, upstream issue safetensors/safetensors#584), so two exports of the same weights
    differed in bytes and checksum. The same entries sorted take the same number of bytes; the
    header keeps its length (padded with spaces, as the format pads it), so every tensor keeps
    its offset. A header that would not fit (never seen) is left as written."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")
        if len(text) <= size:
            f.seek(8)
            f.write(text.ljust(size, b" "))
