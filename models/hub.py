"""Hub-ready export and loading of eofm encoders: :func:`from_pretrained`, :func:`save_pretrained`.

An export folder holds ``model.safetensors`` (encoder weights, optionally extra tensors such as
``decoder.*``), ``config.json`` (the registered architecture; its ``create_model`` arguments,
less the attention backend, which the loading machine picks; timm's ``pretrained_cfg``; and the
input contract under ``eofm_contract``) and ``README.md`` (the model card). The same folder
loads with ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` (or
``"local-dir:FOLDER"``): timm reads ``architecture``/``model_args``/``pretrained_cfg`` and
calls the eofm entrypoint, which lands in :func:`timm_model`. The
``architecture`` is the model's timm name (:func:`eofm.models.registry.timm_architecture`):
``eofm_<name>``, e.g. ``eofm_vit_tiny_patch8``, ``eofm_resnet50`` (unambiguous whatever else
timm has); :func:`from_pretrained` reads it and the bare names older exports wrote (``vit_*``,
which timm also loads where eofm's bare alias is registered; ``resnet50``, which it does not).
Writing lives in :mod:`eofm.models.hub_write` (re-exported here). Nothing here unpickles:
weights are safetensors and configs are JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .attention import DEFAULT_BACKEND, xformers_available
from .contract import InputContract, pair_size
from .hub_write import (
    CARD_NAME,
    CONFIG_NAME,
    EXPORT_FILES,
    WEIGHTS_NAME,
    encoder_config,
    save_pretrained,
)
from .normalise import normalisation_params
from .registry import (
    check_img_size,
    check_overrides,
    create_model,
    plain_overrides,
    timm_architecture,
)
from .vit import ViTEncoder
from .weights import (
    LoadedState,
    StateDiff,
    check_export_shapes,
    export_size,
    load_export_weights,
    load_weights,
    read_weight_shapes,
    read_weights,
    state_differences,
)

# the writing side lives in .hub_write, the weights' reading and loading in .weights; both
# re-exported here, where callers met them
__all__ = ["CARD_NAME", "CONFIG_NAME", "EXPORT_FILES", "WEIGHTS_NAME", "LoadedState",
           "StateDiff", "attach_export_info", "build_checked_encoder", "build_encoder",
           "encoder_config", "export_size", "export_source", "from_pretrained",
           "load_export_weights", "load_exported", "load_weights", "locate_export",
           "read_config", "read_weights", "resized_contract", "save_pretrained",
           "state_differences", "timm_model"]

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("architecture", "model_args", "eofm_contract")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check an export's config.json; a ValueError names what is missing or wrong."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the export config ({e})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise ValueError(f"{path}: not an eofm export config; missing keys {missing} (expected "
                         f"{list(REQUIRED_KEYS)})")
    _check_field_types(config, path)
    contract = InputContract.from_dict(config["eofm_contract"], where=f"{path}: eofm_contract")
    if _older_percentile_cfg(config.get("pretrained_cfg"), contract):
        log.warning("%s: pretrained_cfg mean/std are the percentile contract's per-band mean/std, "
                    "as exports before eofm 2bb4d18 wrote them; using the contract's "
                    "normalisation shift/scale (p2, p98 - p2) instead (re-export to update the "
                    "file)", path)
        config["pretrained_cfg"] = _contract_timm_normalisation(config["pretrained_cfg"], contract)
    _check_timm_normalisation(config.get("pretrained_cfg"), contract, path)
    terms = config.get("license_terms", {})
    if not isinstance(terms, dict) or not set(terms) <= {"name", "link"} or not all(
            isinstance(v, str) for v in terms.values()):
        raise ValueError(f"{path}: license_terms: expected {{'name': str, 'link': str}} (either "
                         f"may be absent), got {terms!r}")
    licence = (config.get("pretrained_cfg") or {}).get("license")
    if terms and licence != "other":
        raise ValueError(f"{path}: license_terms: only with pretrained_cfg.license 'other', got "
                         f"license {licence!r}")
    return config


def _check_field_types(config: Mapping[str, Any], path: str | Path) -> None:
    """A ValueError naming ``path`` and the field when ``architecture`` is not a string,
    ``model_args`` not a mapping or ``extra_state`` (optional) not a list of strings (a
    string would be read character by character as tensor prefixes)."""
    arch, args, extra = (config.get(k) for k in ("architecture", "model_args", "extra_state"))
    wrong = [(k, what, v) for k, what, v, ok in (
        ("architecture", "a registered model name (a string)", arch, isinstance(arch, str)),
        ("model_args", "a mapping of create_model arguments", args, isinstance(args, dict)),
        ("extra_state", "a list of tensor prefix strings (or absent)", extra,
         "extra_state" not in config or (isinstance(extra, list)
                                         and all(isinstance(e, str) for e in extra))))
        if not ok]
    if wrong:
        raise ValueError("; ".join(f"{path}: {k}: expected {what}, got {type(v).__name__} "
                                   f"{v!r:.60}" for k, what, v in wrong))


def _older_percentile_cfg(pretrained_cfg: Any, contract: InputContract) -> bool:
    """Whether timm's ``pretrained_cfg`` ``mean``/``std`` are what exports before eofm 2bb4d18
    wrote for a ``percentile`` contract: exactly its statistics' per-band ``mean``/``std``
    (not the shift/scale it normalises with, :func:`normalisation_params`), where these
    differ from the shift/scale and the contract's statistics give one."""
    if (contract.normalisation != "percentile" or not isinstance(pretrained_cfg, Mapping)
            or not contract.bands or not contract.stats
            or not all(b in contract.stats for b in contract.bands)):
        return False
    try:
        expected = list(normalisation_params(contract))
    except ValueError:  # no usable percentiles: nothing to replace them with
        return False
    older = [[contract.stats[b].get(k) for b in contract.bands] for k in ("mean", "std")]
    got = [pretrained_cfg.get(k) for k in ("mean", "std")]
    return got == older and got != expected


