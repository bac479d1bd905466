"""The fine-tuned model ``eofm-finetune`` exports to ``OUT/model``, and :func:`load_finetuned`.

An export of a fine-tuned model is an ordinary eofm export (:func:`eofm.models.save_pretrained`:
the encoder loads with ``eofm.models.from_pretrained`` or timm, its ``global_pool`` the pool
fine-tuning used) whose ``model.safetensors`` also holds the head (``head.*``) and whose
``config.json`` records the task under :data:`TASK_KEY`: kind, class names in output order,
pooling, head layout, the forward's band/spectra/GSD arguments and the regression target
scaling. The model card says the same (task section, ``pipeline_tag``, held-out metrics and how
far training went, ``base_model`` when the encoder came from the Hub). :func:`load_finetuned`
rebuilds encoder + head from it and predicts as the fine-tuning run did.

The encoder loaded alone returns its own pooled features, which are not always what the head
read: with pool ``avg`` a ViT's head reads the mean of the patch tokens *before* the encoder's
final norm (MAE's global pool, then the head's fc-norm; ``pool_prenorm`` in the record), while
the encoder's forward pools *after* its final norm (which fine-tuning left untrained). The head's
input is ``encoder(x, norm=False, **kw)``, ``kw`` the record's band/spectra/GSD arguments
(``load_finetuned(...).model.encoder_kwargs()``). With pool ``token`` (the normed class token)
and for a ResNet the encoder's pooled output is the head's input. ``model_args`` keep the
fine-tune's stochastic depth (``drop_path_rate``, 0.2 for a ViT unless ``encoder.drop_path``
said otherwise): the loaded encoder is in eval mode, where it does nothing; put in train mode
(trained further), it applies it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eofm.data_shards.manifest_fields import check_classes
from eofm.models import LinearHead, ResNetEncoder, SegmentationDecoder
from eofm.models.hub import hub_repo_id

from .tasks import DENSE, POOLS, TASKS, FinetuneModel

__all__ = ["TASK_KEY", "FinetunedModel", "export_finetuned", "head_layout", "load_finetuned",
           "task_record", "training_note"]

TASK_KEY = "eofm_task"  # config.json key of the fine-tuned task record
RECORD_FORMAT = 1
PIPELINE_TAGS = {"classification": "image-classification", "multilabel": "image-classification",
                 "segmentation": "image-segmentation"}  # regression: none fits; left as it is
HEADLINE = {"classification": "accuracy", "multilabel": "micro_map", "segmentation": "miou",
            "regression": "rmse"}
PER_CLASS = {"classification": ("per_class", "per-class recall"),
             "multilabel": ("per_class", "per-class AP"),
             "segmentation": ("per_class_iou", "per-class IoU")}
OUTPUTS = {
    "classification": "logits (B, K) over `classes`",
    "multilabel": "logits (B, K), one per class in `classes` (sigmoid for probabilities)",
    "segmentation": "per-pixel logits (B, K, H, W) over `classes`",
    "regression": "per-pixel values (B, H, W) in target units (load_finetuned applies "
                  "`target_norm`: y = out * std + mean)",
}


def _features(model: FinetuneModel) -> str | None:
    """What the head of a pooled task reads, in words; None for dense tasks."""
    if model.task in DENSE:
        return None
    if model.pool_prenorm:
        return ("mean of the patch tokens before the encoder's final norm (MAE's global pool; "
                "the final norm is unused), then the head's fc-norm; not the encoder's own "
                "pooled output (from_pretrained: the mean after its final norm): "
                "encoder(x, norm=False) gives this mean")
    if model.pool == "token":
        return ("class token after the encoder's final norm (the encoder's own pooled output), "
                "then the head's fc-norm")
    return "global average feature (the encoder's own pooled output), then the head's fc-norm"


def head_layout(model: FinetuneModel) -> dict[str, Any]:
    """The head's type and shape as plain values (what :func:`load_finetuned` checks)."""
    head = model.head
    if isinstance(head, LinearHead):
        return {"type": "LinearHead", "in_dim": head.fc.in_features,
                "num_outputs": head.fc.out_features, "norm": "ln", "dropout": head.drop.p}
    if isinstance(head, SegmentationDecoder):
        return {"type": "SegmentationDecoder",
                "in_dim": [lat[0].in_channels for lat in head.lateral],
                "num_outputs": head.cls.out_channels, "channels": head.cls.in_channels,
                "scales": list(head.scales), "patch_size": head.patch_size,
                "dropout": head.drop.p, "encoder_indices": list(model.indices)}
    raise ValueError(f"head: expected a LinearHead or SegmentationDecoder, got "
                     f"{type(head).__name__}")


