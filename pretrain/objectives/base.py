"""The objective registry and the contract between an objective and the trainer.

An objective is an ``nn.Module`` registered under a name with :func:`register_objective`; its
builder gets the whole :class:`~eofm.pretrain.config.TrainConfig` and the input bands and
returns the module. The trainer relies on:

- ``encoder``: the network that is exported (``eofm-export`` reads the ``encoder.`` weights).
- ``forward(x, valid, *, generator=None, **inputs) -> {"loss": scalar, ...}``: ``x`` is the
  normalised (B, C, H, W) batch on the device, ``valid`` its (B, H, W) validity mask,
  ``generator`` seeds every random draw of the step (masks, views), ``inputs`` holds the
  objective's own batch entries (see ``batch_inputs``) and the spectral tokenizer's
  ``wavelengths``/``bandwidths``.

and uses these when present (all optional):

- ``batch_inputs(batch, device) -> dict[str, Any]``: extra entries taken from the loader's
  batch (e.g. ``labels`` as a tensor, sample ``keys`` as strings), passed to ``forward`` as
  keyword arguments.
- ``lr_multiplier: float``: multiplies the configured peak learning rate (e.g. CrossMAE's
  kept/mask scaling).
- ``input_gsd_factor: float`` (default 1.0): the encoder's input GSD over the loaded sample's,
  when the objective resamples on the device (SatMAE++ downsamples the crop 2**(num_scales - 1)
  times); the input contract's GSD is the sample's times it (the checkpoint keeps that
  contract, and ``eofm-export`` takes the factor from it).
- ``on_step_start(step, total)``: before the step's first micro-batch (``step`` counts from 0);
  for schedules that live inside the objective.
- ``on_step_end(step, total)``: after an optimiser step that was applied (skipped non-finite
  steps do not call it); e.g. an EMA target update. Called on every rank.
- ``train_flops_per_sample() -> float``: forward + backward FLOPs per sample, for MFU.
- ``compile_extras(backend)``: with ``runtime.compile``, after every transformer block is
  compiled; compiles the objective's own hot paths (SelectiveMAE: its semantic score) with
  torch.compile's ``backend`` (``runtime.compile_backend``).
- ``reconstruct(x, valid, *, generator=None, **inputs) -> {"input", "valid", "masked",
  "reconstruction"}``: for ``logging.preview_every`` pictures, the (B, C, h, w) normalised input
  the encoder saw (after any device-side resampling) and its (B, h, w) validity, a
  (B, C, h, w) bool mask of the pixels it did not see, and the (B, C, h, w) normalised
  reconstruction (the prediction where masked, the input elsewhere), and optionally a
  (B, C, h, w) bool ``predicted`` when the objective predicts only part of the masked pixels
  (SelectiveMAE; the rest is drawn grey). ``inputs`` are the tokenizer's (band codes, GSD)
  only. Masked-image objectives have it.
- ``views(x, valid, *, generator=None, **inputs) -> {"view1", "valid1", "dropped1", "view2",
  "valid2"}``: for the same pictures, a contrastive objective's two augmented views, their
  validity, and the view-1 pixels of dropped tokens (SoftCon).
- ``client_state() -> dict`` and ``load_client_state(state: dict)``: per-process state that is
  neither a parameter nor a buffer (e.g. a per-sample loss record; under DDP each rank has its
  own, as each reads its own shards). Every checkpoint keeps each rank's ``client_state()``
  and a resume hands this rank's entry back to ``load_client_state`` (not called when the
  checkpoint has none, e.g. an older one). Each rank writes its own non-empty entry to a file
  beside the checkpoint (``step_NNNNNNNNN.rankRRRRR.pt``) and reads only its own back, so the
  state may grow with the samples a rank sees without any rank holding the others'. Plain data
  only, as it is read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists,
  dicts (see :func:`~eofm.pretrain.checkpoint.check_plain`).

The typed ``objective`` fields (``mask_ratio``, ``norm_pix_loss``, ``decoder_*``) are the masked
autoencoders'; an objective registers which of them it reads (``fields``), and a field it does
not read that is set to anything but its default is refused (:func:`objective_field_problems`)
when the configuration loads (``--print-config``, the launchers' preflight) and again, from the
same code, before the objective is built (:func:`build_objective`).

The loader is built before the objective (the objective needs its bands), so what an objective
needs of the loader is declared when it registers, not on the module: ``crop_scale`` of
:func:`register_objective`, the area range (share of the tile) of the loader's random resized
crop to ``data.crop_size`` (:func:`declared_crop_scale`; undeclared: the loader's default,
:data:`~eofm.pretrain.data.CROP_SCALE`). The crop resamples by nearest neighbour (exact integer
pixels and nodata; a crop smaller than ``data.crop_size`` repeats rows and columns), so an
objective that scores the loaded pixels as a high-resolution target narrows it (SatMAE++).

Objective-specific settings live in ``objective.params``; :func:`objective_params` merges them
over the objective's defaults and rejects unknown keys, values of the wrong kind and nulls (a
YAML key left empty, ``key=null``) for settings that need a value, by name. An objective may
also register a ``check(params, cfg) -> problems`` of their values (a ratio out of range, a
choice not among the allowed ones) that needs no data and builds no model: the configuration
runs it when it loads (:func:`objective_param_problems`) and the builder before it builds
anything (:func:`configured_params`), so both refuse the same values with the same messages.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..data import BandInfo

__all__ = ["PARAM_PREFIX", "ObjectiveBuilder", "ParamCheck", "build_objective",
           "configured_params", "declared_crop_scale", "list_objectives",
           "objective_field_problems", "objective_param_problems", "objective_params",
           "register_objective", "typed_fields", "unused_field_problems"]

ObjectiveBuilder = Callable[["TrainConfig", "BandInfo"], nn.Module]
#: ``check(params, cfg) -> problems``: the value problems of an objective's ``objective.params``
#: (merged over its defaults, each of its default's kind), each message starting with the full
#: key (:data:`PARAM_PREFIX` + the parameter); ``cfg`` for the settings a value depends on
#: (``objective.mask_ratio``, the model's patch size). Pure: it reads no data, builds no model.
ParamCheck = Callable[[Mapping[str, Any], "TrainConfig"], list[str]]
PARAM_PREFIX = "objective.params."  # what a config's problems name a parameter by
_REGISTRY: dict[str, ObjectiveBuilder] = {}
# name -> (defaults of objective.params, keys whose documented values include null, the check
# of their values)
_PARAMS: dict[str, tuple[Mapping[str, Any], Collection[str], ParamCheck | None]] = {}
# name -> the typed objective fields it reads (absent: registered without ``fields``, all)
_FIELDS: dict[str, frozenset[str]] = {}
# name -> the loader crop's area range it declared (absent: the loader's default)
_CROP_SCALE: dict[str, tuple[float, float]] = {}


def typed_fields() -> list[str]:
    """The typed ``objective`` fields an objective may read (``mask_ratio``,
    ``norm_pix_loss``, ``decoder_*``): every field of
    :class:`~eofm.pretrain.config.ObjectiveConfig` but ``name`` and ``params``."""
    from dataclasses import fields

    from ..config import ObjectiveConfig

    return [f.name for f in fields(ObjectiveConfig) if f.name not in ("name", "params")]


def register_objective(name: str, params: Mapping[str, Any] | None = None,
                       nullable: Collection[str] = (), check: ParamCheck | None = None,
                       fields: Collection[str] | None = None,
                       crop_scale: tuple[float, float] | None = None
                       ) -> Callable[[ObjectiveBuilder], ObjectiveBuilder]:
    """Decorator: register ``builder(cfg, info) -> nn.Module`` as objective ``name``.

    ``params``: the defaults of its ``objective.params`` (``nullable``: the keys null is a
    documented value of), so the configuration is checked against them when it loads
    (:func:`objective_param_problems`), not first when the objective is built. ``check``
    (:data:`ParamCheck`, with ``params`` only): the problems of their values, run then too;
    the builder runs it through :func:`configured_params`. ``fields``: the typed
    ``objective`` fields (:func:`typed_fields`) the objective reads; one it does not read
    that is set to anything but its default is refused when the configuration loads
    (:func:`objective_field_problems`). None (the default): it reads them all (none refused).
    A ValueError names a field that is not a typed one. ``crop_scale``: the area range
    ``(lo, hi)``, 0 < lo <= hi <= 1, of the loader's random resized crop the objective needs
    (:func:`declared_crop_scale`); None (the default): the loader's own. A ValueError names
    a range outside that."""
    if fields is not None:
        unknown = sorted(set(fields) - set(typed_fields()))
        if unknown:
            raise ValueError(f"register_objective({name!r}): fields: expected typed objective "
                             f"fields among {typed_fields()}, got {unknown}")
    if crop_scale is not None:
        crop_scale = _checked_crop_scale(name, crop_scale)

    def deco(builder: ObjectiveBuilder) -> ObjectiveBuilder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"objective {name!r} is already registered")
        _REGISTRY[name] = builder
        if params is not None:
            _PARAMS[name] = (params, tuple(nullable), check)
        if fields is not None:
            _FIELDS[name] = frozenset(fields)
        if crop_scale is not None:
            _CROP_SCALE[name] = crop_scale
        return builder

    return deco


def _checked_crop_scale(name: str, crop_scale: Any) -> tuple[float, float]:
    """``crop_scale`` as a float pair, or a ValueError naming ``name``, expected and got."""
    try:
        lo, hi = (float(v) for v in crop_scale)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"register_objective({name!r}): crop_scale: expected (lo, hi) with "
                         f"0 < lo <= hi <= 1, got {crop_scale!r}")
    return lo, hi


def declared_crop_scale(name: str) -> tuple[float, float] | None:
    """The loader crop's area range registered objective ``name`` declared, None for none."""
    if name not in _REGISTRY:
        raise ValueError(f"objective.name: {name!r} is not a registered objective; "
                         f"expected one of {list_objectives()}")
    return _CROP_SCALE.get(name)