def _contract_timm_normalisation(pretrained_cfg: Mapping[str, Any], contract: InputContract
                                 ) -> dict[str, Any]:
    """``pretrained_cfg`` with ``mean``/``std`` the contract's shift/scale, as exports write
    them (:func:`eofm.models.hub_write._timm_cfg`)."""
    shift, scale = normalisation_params(contract)
    return {**pretrained_cfg, "mean": shift, "std": scale}


def _check_timm_normalisation(pretrained_cfg: Any, contract: InputContract,
                              path: str | Path) -> None:
    """A ValueError naming ``path`` when timm's ``pretrained_cfg`` ``mean``/``std`` (what timm
    normalises with) differ from the contract's shift and scale (what eofm normalises with,
    :func:`normalisation_params`; exports write the one from the other:
    :func:`eofm.models.hub_write._timm_cfg`). Not checked when either side has none: an export without usable statistics writes none."""
    if not isinstance(pretrained_cfg, Mapping) or not {"mean", "std"} & set(pretrained_cfg):
        return
    try:
        expected = dict(zip(("mean", "std"), normalisation_params(contract), strict=True))
    except ValueError:
        return
    for key, want in expected.items():
        got = pretrained_cfg.get(key)
        if got is None:
            continue
        same = (isinstance(got, (list, tuple)) and len(got) == len(want)
                and all(isinstance(g, (int, float)) and not isinstance(g, bool)
                        and math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-9)
                        for g, w in zip(got, want, strict=False)))
        if not same:
            what = "shift" if key == "mean" else "scale"
            raise ValueError(f"{path}: pretrained_cfg.{key}: expected the eofm_contract's "
                             f"normalisation {what} per band {want} (timm normalises with "
                             f"pretrained_cfg, eofm with the contract's statistics), got "
                             f"{got!r:.120}")


def resized_contract(contract: InputContract, img_size: int | Sequence[int] | None
                     ) -> InputContract:
    """``contract`` with ``input_size`` set to ``img_size`` when the caller builds the exported
    encoder at another size (logged: the weights were trained at the contract's size, so
    features at the new one may differ); unchanged when ``img_size`` is None or the same. A
    contract a user passes explicitly to ``create_model`` is still checked strictly."""
    if img_size is None or contract.input_size is None:
        return contract
    size = pair_size(img_size)
    if size == contract.input_size:
        return contract
    p = contract.patch_size
    if p and (size[0] % p or size[1] % p):
        raise ValueError(f"img_size: expected a multiple of the export's patch size {p}, got "
                         f"{list(size)}")
    log.info("img_size %s overrides the export's input size %s: the contract now says %s "
             "(the weights were trained at %s)", list(size), list(contract.input_size),
             list(size), list(contract.input_size))
    return dataclasses.replace(contract, input_size=size)


