"""The random-init baseline of a probe: an encoder of the same architecture and contract with
freshly drawn weights (its BatchNorm statistics, if any, re-estimated on the probe's data, as
the export's were tracked on its training data), and the spread of its scores over several
seeds (``eofm-probe --random-seeds``)."""

from __future__ import annotations

import torch

from .datasets import LabelledData
from .features import Preprocess, batchnorm_layers, recalibrate_batchnorm
from .report import scalar_keys

__all__ = ["RANDOM_SEED_PREFIX", "batchnorm_note", "random_init", "random_seed_keys",
           "random_seed_range"]

RANDOM_SEED_PREFIX = "random_init@"  # feature keys of the further random-init seeds


def random_init(encoder: torch.nn.Module, seed: int, data: LabelledData | None = None,
                pre: Preprocess | None = None, *, batch_size: int = 64,
                device: torch.device | str = "cpu", progress: bool = False) -> torch.nn.Module:
    """A freshly initialised encoder of the same architecture and contract (weights drawn
    from ``seed``). With ``data`` and its preprocessing ``pre`` (all of the probe's --data),
    the running statistics of its BatchNorm layers, if it has any, are re-estimated on them
    (:func:`~.features.recalibrate_batchnorm`, batches of ``batch_size`` on ``device``): left
    at their defaults (mean 0, variance 1) they would normalise unlike the export's, tracked
    on its training data, and most of "pretrained beats random init" would be BatchNorm
    buffers. An encoder without BatchNorm (a ViT) is the same either way."""
    from eofm.models import create_model

    args = {k: v for k, v in getattr(encoder, "model_overrides", {}).items() if k != "contract"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(encoder.model_name, **args, contract=encoder.contract)
    if data is not None and pre is not None:
        recalibrate_batchnorm(model, data, pre, batch_size=batch_size, device=device,
                              progress=progress, desc=f"random_init seed {seed} batchnorm")
    return model


def batchnorm_note(encoder: torch.nn.Module, data: LabelledData) -> dict | None:
    """What report.json records (``random_init_batchnorm``) of the BatchNorm re-estimation
    :func:`random_init` gives a random-init encoder of ``encoder``'s architecture on ``data``;
    None when the architecture has no BatchNorm (nothing re-estimated)."""
    layers = len(batchnorm_layers(encoder))
    if not layers:
        return None
    return {"recalibrated": True, "layers": layers, "data": data.source, "images": len(data),
            "momentum": "cumulative average (momentum None), one pass, no gradients",
            "note": (f"random_init: the running statistics of its {layers} BatchNorm layers "
                     f"were re-estimated on the {len(data)} images of --data "
                     f"{data.source} (every fold's, no labels read; reset, then one pass with only BatchNorm in train mode, "
                     "cumulative average), as the export's were tracked on its training data; "
                     "left at the defaults (mean 0, variance 1) the baseline would differ from "
                     "the pretrained encoder by its BatchNorm buffers as much as by its "
                     "weights")}


def random_seed_keys(results: dict[str, dict]) -> list[str]:
    """The further random-init seeds' keys (``random_init@SEED``) in ``results``, by seed
    number (``@2`` before ``@10``): the one order of the paired differences and the seed range."""
    return sorted((k for k in results if k.startswith(RANDOM_SEED_PREFIX)),
                  key=lambda k: int(k[len(RANDOM_SEED_PREFIX):]))


def random_seed_range(results: dict[str, dict], kind: str, first_seed: int) -> dict | None:
    """Pop the further random-init seeds' results out of ``results`` and summarise every
    seed's mean score (``random_init`` is the first seed): per metric, the per-seed means and
    their min and max; None with one seed."""
    more = random_seed_keys(results)
    if not more:
        return None
    runs = [results["random_init"], *(results.pop(k) for k in more)]
    seeds = [first_seed, *(int(k[len(RANDOM_SEED_PREFIX):]) for k in more)]
    out: dict = {"seeds": seeds, "linear": {}, "knn": {}}
    for key in scalar_keys(kind):
        if span := _span([r["linear"][key]["mean"] for r in runs]):
            out["linear"][key] = span
    for k in runs[0]["knn"]:
        out["knn"][k] = {}
        for key in scalar_keys(kind):
            if span := _span([r["knn"][k][key]["mean"] for r in runs]):
                out["knn"][k][key] = span
    return out


def _span(values: list[float | None]) -> dict | None:
    """Per-seed means and their min and max (over the seeds where the metric is defined: a
    multi-label macro mAP can be undefined, None); None when it is defined for none."""
    kept = [v for v in values if v is not None]
    return {"per_seed": values, "min": min(kept), "max": max(kept)} if kept else None