def objective_field_problems(objective_cfg: Any) -> list[str]:
    """The problems of the typed fields of ``objective_cfg`` (an
    :class:`~eofm.pretrain.config.ObjectiveConfig`) for its registered objective: one per
    field the objective does not read (its registered ``fields``) that is set to anything but
    its default (:func:`unused_field_problems`); none for an objective registered without
    ``fields`` or not registered (``objective.name`` is checked apart). Pure: run by the
    configuration's checks when it loads and by :func:`build_objective`."""
    name = objective_cfg.name
    if name not in _FIELDS:
        return []
    return unused_field_problems(objective_cfg, set(_FIELDS[name]), name)


def objective_param_problems(name: str, params: Mapping[str, Any],
                             cfg: TrainConfig | None = None) -> list[str]:
    """The problems :func:`objective_params` would raise for registered objective ``name``'s
    ``params`` (unknown keys, values of another kind, null where a value is needed) and, given
    ``cfg``, those of the values its registered check finds (:data:`ParamCheck`; a key of the
    wrong kind is checked at its default instead, so it is reported once); none for an
    objective registered without its defaults."""
    if name not in _PARAMS:
        return []
    defaults, nullable, check = _PARAMS[name]
    problems = _param_problems(params, defaults, name, nullable)
    if check is None or cfg is None:
        return problems
    usable = {k: v for k, v in params.items()
              if k in defaults and _kind_problem(k, v, defaults, nullable) is None}
    return problems + check({**defaults, **usable}, cfg)