def _runnable_attn_backend(args: Mapping[str, Any], model_args: Mapping[str, Any]
                           ) -> dict[str, Any]:
    """``args`` (``create_model`` overrides) with the attention backend an older export stored
    in its ``model_args`` (exports no longer store one: :func:`_model_args`) replaced by
    ``sdpa`` when it cannot run here (``xformers`` without the xformers package and CUDA),
    with a log line: the backend is a kernel choice, the attention it computes is the same.
    A backend that runs here, or one the caller passed (a value other than the stored one),
    is kept as it is."""
    stored = model_args.get("attn_backend")
    if stored != "xformers" or args.get("attn_backend") != stored or xformers_available():
        return dict(args)
    log.warning("config.json model_args.attn_backend: %r (the attention kernel the export's "
                "run used) cannot run here (it needs the xformers package and CUDA); using "
                "%r, which computes the same attention", stored, DEFAULT_BACKEND)
    return {**args, "attn_backend": DEFAULT_BACKEND}


def build_encoder(config: Mapping[str, Any], **overrides: Any) -> ViTEncoder:
    """A freshly initialised encoder of the exported architecture, carrying its contract.

    ``overrides`` replace entries of ``config["model_args"]`` (e.g. ``drop_path_rate``). An
    ``img_size`` other than the exported one (timm's ordinary ``img_size=`` override, e.g. to
    run at 32 px an encoder trained at 16) is taken as asked: the contract's ``input_size``
    becomes the new size, with a log note (see :func:`resized_contract`). An attention backend
    an older export stored that cannot run here becomes ``sdpa`` (:func:`_runnable_attn_backend`).
    """
    return _create_encoder(config["architecture"], _encoder_args(config, overrides))


def _encoder_args(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The ``create_model`` arguments, contract included, that :func:`build_encoder` builds
    ``config``'s architecture with (checked; what they change from the export is logged)."""
    args = plain_overrides({**config["model_args"], **overrides})
    if "attn_backend" not in overrides:  # the caller's own choice is taken as asked
        args = _runnable_attn_backend(args, config["model_args"])
    check_overrides(str(config["architecture"]), args)  # before resized_contract reads img_size
    contract = resized_contract(InputContract.from_dict(config["eofm_contract"]),
                                args.get("img_size"))
    return {**args, "contract": contract}


def _create_encoder(architecture: str, args: Mapping[str, Any]) -> ViTEncoder:
    """``create_model(architecture, **args)`` as :func:`build_encoder` gives it (its
    ``model_overrides`` without the contract, which the encoder carries)."""
    encoder = create_model(architecture, **args)
    encoder.model_overrides.pop("contract", None)
    return encoder


def build_checked_encoder(config: Mapping[str, Any], weights: str | Path, *,
                          strict: bool = True, **overrides: Any) -> ViTEncoder:
    """:func:`build_encoder`, once the export's ``weights`` file is known to fit it: the
    encoder is first built on the meta device (no memory) and compared, by its header alone
    (:func:`read_weight_shapes`), with the file, so weights that do not fit are refused
    (:func:`check_export_shapes`: the error :func:`load_export_weights` gives, naming the
    tensors) before a config.json asking for a far larger architecture allocates it.

    ``strict``: as :func:`load_export_weights` takes it (non-strictly, missing and unexpected
    tensors pass; a shape mismatch never does). The weights are not loaded: the caller loads
    them into the returned encoder, freshly built (initialised as :func:`build_encoder` does,
    from the same RNG draws, its fixed buffers computed) as before.
    """
    shapes = read_weight_shapes(weights)  # a bad weights file is named before bad model_args
    architecture, args = config["architecture"], _encoder_args(config, overrides)
    skeleton = _skeleton(architecture, args)
    if skeleton is not None:
        check_export_shapes(skeleton, shapes, config, strict=strict, source=weights)
    return _create_encoder(architecture, args)


def _skeleton(architecture: str, args: Mapping[str, Any]) -> ViTEncoder | None:
    """:func:`_create_encoder` on the meta device: the encoder's structure, its parameters'
    and buffers' shapes, without memory behind them or draws from the RNG (its arguments are
    refused as a real build refuses them). None, logged, for a registered factory that reads
    its tensors' values while it builds (meta tensors have none): it is then built for real
    and its weights checked as they load, as before."""
    try:
        with torch.device("meta"):
            return _create_encoder(architecture, args)
    except (RuntimeError, NotImplementedError, TypeError) as e:  # ValueError: the arguments'
        log.info("%s cannot be built on the meta device (%s: %s); its weights are compared "
                 "with it once it is built", architecture, type(e).__name__, e)
        return None


def _split_revision(repo: str) -> tuple[str, str | None]:
    """"org/name@rev" -> ("org/name", "rev")."""
    name, _, rev = repo.partition("@")
    return name, rev or None


def _files(path_or_repo_id: str | Path, revision: str | None, cache_dir: str | Path | None,
           names: Sequence[str] = (CONFIG_NAME, WEIGHTS_NAME)) -> list[Path]:
    """Paths of ``names`` in a local export folder, else downloaded from the Hub (or its cache)."""
    folder = Path(path_or_repo_id).expanduser()
    if folder.is_dir():
        files = [folder / n for n in names]
        absent = [p.name for p in files if not p.is_file()]
        if absent:
            raise ValueError(f"{folder}: not an eofm export; missing {absent} (expected "
                             f"{list(EXPORT_FILES)})")
        return files
    repo = str(path_or_repo_id)
    hub_only = repo.startswith(HUB_PREFIX)  # "hf-hub:ORG/NAME": the Hub, never a local path
    repo_id, rev = _split_revision(repo.removeprefix(HUB_PREFIX))
    if not hub_only:
        _refuse_local_typo(repo, repo_id)
    if folder.is_file() and not hub_only:
        hint = (f" (pass its folder, {str(folder.parent)!r})" if folder.name in EXPORT_FILES
                else "")
        raise ValueError(f"{repo!r}: a file, not an export folder; expected a folder holding "
                         f"{list(EXPORT_FILES)}{hint} or a Hub repo id 'ORG/NAME'")
    if (folder.exists() and not hub_only) or not _REPO_ID.match(repo_id):
        raise ValueError(f"{repo!r}: expected an export folder or a Hub repo id 'ORG/NAME'; "
                         "no such folder here")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    kw = {"revision": revision or rev, "cache_dir": cache_dir}
    try:
        return [Path(hf_hub_download(repo_id, n, **kw)) for n in names]
    except (OSError, ValueError, EntryNotFoundError) as e:  # offline, no such repo/file, HTTP
        why = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{repo!r}: no local folder of that name, and the Hub repo "
                         f"{repo_id!r} could not be read ({type(e).__name__}: {why}); expected "
                         "an export folder or a Hub repo id ORG/NAME") from None


