"""The exported encoder a fine-tuning run starts from: which architectures ``eofm-finetune``
takes (ViTs by their blocks, the ResNet-50 by its 4 stages), its drop path, its pool, and the
licence the fine-tuned export will carry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from eofm.pretrain.config import ConfigError

log = logging.getLogger("eofm.finetune")

__all__ = ["RESNETS", "VIT_DROP_PATH", "check_encoder_license", "load_encoder"]

RESNETS = ("resnet50",)  # CNN encoders: lr decay and last-n freezing count their 4 stages


VIT_DROP_PATH = 0.2  # a ViT's fine-tuning drop path when none is given (MAE, SatMAE++ recipes)


def check_encoder_license(e: Any, encoder: Any) -> None:
    """``encoder.license_name``/``license_link`` (config ``e``) against the licence the export
    will carry: ``encoder.license``, or the encoder's own when that is empty; a ConfigError
    before any training when the Hub would not read them (a licence other than ``other``)."""
    from eofm.models.hub_licenses import check_license_terms

    from .finetuned import finetuned_license

    try:
        check_license_terms(finetuned_license(encoder, e.license or None),
                            e.license_name or None, e.license_link or None)
    except ValueError as err:
        raise ConfigError([f"encoder.{err}" + ("" if e.license else " (the encoder's licence: "
                                               "encoder.license is empty)")]) from None


def load_encoder(path: str, *, drop_path: float | None, random_init: bool = False,
                 global_pool: str | None = None, seed: int | None = None) -> Any:
    """The exported encoder with its contract (drop path overridden); fresh weights if asked.

    ViTs (``vit_*``) and the ResNet-50 (``eofm_resnet50``, or ``resnet50`` from older exports)
    are supported. ``drop_path`` None is the architecture's default: :data:`VIT_DROP_PATH` for a
    ViT; a ResNet has no stochastic depth, so it must be None or 0 there. ``global_pool`` (the
    pool a classification head reads) becomes the encoder's, so its export says it.

    The export's weights are compared, by their shapes, with the architecture its config.json
    asks for before that architecture is allocated (:func:`eofm.models.hub.build_checked_encoder`),
    with ``random_init`` too: weights that do not fit are refused in one ValueError naming the
    file and the tensors, so a config.json asking for a far larger model is never built.

    ``random_init``: the architecture's own initialisation instead of the export's weights,
    drawn (with ``seed`` given, as ``eofm-finetune`` gives ``data.seed``) from torch's RNG
    seeded with ``seed`` inside :func:`torch.random.fork_rng`: the same encoder for the same
    seed on every run and every rank, and the caller's RNG state left as it was. ``seed`` None
    draws from the global RNG as it stands.
    """
    from eofm.models.hub import (
        attach_export_info,
        build_checked_encoder,
        load_export_weights,
        locate_export,
        read_weights,
    )
    from eofm.models.registry import eofm_name

    config, weights = locate_export(path)
    arch = str(config.get("architecture", ""))
    name = eofm_name(arch)
    if name in RESNETS:
        if drop_path:
            raise ValueError(f"encoder.drop_path: a ResNet ({arch}) has no stochastic depth; "
                             f"set encoder.drop_path=0 (or null), got {drop_path}")
        overrides: dict[str, Any] = {}
    elif name.startswith("vit_"):
        if drop_path is None:
            drop_path = VIT_DROP_PATH
            log.info("encoder.drop_path: null, so the ViT default %g", drop_path)
        overrides = {"drop_path_rate": drop_path}
    else:
        raise ValueError(f"{path}: eofm-finetune supports ViT (vit_*) and ResNet "
                         f"({', '.join(RESNETS)}) encoders (layer-wise lr decay, last-n freezing "
                         f"and dense heads follow their blocks or stages); this export is a "
                         f"{arch!r} (eofm-probe evaluates it)")
    if global_pool is not None:
        overrides["global_pool"] = global_pool
    # checked against the weights' shapes on the meta device (no memory, no RNG draws) first
    encoder = _build(lambda: build_checked_encoder(config, weights, **overrides), seed)
    if not random_init:  # the weights, and with them the licence, are the export's
        load_export_weights(encoder, read_weights(weights), config)
        attach_export_info(encoder, config)
    return encoder


def _build(build: Callable[[], Any], seed: int | None) -> Any:
    """``build()``, its initial weights drawn from torch's RNG seeded with ``seed`` on the CPU
    (where it is built) without touching the caller's RNG state; ``seed`` None: from the
    global RNG as it stands."""
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
