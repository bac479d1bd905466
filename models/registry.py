"""Model registry: ``create_model(name, **overrides)``, ``list_models(pattern)``, ``register_model``.

Encoder sizes are registered as ``vit_<size>_patch<p>`` for the sizes in :data:`SIZES` and patch
sizes in :data:`PATCH_SIZES`. Every eofm model is also registered with timm as ``eofm_<name>``
and, where timm (or a timm plugin imported earlier) has no model of that name, as the bare
alias ``<name>``, so ``timm.create_model(name)`` works once ``eofm.models`` is imported. A bare
name timm already has stays timm's (logged as a warning; the eofm model is ``eofm_<name>``),
so importing eofm never fails on it. ``resnet50`` is registered without the alias
(``timm_alias=False``): ``timm.create_model("resnet50")`` is timm's own.

:func:`timm_architecture` gives the unambiguous timm name ``eofm_<name>``; exports write it as
``config.json``'s ``architecture``, which is what ``timm.create_model("hf-hub:ORG/NAME")`` and
``"local-dir:FOLDER"`` call (``create_model`` accepts it too: it drops the ``eofm_`` prefix).
Older exports that wrote the bare name still load with :func:`eofm.models.from_pretrained`, and
with timm where the bare alias is registered.

Through timm, ``num_classes=0`` (features only, timm's convention) is accepted and any other
value refused (eofm encoders have no classifier); ``in_chans`` is accepted when it equals the
encoder's band count (any count for the spectral tokenizer) and refused otherwise: eofm names
its bands, so pass ``bands=[...]`` instead of a channel count.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import numbers
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from timm.models import is_model as timm_is_model
from timm.models import model_entrypoint as timm_entrypoint
from timm.models import register_model as timm_register_model
from torch import nn

from .contract import InputContract, name_tuple
from .resnet import OUTPUT_STRIDE as RESNET_STRIDE
from .resnet import resnet50 as _resnet50
from .tokenizers import SpectralTokenizer, Tokenizer, build_tokenizer
from .vit import ViTEncoder

TIMM_PREFIX = "eofm_"
DEFAULT_BANDS = ("R", "G", "B")
TOKENIZERS = ("plain", "grouped", "spectral")
PATCH_SIZES = (8, 14, 16)
SIZES: dict[str, dict[str, int]] = {
    "test": {"embed_dim": 64, "depth": 2, "num_heads": 2},
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
}

__all__ = [
    "PATCH_SIZES",
    "SIZES",
    "check_img_size",
    "check_overrides",
    "create_model",
    "eofm_name",
    "img_size_problem",
    "list_models",
    "model_patch_size",
    "override_hint",
    "override_problems",
    "plain_overrides",
    "register_model",
    "timm_architecture",
    "unknown_overrides",
    "valid_overrides",
]

log = logging.getLogger(__name__)

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_TIMM_NAMES: dict[str, str] = {}  # eofm name -> the timm name exports write as "architecture"
_PATCH: dict[str, int] = {}  # eofm name -> its patch size (a ViT) or output stride (a CNN)
_TIMM_KWARGS = ("pretrained_model_args",)  # what timm passes that eofm does not use
_FEATURE_KWARGS = ("out_indices", "output_fmt", "feature_cls")  # with features_only=True


def _natural_key(name: str) -> list[int | str]:
    """Sort key that puts patch8 before patch14."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered eofm model names matching the fnmatch ``pattern``, naturally sorted."""
    return sorted(fnmatch.filter(_MODELS, pattern), key=_natural_key)