def _listed(value: Tensor | None) -> list[float] | None:
    """A float32 buffer as a plain list, each value the shortest decimal that gives the same
    float32 back (442.7, not 442.70001220703125); None stays None."""
    if value is None:
        return None
    return [float(np.format_float_positional(v, unique=True))
            for v in value.detach().cpu().float().numpy()]


def task_record(model: FinetuneModel, *, classes: Sequence[str],
                target_norm: tuple[float, float] = (0.0, 1.0), override_contract: bool = False,
                fine_tuned_from: str | None = None,
                evaluation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` record (:data:`TASK_KEY`) of a fine-tuned ``model``: everything
    :func:`load_finetuned` needs to rebuild it, in plain JSON values. ``fine_tuned_from``:
    the encoder's export folder (cut to its last part) or Hub repo id (the card's
    ``base_model``)."""
    from eofm.models.card import public_path

    layout = head_layout(model)
    gsd = model.gsd
    return {
        "format": RECORD_FORMAT,
        "kind": model.task,
        "num_outputs": layout["num_outputs"] if model.task != "regression" else 1,
        "classes": [str(c) for c in classes],
        "pool": model.pool if model.task not in DENSE else None,
        "pool_prenorm": bool(model.pool_prenorm),
        "features": _features(model),
        "head": layout,
        "outputs": OUTPUTS[model.task],
        "target_norm": {"mean": float(target_norm[0]), "std": float(target_norm[1])},
        "encoder_kwargs": {"bands": list(model.bands) if model.bands is not None else None,
                           "wavelengths": _listed(model.wavelengths),
                           "bandwidths": _listed(model.bandwidths),
                           "gsd": float(gsd) if gsd is not None else None},
        "override_contract": bool(override_contract),
        "fine_tuned_from": public_path(fine_tuned_from) if fine_tuned_from else None,
        "evaluation": {k: public_path(v) for k, v in (evaluation or {}).items()},
    }


def training_note(steps: int, planned_steps: int, stopped_early: bool) -> str:
    """How far training went, in words: "stopped by runtime.max_minutes at step 3 of 150" for a
    run whose time budget ended training before the last planned optimiser step, else "150
    steps, as planned", or "150 steps (100 planned)" when the two differ otherwise (a schedule
    shortened after the steps were trained)."""
    if stopped_early:
        return f"stopped by runtime.max_minutes at step {steps} of {planned_steps}"
    if steps == planned_steps:
        return f"{steps} steps, as planned"
    return f"{steps} steps ({planned_steps} planned)"


def card_evaluation(results: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """results.json's held-out metrics as card rows: the scalars, per-class values by class
    name, and the number of test samples."""
    task, m = results["task"], results["metrics"]
    out: dict[str, Any] = {k: v for k, v in m.items()
                           if v is None or isinstance(v, (bool, int, float, str))}
    key, label = PER_CLASS.get(task, (None, None))
    per = m.get(key) if key else None
    if per and len(per) == len(classes):
        out[label] = dict(zip(classes, per, strict=True))
    out["test samples"] = results.get("test_samples")
    return out


def _cell(value: Any) -> str:
    """A markdown table cell."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _task_section(record: Mapping[str, Any], results: Mapping[str, Any],
                  where: str) -> str:
    """The card's "Fine-tuned task" section."""
    from eofm.models.card import public_path

    kind, head = record["kind"], record["head"]
    name = HEADLINE[kind]
    value = results["metrics"].get(name)
    rows = [("Task", kind)]
    if record["classes"]:
        rows.append(("Classes (output order)", ", ".join(record["classes"])))
    if record["features"]:
        rows.append(("Head input", record["features"]))
    shape = ", ".join(f"{k} {v}" for k, v in head.items() if k != "type")
    rows.append(("Head", f"{head['type']} ({shape})"))
    rows.append(("Outputs", record["outputs"]))
    if kind == "regression":
        tn = record["target_norm"]
        rows.append(("Target scaling", f"trained on (y - {tn['mean']:.6g}) / {tn['std']:.6g}"))
    if value is not None:
        rows.append((f"Held-out {name}", f"{_cell(value)} on {results.get('test_samples')} "
                                         f"samples of {public_path(results.get('test_source'))}"))
    if "planned_steps" in results:  # results.json of a run that recorded its planned steps
        rows.append(("Training", training_note(int(results["steps"]),
                                               int(results["planned_steps"]),
                                               bool(results.get("stopped_early")))))
    if record.get("fine_tuned_from"):
        rows.append(("Fine-tuned from", record["fine_tuned_from"]))
    table = ["| Setting | Value |", "|---|---|", *[f"| {a} | {_cell(b)} |" for a, b in rows]]
    return "\n".join([
        "## Fine-tuned task", "",
        f"Fine-tuned with `eofm-finetune` for {kind}: the encoder and its head (`head.*` "
        f"tensors in `model.safetensors`); `config.json` records the task under `{TASK_KEY}`.",
        "", *table, "",
        "Load encoder and head together (inputs preprocessed through the input contract, as "
        "in \"How to load\" below):", "",
        "```python",
        "from eofm.finetune import load_finetuned",
        "",
        f'model = load_finetuned("{where}")  # eval mode; model.classes, model.contract',
        "out = model(x)  # x: (B, C, H, W) normalised as below",
        "```",
    ])