HUB_PREFIX = "hf-hub:"  # as timm writes it: read ORG/NAME from the Hub even if ORG is a folder


def hub_repo_id(name: str) -> str | None:
    """The Hub repo id ``ORG/NAME`` that ``name`` (an export location as a user gives it)
    names, its ``@revision`` cut: ``hf-hub:ORG/NAME[@rev]`` always, ``ORG/NAME[@rev]`` when no
    local path of that name exists; None for a local folder or anything else. The one parser
    of Hub ids for loading, cards (``base_model``) and lineage."""
    hub_only = name.startswith(HUB_PREFIX)
    repo_id = _split_revision(name.removeprefix(HUB_PREFIX))[0]
    if not _REPO_ID.match(repo_id) or (not hub_only and Path(name).expanduser().exists()):
        return None
    return repo_id


def export_source(path_or_repo_id: str | Path) -> dict[str, str | None]:
    """Where :func:`from_pretrained` reads ``path_or_repo_id`` from, decided as it decides
    (relative to this process's working directory): ``{"kind": "folder", "path": ABSOLUTE}``
    for a local export folder, ``{"kind": "hub", "repo_id": "ORG/NAME", "revision": REV or
    None}`` for a Hub repo. Pretraining records it when ``model.init_from`` is loaded, so the
    export's card names a Hub ``base_model`` for a Hub origin only, wherever it is exported
    from. A ValueError for a name that is neither."""
    folder = Path(path_or_repo_id).expanduser()
    if folder.is_dir():  # _files' first test
        return {"kind": "folder", "path": str(folder.resolve())}
    name = str(path_or_repo_id)
    repo_id = hub_repo_id(name)
    if repo_id is None:
        raise ValueError(f"{name!r}: expected an export folder or a Hub repo id 'ORG/NAME'; "
                         "no such folder here")
    return {"kind": "hub", "repo_id": repo_id,
            "revision": _split_revision(name.removeprefix(HUB_PREFIX))[1]}