def _timm_entrypoint(name: str, timm_name: str) -> Callable[..., nn.Module]:
    """A timm entrypoint for eofm model ``name``, registered under ``timm_name``."""

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from .hub import timm_model  # hub imports this module

        cfg, cache_dir = kwargs.pop("pretrained_cfg", None), kwargs.pop("cache_dir", None)
        overlay = kwargs.pop("pretrained_cfg_overlay", None)
        for k in _TIMM_KWARGS:
            kwargs.pop(k, None)
        _check_num_classes(timm_name, kwargs.pop("num_classes", 0))
        features_only = kwargs.pop("features_only", False)
        feature_args = {k: kwargs.pop(k) for k in _FEATURE_KWARGS if k in kwargs}
        if feature_args and not features_only:
            raise ValueError(f"{sorted(feature_args)}: go with features_only=True ({timm_name})")
        in_chans = kwargs.pop("in_chans", None)
        if kwargs.get("bands") is not None and kwargs.get("tokenizer") != "spectral":
            _check_in_chans(timm_name, name_tuple(kwargs["bands"], "bands"), in_chans)  # early
        if overlay:
            base = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
            cfg = {**(base if isinstance(base, dict) else {}), **overlay}
        model = timm_model(name, pretrained, kwargs, cfg, cache_dir)  # an exported source
        if model is None:
            if pretrained:
                raise ValueError(f"pretrained: {timm_name} has no registered pretrained weights; "
                                 "load an export: timm.create_model('hf-hub:ORG/NAME', "
                                 "pretrained=True) or eofm.models.from_pretrained(DIR_OR_REPO)")
            model = create_model(name, **kwargs)
            model.pretrained_cfg = {"architecture": timm_architecture(name), "num_classes": 0}
        _check_in_chans(timm_name, getattr(getattr(model, "tokenizer", None), "bands", None),
                        in_chans)
        return _feature_net(timm_name, model, feature_args) if features_only else model

    entry.__name__ = entry.__qualname__ = timm_name
    entry.__module__ = __name__
    entry.__doc__ = f"timm entrypoint for eofm model {name!r}."
    return entry


def _feature_net(timm_name: str, model: nn.Module, args: dict[str, Any]) -> nn.Module:
    """timm's ``features_only=True``: the encoder wrapped in timm's FeatureGetterNet, whose
    forward returns the maps of ``out_indices`` (blocks of a ViT, default the last 3; stages of
    a ResNet, default all 4) through :meth:`forward_intermediates`, with ``feature_info``
    (channels, stride) as timm's own ViTs give; ``.contract`` stays reachable on the wrapper."""
    from timm.models._features import FeatureGetterNet

    if isinstance(getattr(model, "tokenizer", None), SpectralTokenizer):
        raise ValueError(f"features_only: {timm_name} has the spectral tokenizer, which needs "
                         "each call's wavelengths and bandwidths, and timm's feature wrapper "
                         "passes its forward nothing but x; build it without features_only and "
                         "call model.forward_intermediates(x, indices=..., wavelengths=..., "
                         "bandwidths=...) (the same maps)")
    cls = args.get("feature_cls", "getter")
    if cls != "getter":
        raise ValueError(f"feature_cls: {timm_name} gives features through forward_intermediates "
                         f"(timm's 'getter'), got {cls!r}")
    n = len(model.feature_info)
    want = args.get("out_indices", n if not hasattr(model, "blocks") else min(3, n))
    take = list(range(n - want, n)) if isinstance(want, int) else [int(i) for i in want]
    if not take or any(not -n <= i < n for i in take):
        raise ValueError(f"out_indices: {timm_name} has {n} feature maps, so expected indices in "
                         f"[-{n}, {n}) or a count in 1..{n}, got {want!r}")
    net = FeatureGetterNet(model, out_indices=tuple(i % n for i in take),
                           output_fmt=args.get("output_fmt", "NCHW"), norm=False, prune=False)
    net.contract = model.contract
    net.pretrained_cfg = getattr(model, "pretrained_cfg", None)
    return net


def _check_num_classes(timm_name: str, num_classes: Any) -> None:
    """timm's ``num_classes``: 0 (or None) means features only, which is all an eofm encoder
    gives; anything else is refused with how to add a head."""
    if num_classes in (0, None):
        return
    raise ValueError(f"num_classes: {timm_name} is an eofm encoder without a classifier, so only "
                     f"num_classes=0 (pooled features, timm's features-only convention) is "
                     f"accepted, got {num_classes!r}; add a head in eofm: eofm-finetune "
                     "(classification, multilabel, segmentation), or a head on the pooled "
                     "features, e.g. eofm.models.LinearHead(model.num_features, NUM_CLASSES)")


def _check_in_chans(timm_name: str, bands: Sequence[str] | None, in_chans: Any) -> None:
    """timm's ``in_chans``: accepted when it equals the encoder's band count (any count for a
    tokenizer without a fixed band list, ``bands`` None: the spectral one); otherwise refused,
    since eofm ties each input channel to a band name."""
    if in_chans is None or bands is None or int(in_chans) == len(bands):
        return
    raise ValueError(f"in_chans: {timm_name} takes {len(bands)} channels, the bands "
                     f"{list(bands)}, got in_chans={in_chans}; eofm ties each channel to a band "
                     f"name, so pass bands=[...] with {in_chans} names (in channel order) "
                     "instead of in_chans")