def configured_params(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.objective.params`` merged over its objective's registered defaults, for its
    builder: a ValueError for unknown keys and values of another kind (:func:`objective_params`)
    and a ConfigError (a ValueError) listing the problems of the values (the registered check),
    the same the configuration reported when it loaded, before anything is built."""
    name = cfg.objective.name
    defaults, nullable, check = _PARAMS[name]
    params = objective_params(cfg.objective.params, defaults, name, nullable)
    problems = check(params, cfg) if check is not None else []
    if problems:
        from ..config import ConfigError

        raise ConfigError(problems, f"{name} objective")
    return params


def list_objectives() -> list[str]:
    """Names of the registered objectives."""
    return sorted(_REGISTRY)


def build_objective(cfg: TrainConfig, info: BandInfo) -> nn.Module:
    """The configured objective (with its freshly built encoder) for ``info``'s bands; with
    ``model.init_from``, the export's encoder weights, and its decoder when it stores one of
    this objective (:func:`~eofm.pretrain.encoders.load_extra_state`)."""
    name = cfg.objective.name
    if name not in _REGISTRY:
        raise ValueError(f"objective.name: {name!r} is not a registered objective; "
                         f"expected one of {list_objectives()}")
    problems = objective_field_problems(cfg.objective)  # the load-time check, for a config
    if problems:  # that skipped it (load_config(check=False), a hand-made TrainConfig)
        from ..config import ConfigError

        raise ConfigError(problems, f"{name} objective")
    objective = _REGISTRY[name](cfg, info)
    if cfg.model.init_from:  # an export made with --with-decoder: its decoder too
        from ..encoders import load_extra_state

        load_extra_state(objective, cfg.model.init_from, name)
    return objective


def objective_params(params: Mapping[str, Any], defaults: Mapping[str, Any],
                     objective: str, nullable: Collection[str] = ()) -> dict[str, Any]:
    """``defaults`` updated with ``params``; one ValueError names every unknown key and every
    value whose kind differs from its default's (a string for a number, a number for a flag:
    the objective would fail later, far from the config).

    Null (None: a YAML key left empty, ``key=null`` on the command line) is accepted for a key
    whose default is None or that is in ``nullable`` (null is one of its documented values,
    e.g. SoftCon's ``head_norm``); for any other key it is reported like a value of the wrong
    kind (``expected a number (the default is 1.0), got null``)."""
    problems = _param_problems(params, defaults, objective, nullable)
    if problems:
        raise ValueError("; ".join(problems))
    return {**defaults, **params}


def _param_problems(params: Mapping[str, Any], defaults: Mapping[str, Any], objective: str,
                    nullable: Collection[str]) -> list[str]:
    """Each problem of :func:`objective_params`, as a message."""
    problems = []
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(defaults), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        problems.append(f"objective.params: unknown key(s) for {objective!r}: "
                        f"{', '.join(hints)}; known: {sorted(defaults)}")
    for k, v in params.items():
        if (why := _kind_problem(k, v, defaults, nullable)) is not None:
            problems.append(why)
    return problems


def _kind_problem(key: str, value: Any, defaults: Mapping[str, Any],
                  nullable: Collection[str]) -> str | None:
    """Why known parameter ``key`` cannot hold ``value`` (another kind than its default's, or
    null where a value is needed), or None (also for an unknown key: reported apart)."""
    kind = _kind(defaults.get(key))
    if key not in defaults or kind is None or (value is None and key in nullable):
        return None
    if value is None or _kind(value) != kind:
        got = "null" if value is None else repr(value)
        return f"{PARAM_PREFIX}{key}: expected {kind} (the default is {defaults[key]!r}), got {got}"
    return None


def _kind(value: Any) -> str | None:
    """What kind of value a parameter holds, for messages; None when anything goes."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    return None


def unused_field_problems(objective_cfg: Any, used: set[str], objective: str) -> list[str]:
    """One problem per typed ``objective`` field that ``objective`` does not read but was set.

    The typed fields (``mask_ratio``, ``norm_pix_loss``, ``decoder_*``) are the masked
    autoencoders'; an objective without a pixel decoder ignores them, so a value other than the
    field's default was meant for something this objective does not have: reported, rather
    than training silently without it.
    """
    from dataclasses import fields

    return [f"objective.{f.name}: {objective} does not use it, got "
            f"{getattr(objective_cfg, f.name)!r}; remove it (its settings go in objective.params)"
            for f in fields(objective_cfg)
            if f.name not in used | {"name", "params"}
            and getattr(objective_cfg, f.name) != f.default]