def _refuse_local_typo(repo: str, repo_id: str) -> None:
    """A ValueError, at once, for ``ORG/NAME`` whose ``ORG`` is a folder here (``exports/nope``):
    a mistyped local path, not a Hub id; asking the Hub for it retried for half a minute
    offline before failing. Names what that folder holds; ``hf-hub:ORG/NAME`` means the Hub."""
    if not _REPO_ID.match(repo_id) or Path(repo).expanduser().exists():
        return
    org = Path(repo_id.split("/", 1)[0]).expanduser()
    if not org.is_dir():
        return
    held = sorted(p.name for p in org.iterdir() if p.is_dir())
    shown = ", ".join(held[:10]) + (f", ... ({len(held)} in all)" if len(held) > 10 else "")
    raise ValueError(f"{repo!r}: no such export folder; {str(org)!r} is a folder here and holds "
                     f"{f'[{shown}]' if held else 'no folders'}; for the Hub repo of that "
                     f"name, pass '{HUB_PREFIX}{repo_id}'")


def locate_export(path_or_repo_id: str | Path, *, revision: str | None = None,
                  cache_dir: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """(config, the path of its ``model.safetensors``) of an export folder or Hub repo: the
    config read and checked (:func:`read_config`), the weights not yet read, so a loader can
    compare their shapes with the config's architecture before allocating it
    (:func:`build_checked_encoder`), as :func:`from_pretrained` and ``eofm.finetune`` do."""
    cfg_path, weights = _files(path_or_repo_id, revision, cache_dir)
    return read_config(cfg_path), weights


def load_exported(path_or_repo_id: str | Path, *, revision: str | None = None,
                  cache_dir: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config, every stored tensor) of an export folder or Hub repo, decoder included."""
    config, weights = locate_export(path_or_repo_id, revision=revision, cache_dir=cache_dir)
    return config, read_weights(weights)


def from_pretrained(path_or_repo_id: str | Path, *, device: str | torch.device = "cpu",
                    strict: bool = True, revision: str | None = None,
                    cache_dir: str | Path | None = None,
                    img_size: int | Sequence[int] | None = None) -> ViTEncoder:
    """The exported encoder (eval mode) with its ``.contract``, from a folder or a Hub repo id.

    A local folder never touches the network. Weights that do not match the config are
    refused with a ValueError naming the tensors, before the encoder is allocated
    (:func:`build_checked_encoder`). ``img_size``: build it at another input
    size (as timm's ``img_size=``); the contract's ``input_size`` follows it. Arguments of the
    wrong kind are refused before anything is read (:func:`_check_load_args`). Attention runs
    with the default backend (``sdpa``; an older export's stored one where it runs here:
    :func:`_runnable_attn_backend`); ``eofm.models.set_attention_backend`` picks another.
    """
    device = _check_load_args(path_or_repo_id, device, strict, img_size)
    config, weights = locate_export(path_or_repo_id, revision=revision, cache_dir=cache_dir)
    # the weights' shapes against the config's architecture before either is allocated
    encoder = build_checked_encoder(config, weights, strict=strict,
                                    **({} if img_size is None else {"img_size": img_size}))
    load_export_weights(encoder, read_weights(weights), config, strict=strict)
    attach_export_info(encoder, config)
    return encoder.to(device).eval()


def attach_export_info(encoder: torch.nn.Module, config: Mapping[str, Any]) -> None:
    """Give an encoder built from an export's ``config`` what it says beyond the architecture:
    timm's ``pretrained_cfg`` (with the licence) and ``license_terms`` (an ``other``
    licence's name and link), which a fine-tune's export inherits."""
    encoder.pretrained_cfg = _sized_cfg(dict(config.get("pretrained_cfg", {}),
                                             architecture=config["architecture"]), encoder)
    encoder.license_terms = dict(config.get("license_terms") or {})


def _check_device(device: Any) -> torch.device:
    """``device`` as a :class:`torch.device`; a ValueError naming it when torch does not
    know it, or when it is a CUDA device this machine does not have (checked before the
    export is read, not after the encoder is built)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device: expected a torch device such as 'cpu', 'cuda' or 'cuda:0' "
                         f"(or a torch.device), got {device!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device: {device!r} is a CUDA device, but CUDA is not available "
                             "here; use device='cpu'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device: expected a CUDA device index in [0, {count}) on this "
                             f"machine, got {device!r}")
    return dev


def _check_load_args(path_or_repo_id: Any, device: Any, strict: Any, img_size: Any
                     ) -> torch.device:
    """:func:`from_pretrained`'s arguments, checked before anything is read: a TypeError
    for a source that is not a str or path, a ValueError for an empty one, an unknown
    ``device``, a non-bool ``strict`` or an ``img_size`` that is not a size; the device."""
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise TypeError(f"path_or_repo_id: expected an export folder (a str or Path) or a Hub "
                        f"repo id 'ORG/NAME', got {type(path_or_repo_id).__name__} "
                        f"{path_or_repo_id!r}")
    if not str(path_or_repo_id).strip():
        raise ValueError("path_or_repo_id: expected an export folder or a Hub repo id "
                         "'ORG/NAME', got an empty string")
    if not isinstance(strict, bool):
        raise ValueError(f"strict: expected True or False, got {strict!r}")
    if img_size is not None:
        check_img_size(img_size)
    return _check_device(device)


def _sized_cfg(cfg: dict[str, Any], encoder: ViTEncoder) -> dict[str, Any]:
    """timm ``pretrained_cfg`` with its ``input_size`` at the contract's (an ``img_size``
    override changes both)."""
    size = encoder.contract.input_size
    if size is not None and isinstance(cfg.get("input_size"), (list, tuple)):
        cfg["input_size"] = [cfg["input_size"][0], *size]
    return cfg


def _timm_source(pretrained_cfg: Any) -> tuple[str, str] | None:
    """("hf-hub", repo[@rev]) or ("local-dir", folder) named by a timm pretrained_cfg."""
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        return None
    cfg = pretrained_cfg if isinstance(pretrained_cfg, Mapping) else pretrained_cfg.to_dict()
    if cfg.get("hf_hub_id"):
        return "hf-hub", str(cfg["hf_hub_id"])
    if cfg.get("file"):
        file = Path(cfg["file"])
        return "local-dir", str(file if file.is_dir() else file.parent)
    return None


def timm_model(name: str, pretrained: bool, kwargs: dict[str, Any], pretrained_cfg: Any,
               cache_dir: str | Path | None = None) -> ViTEncoder | None:
    """What the timm entrypoint builds for an exported source; None when ``pretrained_cfg``
    names none. ``kwargs`` are the config's model_args merged with the caller's; the contract
    comes from config.json and weights load when ``pretrained``."""
    source = _timm_source(pretrained_cfg)
    if source is None:
        return None
    kind, where = source
    repo_id, rev = _split_revision(where)
    loc = where if kind == "local-dir" else HUB_PREFIX + repo_id  # the Hub, even if ORG is
    #                                                               also a folder here
    config = read_config(_files(loc, rev, cache_dir, [CONFIG_NAME])[0])
    # timm merged config.json's model_args into kwargs: a stored backend is the export's
    kwargs = _runnable_attn_backend(kwargs, config["model_args"])
    named = {**config, "architecture": name, "model_args": {}}
    if not pretrained:  # the architecture alone, as asked: nothing to compare it with
        encoder = build_encoder(named, **kwargs)
    else:
        args = _encoder_args(named, kwargs)
        skeleton = _skeleton(name, args)  # bad arguments refused before the weights are fetched
        weights = _files(loc, rev, cache_dir, [WEIGHTS_NAME])[0]
        if skeleton is not None:  # the weights' shapes against it before it is allocated
            check_export_shapes(skeleton, read_weight_shapes(weights), config, source=weights)
        encoder = _create_encoder(name, args)
        load_export_weights(encoder, read_weights(weights), config)
    cfg = pretrained_cfg if isinstance(pretrained_cfg, Mapping) else pretrained_cfg.to_dict()
    if _older_percentile_cfg(cfg, encoder.contract):  # timm read config.json's as written;
        cfg = _contract_timm_normalisation(cfg, encoder.contract)  # read_config logged it
    # timm's name for it, as from_pretrained and config.json give it: the bare eofm name
    # (resnet50) is another model in timm
    attach_export_info(encoder, {**config, "pretrained_cfg": cfg,
                                 "architecture": timm_architecture(name)})
    encoder.default_cfg = encoder.pretrained_cfg
    return encoder