def timm_architecture(name: str) -> str:
    """The name timm builds eofm model ``name`` under, ``eofm_<name>`` (unambiguous whatever
    else timm has); ``name`` itself for a model not registered with timm."""
    return _TIMM_NAMES.get(name, name)


def _taken(timm_name: str) -> bool:
    """Whether timm has ``timm_name`` from somewhere other than this registry."""
    return timm_is_model(timm_name) and timm_entrypoint(timm_name).__module__ != __name__


def _register_timm(name: str, alias: bool = True) -> None:
    """Register ``name`` with timm as eofm_<name> (refused if timm has that from elsewhere) and,
    with ``alias``, as <name> where timm has no such model (else logged and left to timm)."""
    prefixed = TIMM_PREFIX + name
    if _taken(prefixed):
        raise ValueError(f"name: timm already has a model named {prefixed!r} that is not eofm's; "
                         f"rename eofm model {name!r} so timm.create_model stays unambiguous")
    names = [prefixed]
    if alias and _taken(name):
        log.warning("timm already has a model named %r (from %s); eofm's is registered with "
                    "timm as %r only", name, timm_entrypoint(name).__module__, prefixed)
    elif alias:
        names.append(name)
    for timm_name in names:
        entry = _timm_entrypoint(name, timm_name)
        setattr(sys.modules[__name__], timm_name, entry)  # timm lists it in this module's __all__
        timm_register_model(entry)
    _TIMM_NAMES[name] = prefixed


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   timm: bool = True, timm_alias: bool = True,
                   patch_size: int | None = None) -> Any:
    """Register a model factory ``fn(**overrides) -> nn.Module`` under ``name`` (default fn's name).

    Usable as ``@register_model`` or ``@register_model(name=...)``. With ``timm``, also
    registers it with timm as ``eofm_<name>`` and, with ``timm_alias``, as ``<name>`` unless
    timm already has a model of that name (then the alias is skipped with a logged warning).
    ``patch_size``: the patch size (or a CNN's output stride) each side of its ``img_size``
    must be a multiple of, so a configuration is checked without building the model
    (:func:`img_size_problem`); None when not known.
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS and _MODELS[key] is not f:
            raise ValueError(f"name: a model named {key!r} is already registered")
        if timm:
            _register_timm(key, alias=timm_alias)
        _MODELS[key] = f
        if patch_size is not None:
            _PATCH[key] = int(patch_size)
        return f

    return wrap(fn) if fn is not None else wrap


def eofm_name(name: str) -> str:
    """The registry name of ``name``: a timm name ``eofm_<name>`` maps back to ``<name>``."""
    if name.startswith(TIMM_PREFIX) and name not in _MODELS:
        return name[len(TIMM_PREFIX):]
    return name


def _shown(value: Any) -> str:
    """``value`` as an argument error shows it: its type and a short repr."""
    text = repr(value)
    return f"the {type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_int(value: Any) -> bool:
    """Whether ``value`` is a whole number (a Python or NumPy int; ``True`` is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """``value`` with NumPy (or other) numbers made Python ints and floats, in a list or tuple
    too: what the models and config.json take. Anything else is returned as it is."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def plain_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with the numbers of ``img_size`` and :data:`_NUMERIC_OVERRIDES` made
    Python numbers (``depth=np.int64(2)`` builds and exports as ``depth=2``)."""
    return {k: _plain(v) if k == "img_size" or k in _NUMERIC_OVERRIDES else v
            for k, v in overrides.items()}


def _is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (int or float, NumPy's too; ``True`` is not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _img_size_why(value: Any) -> str | None:
    """Why ``value`` is not an input size (``expected ..., got ...``), or None."""
    if _is_int(value):
        ok = value > 0
    else:
        ok = (isinstance(value, (list, tuple)) and len(value) == 2
              and all(_is_int(v) and v > 0 for v in value))
    if ok:
        return None
    return (f"expected a positive int or an (H, W) pair of positive ints in pixels, such as 224 "
            f"or [224, 224], got {_shown(value)}")


def check_img_size(value: Any, where: str = "img_size") -> None:
    """``value`` is an input size: a positive int or an ``(H, W)`` pair of positive ints; a
    ValueError naming ``where`` otherwise (a string such as ``"64"`` would otherwise be read
    as the pair ``(6, 4)``). Whether it fits the patch size: :func:`img_size_problem` (and the
    model's own check when it is built)."""
    if (why := _img_size_why(value)) is not None:
        raise ValueError(f"{where}: {why}")


def model_patch_size(name: str) -> int | None:
    """The patch size (a ViT's) or output stride (a CNN's) registered with model ``name``
    (a timm ``eofm_`` name too): each side of its ``img_size`` must be a multiple of it; None
    for a name not registered, or registered without one."""
    return _PATCH.get(eofm_name(name)) if isinstance(name, str) else None


def img_size_problem(name: str, img_size: Any) -> str | None:
    """Why ``img_size`` (an int or an ``(H, W)`` pair) does not fit registered model ``name``,
    without building it (``expected ..., got ...``): not an input size
    (:func:`check_img_size`), or a side that is not a multiple of its patch size
    (:func:`model_patch_size`; the tokenizer's check when the model is built); None when it
    fits or the model's patch size is not registered."""
    if (why := _img_size_why(img_size)) is not None:
        return why
    p = model_patch_size(name)
    hw = (img_size, img_size) if _is_int(img_size) else tuple(img_size)
    if p is None or not any(int(v) % p for v in hw):
        return None
    fit = tuple(max(p, round(int(v) / p) * p) for v in hw)
    return (f"expected multiples of {p} ({eofm_name(name)} makes one token of each {p} x {p} "
            f"pixels), e.g. {fit}, got {tuple(int(v) for v in hw)}")


def valid_overrides(name: str) -> list[str]:
    """The keyword arguments registered model ``name``'s factory takes (sorted)."""
    return sorted(inspect.signature(_MODELS[eofm_name(name)]).parameters)


def unknown_overrides(name: str, overrides: Mapping[str, Any]) -> list[str]:
    """The keys of ``overrides`` registered model ``name``'s factory does not take (sorted;
    none when it takes any keyword): what :func:`create_model` refuses."""
    params = inspect.signature(_MODELS[eofm_name(name)]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return sorted(set(overrides) - set(params))


def override_hint(key: str) -> str | None:
    """What eofm takes instead of ``key``, an argument people pass from other libraries
    (``patch_size``, ``in_chans``); None for any other key."""
    return _NOT_OVERRIDES.get(key)


# the numeric overrides the registered encoders share: name -> (check, what is expected); a
# range the model checks itself (depth >= 1, embed_dim a multiple of 4, reference_gsd > 0) is
# left to its own message, only the kind is checked here
_NUMERIC_OVERRIDES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "drop_path_rate": (lambda v: _is_real(v) and 0.0 <= v < 1.0,
                       "a number in [0, 1) (the stochastic-depth rate of the last block)"),
    "embed_dim": (_is_int, "an int"),
    "depth": (_is_int, "an int (transformer blocks)"),
    "num_heads": (lambda v: _is_int(v) and v > 0, "a positive int"),
    "mlp_ratio": (lambda v: _is_real(v) and v > 0, "a number > 0"),
    "reference_gsd": (_is_real, "a ground sampling distance in m (a number)"),
}
# arguments people pass from other libraries, with what eofm takes instead
_NOT_OVERRIDES = {
    "patch_size": "the patch size is part of the model name (e.g. vit_small_patch16): pick "
                  "the registered name with the patch size you want",
    "in_chans": "eofm ties each input channel to a band name: pass bands=[...] instead",
}


def override_problems(overrides: Mapping[str, Any]) -> dict[str, str]:
    """Key -> why (``expected ..., got ...``) for each common ``create_model`` override with
    an unusable value: ``img_size`` (:func:`check_img_size`; not its fit to the patch size)
    and the numbers in :data:`_NUMERIC_OVERRIDES` (``drop_path_rate`` in [0, 1), ints for
    ``embed_dim``/``depth``/``num_heads``...), in that order."""
    problems = {}
    if "img_size" in overrides and (why := _img_size_why(overrides["img_size"])) is not None:
        problems["img_size"] = why
    for key, (ok, expected) in _NUMERIC_OVERRIDES.items():
        if key in overrides and not ok(overrides[key]):
            problems[key] = f"expected {expected}, got {_shown(overrides[key])}"
    return problems


def check_overrides(name: str, overrides: Mapping[str, Any]) -> None:
    """The common ``create_model`` overrides of model ``name`` have usable values
    (:func:`override_problems`); a ValueError names the first one that does not, what was
    expected and what came."""
    for key, why in override_problems(overrides).items():
        raise ValueError(f"{key} ({name}): {why}")


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` replace its defaults.

    A ``name`` that is not a string is a TypeError. Unknown names and overrides raise a
    ValueError listing the valid ones; so does a common override of the wrong kind or range
    (:func:`check_overrides`), before anything is built.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a registered model name (a str such as "
                        f"'vit_small_patch16'; see eofm.models.list_models()), got "
                        f"{_shown(name)}")
    name = eofm_name(name)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"name: unknown model {name!r}.{hint} Registered models: "
                         f"{list_models()}")
    fn = _MODELS[name]
    unknown = unknown_overrides(name, overrides)
    if unknown:
        hints = "".join(f"; {k}: {_NOT_OVERRIDES[k]}" for k in unknown if k in _NOT_OVERRIDES)
        raise ValueError(f"overrides: {unknown} are not valid for {name!r}; valid: "
                         f"{valid_overrides(name)}{hints}")
    overrides = plain_overrides(overrides)
    check_overrides(name, overrides)
    model = fn(**overrides)
    model.model_name = name
    model.model_overrides = dict(overrides)
    return model


def _tokenizer(kind: str | Tokenizer, patch_size: int, embed_dim: int,
               bands: Sequence[str] | None, groups: Mapping[str, Sequence[str]] | str | None,
               tokenizer_kwargs: Mapping[str, Any] | None) -> Tokenizer:
    """Build the tokenizer for a registered encoder (or check a given one).

    Plain defaults to ``DEFAULT_BANDS``; grouped to SatMAE's S2 groups; spectral ignores bands.
    """
    if isinstance(kind, Tokenizer):
        if (kind.patch_size, kind.embed_dim) != (patch_size, embed_dim):
            raise ValueError(f"tokenizer: expected patch_size={patch_size}, embed_dim={embed_dim}; "
                             f"got {kind.patch_size}, {kind.embed_dim}")
        return kind
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer: expected one of {TOKENIZERS} or a Tokenizer, got {kind!r}")
    kw = dict(tokenizer_kwargs or {})
    if bands is not None:
        kw["bands"] = name_tuple(bands, "bands")
    elif kind == "plain":
        kw["bands"] = DEFAULT_BANDS
    if groups is not None:
        kw["groups"] = groups
    return build_tokenizer(kind, patch_size=patch_size, embed_dim=embed_dim, **kw)


def _vit_factory(size: str, patch_size: int) -> Callable[..., nn.Module]:
    """The factory for ``vit_<size>_patch<patch_size>``."""
    arch = SIZES[size]

    def factory(
        *,
        bands: Sequence[str] | None = None,
        tokenizer: str | Tokenizer = "plain",
        groups: Mapping[str, Sequence[str]] | str | None = None,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        img_size: int | Sequence[int] = 224,
        embed_dim: int = arch["embed_dim"],
        depth: int = arch["depth"],
        num_heads: int = arch["num_heads"],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        class_token: bool = True,
        global_pool: str = "token",
        attn_backend: str | None = "sdpa",
        gsd_pos: bool = False,
        reference_gsd: float = 10.0,
        contract: InputContract | Mapping[str, Any] | None = None,
        learned_pos: bool = False,
    ) -> ViTEncoder:
        tok = _tokenizer(tokenizer, patch_size, embed_dim, bands, groups, tokenizer_kwargs)
        if isinstance(contract, Mapping):
            contract = InputContract.from_dict(contract)
        return ViTEncoder(tok, embed_dim, depth, num_heads, mlp_ratio=mlp_ratio,
                          qkv_bias=qkv_bias, drop_path_rate=drop_path_rate,
                          layer_scale_init=layer_scale_init, class_token=class_token,
                          global_pool=global_pool, attn_backend=attn_backend, img_size=img_size,
                          gsd_pos=gsd_pos, reference_gsd=reference_gsd, contract=contract,
                          learned_pos=learned_pos)

    factory.__name__ = factory.__qualname__ = f"vit_{size}_patch{patch_size}"
    factory.__doc__ = (f"ViT-{size} (dim {arch['embed_dim']}, depth {arch['depth']}, "
                       f"{arch['num_heads']} heads), patch {patch_size}.")
    return factory


for _size in SIZES:
    for _p in PATCH_SIZES:
        register_model(_vit_factory(_size, _p), patch_size=_p)

# timm has its own resnet50: the eofm ResNet is timm's "eofm_resnet50" only, and its exports
# name that architecture so timm loads them with this entrypoint; see models/resnet.py
register_model(_resnet50, name="resnet50", timm_alias=False, patch_size=RESNET_STRIDE)