def finetuned_license(encoder: nn.Module, license: str | None = None) -> str:
    """The licence of weights fine-tuned from ``encoder``: ``license`` when given, else the
    encoder's own (they derive from it: ``pretrained_cfg.license``), else apache-2.0."""
    from eofm.models.card import DEFAULT_LICENSE

    return license or (getattr(encoder, "pretrained_cfg", None) or {}).get("license") \
        or DEFAULT_LICENSE


def export_finetuned(model: FinetuneModel, out_dir: str | Path, *,
                     record: Mapping[str, Any], results: Mapping[str, Any],
                     title: str | None = None, license: str | None = None,
                     license_name: str | None = None, license_link: str | None = None,
                     bands: Sequence[str] | None = None) -> Path:
    """Write the fine-tuned ``model`` (encoder + ``head.*``) to ``out_dir`` atomically: the
    export of :func:`eofm.models.save_pretrained`, ``config.json`` with ``record`` under
    :data:`TASK_KEY` and the card with the task and ``results``' held-out metrics (and how far
    training went: ``results``' ``steps``, ``planned_steps``, ``stopped_early``). The encoder
    is exported as it is, ``drop_path_rate`` included; ``from_pretrained(out_dir)`` gives its
    own pooled features, not always the head's input (see the module docstring). ``license``
    (a Hub licence id, with ``license_name``/``license_link`` for ``other``): by default the
    encoder's own (``pretrained_cfg.license`` and the export's ``license_terms``).

    ``bands``: the bands fine-tuning fed the encoder. A spectral encoder takes any of its
    contract's bands, but the fine-tuned model is recorded with these (their wavelengths are
    in ``record``'s ``encoder_kwargs``), so the export's contract lists only them, in that
    order, and its card says the order matters."""
    from eofm.models.hub import save_pretrained

    out_dir = Path(out_dir)
    enc = model.encoder
    if record["pool"] is not None and getattr(enc, "global_pool", record["pool"]) != record["pool"]:
        raise ValueError(f"encoder.global_pool: the export must say the pool fine-tuning used "
                         f"({record['pool']!r}), the encoder says {enc.global_pool!r}; build it "
                         "with global_pool (eofm.finetune.encoder.load_encoder does)")
    classes = list(record["classes"])
    card: dict[str, Any] = {
        "title": title or f"eofm {enc.model_name} fine-tuned for {record['kind']}",
        "evaluation": card_evaluation(results, classes),
        "tags": ["fine-tuned", record["kind"]],
        "pipeline_tag": PIPELINE_TAGS.get(record["kind"]),
        "eofm_metadata": {"task": dict(record)},
        "extra_state_note": "the fine-tuned task head, see below",
        "license": finetuned_license(enc, license),
    }
    # an 'other' licence's name and link: the encoder's, for its licence, with those given
    # over them; another licence takes only those given
    own = (getattr(enc, "pretrained_cfg", None) or {}).get("license")
    terms = dict(getattr(enc, "license_terms", None) or {}) if card["license"] == own else {}
    terms.update({k: v for k, v in (("name", license_name), ("link", license_link)) if v})
    card.update({f"license_{k}": v for k, v in terms.items()})
    base = hub_repo_id(str(record.get("fine_tuned_from") or ""))
    if base:
        card["base_model"] = base
    card["sections"] = [_task_section(record, results, base or "OUT/model")]
    head = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    contract = enc.contract
    if getattr(contract, "any_bands", False) and bands is not None:
        card["fixed_bands"] = True
        enc.contract = dataclasses.replace(contract.subset(list(bands)), any_bands=False)
    try:
        return save_pretrained(enc, out_dir, card=card, extra_state=head,
                               config_extra={TASK_KEY: dict(record)})
    finally:
        enc.contract = contract


class FinetunedModel(nn.Module):
    """A reloaded fine-tuned model: x (B, C, H, W) preprocessed through ``contract`` -> the
    task's outputs (``record["outputs"]``); regression in target units.

    Attributes: ``model`` (the :class:`~eofm.finetune.tasks.FinetuneModel`), ``task``,
    ``classes``, ``target_norm`` (mean, std), ``contract`` and ``record`` (config.json's
    :data:`TASK_KEY`).
    """

    def __init__(self, model: FinetuneModel, record: Mapping[str, Any]) -> None:
        super().__init__()
        self.model, self.record = model, dict(record)
        self.task, self.classes = model.task, list(record.get("classes") or [])
        tn = record.get("target_norm") or {}
        self.target_norm = (float(tn.get("mean", 0.0)), float(tn.get("std", 1.0)))
        # the bands fine-tuning fed, in their order (record's encoder_kwargs), even for a
        # spectral encoder, whose own contract takes any of its bands
        self.contract = dataclasses.replace(model.encoder.contract, any_bands=False)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """x: (B, C, H, W) -> logits (pooled or per pixel) or regression values at ``size``
        (default the input size)."""
        out = self.model(x, size)
        if self.task == "regression":
            mean, std = self.target_norm
            out = out * std + mean
        return out


def _require(record: Any, where: str) -> Mapping[str, Any]:
    """The task record, checked; a ValueError names the field and what was expected."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: no '{TASK_KEY}' record; expected the export of an "
                         "eofm-finetune run (OUT/model). A pretrained encoder loads with "
                         "eofm.models.from_pretrained")
    kind, pool = record.get("kind"), record.get("pool")
    if kind not in TASKS:
        raise ValueError(f"{where}: {TASK_KEY}.kind: expected one of {TASKS}, got {kind!r}")
    if pool is not None and pool not in POOLS:
        raise ValueError(f"{where}: {TASK_KEY}.pool: expected one of {POOLS} or null, got "
                         f"{pool!r}")
    if not isinstance(record.get("head"), Mapping):
        raise ValueError(f"{where}: {TASK_KEY}.head: expected the head layout, got "
                         f"{record.get('head')!r}")
    return record


def _encoder_kwargs(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The record's ``encoder_kwargs`` (the encoder's band/spectra/GSD arguments) as a dict;
    a ValueError naming ``where`` unless it is a mapping (or null: none)."""
    kw = record.get("encoder_kwargs")
    if kw is None:
        return {}
    if not isinstance(kw, Mapping):
        raise ValueError(f"{where}: {TASK_KEY}.encoder_kwargs: expected a mapping of the "
                         "encoder's arguments (bands, wavelengths, bandwidths, gsd), got "
                         f"{type(kw).__name__} {kw!r:.60}")
    return dict(kw)


def _check_classes(record: Mapping[str, Any], head: Mapping[str, Any], where: str) -> None:
    """A ValueError naming ``where`` when a classification or multi-label record names
    another number of classes than its head has outputs (``classes`` are the output order:
    ``model.classes[i]`` names logit i). Other tasks: not checked."""
    if record.get("kind") not in ("classification", "multilabel"):
        return
    classes, n = record.get("classes"), head.get("num_outputs")
    if not isinstance(classes, list) or len(classes) != n:
        got = (f"{len(classes)} names {classes!r:.80}" if isinstance(classes, list)
               else f"{type(classes).__name__} {classes!r:.60}")
        raise ValueError(f"{where}: {TASK_KEY}.classes: expected {n} class names (one per "
                         f"output of the head, {TASK_KEY}.head.num_outputs), got {got}")
    problems: list[str] = []
    if all(isinstance(c, str) for c in classes):
        check_classes(classes, None, f"{where}: {TASK_KEY}.classes", problems)
    else:
        problems.append(f"{where}: {TASK_KEY}.classes: expected class names (strings), got "
                        f"{classes!r:.80}")
    if problems:  # repeated names would make model.classes name two logits alike
        raise ValueError("; ".join(problems))


def _check_encoder_inputs(model: FinetuneModel, where: str) -> None:
    """Run the record's band/spectra/GSD arguments (``model.encoder_kwargs()``) through the
    encoder's input checks on one blank patch, so bands the encoder cannot take fail at load
    time with a ValueError naming ``where`` and ``encoder_kwargs``, not at the first forward."""
    enc, kw = model.encoder, model.encoder_kwargs()
    bands, wavelengths = kw["bands"], kw["wavelengths"]
    n = (len(bands) if isinstance(bands, (list, tuple)) else
         len(wavelengths) if wavelengths is not None else len(enc.contract.bands))
    if n == 0:
        return
    p = enc.patch_size
    x = torch.zeros(1, n, p, p)
    try:
        with torch.no_grad():
            if isinstance(enc, ResNetEncoder):
                enc._check(x, bands)
            else:
                enc.embed(x, **kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {TASK_KEY}.encoder_kwargs: {e}") from None


def load_finetuned(path_or_repo_id: str | Path, *, device: str | torch.device = "cpu",
                   revision: str | None = None,
                   cache_dir: str | Path | None = None) -> FinetunedModel:
    """The fine-tuned model of an ``eofm-finetune`` export (``OUT/model``, a folder or a Hub
    repo id) in eval mode: encoder, head and task as fine-tuning ran them, so its outputs on
    inputs preprocessed through ``model.contract`` are the run's predictions.

    Refuses (ValueError) an export without the task record, a head whose layout or tensors
    differ from the record, and weights that do not match the encoder. The encoder and the
    head are compared with the weights file's tensor shapes before either is allocated
    (built on the meta device first: :func:`eofm.models.hub.build_checked_encoder`), so a
    config.json asking for a far larger encoder or head than its weights is refused at once.
    """
    from eofm.models.hub import (
        CONFIG_NAME,
        build_checked_encoder,
        load_export_weights,
        locate_export,
        read_weights,
    )
    from eofm.models.weights import read_weight_shapes

    config, weights = locate_export(path_or_repo_id, revision=revision, cache_dir=cache_dir)
    where = f"{path_or_repo_id}/{CONFIG_NAME}"
    record = _require(config.get(TASK_KEY), where)
    encoder = build_checked_encoder(config, weights)  # its shapes checked before it is built
    kw = _encoder_kwargs(record, where)
    with torch.device("meta"):  # the head the record asks for, without memory behind it
        skeleton = _finetune_model(encoder, record, kw)
    _check_head(skeleton, record, where)
    _check_head_shapes(skeleton, read_weight_shapes(weights), weights, where)
    model = _finetune_model(encoder, record, kw)
    extra = load_export_weights(encoder, read_weights(weights), config)
    _check_encoder_inputs(model, where)
    model.head.load_state_dict({k.split(".", 1)[1]: v for k, v in extra.items()
                                if k.startswith("head.")})
    return FinetunedModel(model, record).to(device).eval()


def _finetune_model(encoder: nn.Module, record: Mapping[str, Any],
                    encoder_kwargs: Mapping[str, Any]) -> FinetuneModel:
    """``encoder`` with the head ``record`` describes (its weights freshly initialised)."""
    layout = record["head"]
    return FinetuneModel(encoder, record["kind"], int(record["num_outputs"]),
                         pool=record["pool"] or "avg", dropout=float(layout.get("dropout", 0.0)),
                         decoder_channels=int(layout.get("channels", 128)),
                         encoder_kwargs=encoder_kwargs)


def _check_head(model: FinetuneModel, record: Mapping[str, Any], where: str) -> None:
    """A ValueError naming ``where`` when the head rebuilt for ``model``'s encoder from
    ``record`` (which may be on the meta device) differs from the recorded layout, its class
    names do not fit it (:func:`_check_classes`) or it pools otherwise than recorded."""
    layout, rebuilt = record["head"], head_layout(model)
    differ = sorted(k for k in set(layout) | set(rebuilt) if layout.get(k) != rebuilt.get(k))
    if differ:
        raise ValueError(f"{where}: {TASK_KEY}.head: the recorded layout differs from the "
                         f"head rebuilt for this encoder in {differ}: recorded "
                         f"{ {k: layout.get(k) for k in differ} }, rebuilt "
                         f"{ {k: rebuilt.get(k) for k in differ} }")
    _check_classes(record, rebuilt, where)
    if bool(record.get("pool_prenorm")) != model.pool_prenorm:
        raise ValueError(f"{where}: {TASK_KEY}.pool_prenorm: recorded "
                         f"{record.get('pool_prenorm')}, but this eofm pools "
                         f"{'before' if model.pool_prenorm else 'after'} the final norm for "
                         f"pool {record['pool']!r}")


def _check_head_shapes(model: FinetuneModel, shapes: Mapping[str, Sequence[int]],
                       weights: str | Path, where: str) -> None:
    """A ValueError naming the ``weights`` file and the tensors when its ``head.*`` tensors
    (``shapes``: name -> shape, from the file's header) are not those of ``model``'s head
    (which may be on the meta device): missing, unexpected or of another shape."""
    stored = {k.split(".", 1)[1]: tuple(v) for k, v in shapes.items() if k.startswith("head.")}
    want = {k: tuple(v.shape) for k, v in model.head.state_dict().items()}
    missing, unexpected = sorted(set(want) - set(stored)), sorted(set(stored) - set(want))
    other = [f"head.{k}: checkpoint {stored[k]} vs head {want[k]}"
             for k in sorted(set(want) & set(stored)) if want[k] != stored[k]]
    if missing or unexpected or other:
        raise ValueError(f"{weights}: the head.* tensors do not match {where}'s "
                         f"{TASK_KEY}.head: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"other shapes {other[:5]}")
