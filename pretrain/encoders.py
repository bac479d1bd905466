"""The encoder a run's ``model`` config describes, shared by the trainer, objectives and export."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from eofm.models import ViTEncoder, create_model

if TYPE_CHECKING:
    from torch import nn

    from .config import ModelConfig
    from .data import BandInfo

__all__ = ["INIT_ORIGIN", "build_encoder", "init_origin", "load_extra_state", "run_encoder"]

INIT_ORIGIN = "init_origin"  # the checkpoint key of where model.init_from was read from

log = logging.getLogger(__name__)


def build_encoder(name: str, tokenizer: str, img_size: int, overrides: Mapping[str, Any],
                  bands: Sequence[str]) -> ViTEncoder:
    """The encoder a run's ``model`` config describes, for ``bands`` (weights fresh)."""
    over = dict(overrides)
    over.setdefault("img_size", img_size)
    if tokenizer != "spectral":
        over.setdefault("bands", list(bands))
    return create_model(name, tokenizer=tokenizer, **over)


def run_encoder(m: ModelConfig, info: BandInfo) -> ViTEncoder:
    """The encoder every objective trains on ``info``'s bands: :func:`build_encoder` of ``m``,
    then, with ``model.init_from``, the weights of that eofm export (a folder or a Hub repo id,
    read with ``from_pretrained``) mapped onto it by
    :func:`eofm.models.adapt.load_eofm_encoder` (the input filter, a ViT's patch embedding or a
    ResNet's ``conv1``, re-cut for this run's bands by spectrum across sensors, else by name).
    Refused with a ValueError: an export that lacks tensors of this encoder, and one with trunk
    tensors this encoder has no place for (layer scale, a learned position table, a spectral
    adapter ...: load_eofm_encoder names the ``model.overrides`` to set), since either way the
    run would start from another network than the export's.

    Where the export was read from (a local folder, by its absolute path, or a Hub repo and
    revision: :func:`eofm.models.hub.export_source`) is decided here, as it is loaded, and
    kept as the encoder's ``init_origin`` for the checkpoints (:func:`init_origin`), with the
    export's licence (:func:`_donor_license`): the run's weights derive from it, and
    ``eofm-export`` gives them that licence unless told another."""
    encoder = build_encoder(m.name, m.tokenizer, m.img_size, m.overrides, info.bands)
    if not m.init_from:
        return encoder
    from eofm.models.adapt import load_eofm_encoder
    from eofm.models.hub import export_source, from_pretrained

    try:
        donor = from_pretrained(m.init_from)
        origin = export_source(m.init_from)  # as from_pretrained just read it
    except Exception as e:  # missing folder, no network, not an eofm export: one answer
        raise ValueError(f"model.init_from: cannot load {m.init_from!r} as an eofm export "
                         f"({type(e).__name__}: {e})") from None
    if not hasattr(donor, "tokenizer") or not hasattr(encoder, "tokenizer"):
        raise ValueError(f"model.init_from: continual pretraining from an export needs eofm "
                         f"encoders (ViT or ResNet), got {type(donor).__name__} -> "
                         f"{type(encoder).__name__}")
    spectra = {b: (float(w), float(bw)) for b, w, bw in
               zip(info.bands, info.wavelengths.tolist(), info.bandwidths.tolist(), strict=True)}
    report = load_eofm_encoder(encoder, donor, init=m.init_new_bands, spectra=spectra,
                               source=f"model.init_from {m.init_from}")
    if report.missing:
        raise ValueError(f"model.init_from: {m.init_from} lacks {report.missing} of this "
                         f"encoder; start from an export of the same architecture")
    theirs = getattr(donor, "contract", None)
    if theirs is not None:
        log.info("model.init_from: %s was trained on %s bands %s; this run normalises with its "
                 "own dataset's statistics", m.init_from, list(theirs.sensors), list(theirs.bands))
    encoder.init_origin = {**origin, **_donor_license(donor)}
    return encoder


def _donor_license(donor: nn.Module) -> dict[str, Any]:
    """The licence an export loaded with ``from_pretrained`` carries, for the init origin:
    ``{"license": ID}`` (its ``pretrained_cfg.license``) and, for ``other``, ``license_terms``
    (``{"name", "link"}``); empty when it states none (the export's default then applies)."""
    licence = (getattr(donor, "pretrained_cfg", None) or {}).get("license")
    if not licence:
        return {}
    terms = dict(getattr(donor, "license_terms", None) or {})
    return {"license": str(licence), **({"license_terms": terms} if terms else {})}


def init_origin(encoder: nn.Module, init_from: str | None) -> dict[str, Any] | None:
    """What a checkpoint records (under :data:`INIT_ORIGIN`) of where ``model.init_from`` was
    read from, for ``eofm-export``'s card (a Hub ``base_model`` only for a Hub origin) and
    licence (the export's ``license`` and ``license_terms``, :func:`_donor_license`): the
    source :func:`run_encoder` loaded (the encoder's ``init_origin``); a run resuming its own
    checkpoint does not read the export (:func:`.startup.objective_config`), so it is decided
    now, in this run's working directory, as :func:`run_encoder` would have (without the
    licence, which only reading the export gives); None without ``init_from`` or when the
    name is neither a folder nor a Hub repo id here."""
    if not init_from:
        return None
    recorded = getattr(encoder, "init_origin", None)
    if isinstance(recorded, dict):
        return dict(recorded)
    from eofm.models.hub import export_source

    try:
        return export_source(init_from)
    except ValueError:
        return None


def load_extra_state(objective: nn.Module, init_from: str, objective_name: str) -> list[str]:
    """With ``model.init_from`` naming an export that also stores its objective's other
    tensors (``eofm-export --with-decoder``: ``decoder.*`` ...), load them into ``objective``
    so pretraining continues with the trained decoder; the names loaded.

    Only an export of the same objective, trained on this run's band list in this order
    (its contract's bands against the objective's ``bands``), whose tensors have exactly this
    objective's names and shapes is loaded; otherwise nothing is (the decoder starts fresh)
    and a warning says why: another objective, other bands or another band order (a pixel head
    predicts bands by position, so a reordered run would be scored against the wrong bands
    with matching shapes), or every name and shape that differs (e.g. other bands or
    ``objective.decoder_*``; tensors under one of its children that it lacks: a deeper
    decoder). Tensors under a child the fresh objective does not have yet are offered to it:
    its own ``_load_from_state_dict`` may create that child (SoftCon's fp32 EMA shadow
    ``ema_fp32.*``, in an export of a DeepSpeed-bf16 run); any that still find no home are
    named in a warning and left out.
    """
    from eofm.models.hub import load_exported, state_differences

    where = f"model.init_from {init_from}"
    try:
        config, state = load_exported(init_from)
    except Exception as e:  # run_encoder read it a moment ago: moved, or the Hub went away
        raise ValueError(f"model.init_from: cannot load {init_from!r} as an eofm export "
                         f"({type(e).__name__}: {e})") from None
    prefixes = sorted(config.get("extra_state") or [])
    if not prefixes:
        return []
    theirs = {k: v for k, v in state.items() if k.split(".", 1)[0] in prefixes}
    what = ", ".join(f"{p}.*" for p in prefixes)
    made_by = (config.get("eofm_contract") or {}).get("objective")
    if made_by != objective_name:
        log.warning("%s: stores the %s tensors of a %r objective; this run trains %r, so they "
                    "were not used (its own start fresh)", where, what, made_by, objective_name)
        return []
    mine, exported = getattr(objective, "bands", None), (config.get("eofm_contract") or {}).get(
        "bands")
    if mine and exported and list(mine) != list(exported):
        # its pixel head (MAE's p*p*C outputs, SatMAE++'s upsampler, SoftCon's target encoder
        # filter) holds the export's bands at their positions: same names and shapes with
        # the bands in another order (or other bands of the same count) would load silently
        log.warning("%s: its %s tensors were trained on bands %s, this run's are %s; a pixel "
                    "head predicts bands by position, so they were not used: the decoder "
                    "starts fresh", where, what, list(exported), list(mine))
        return []
    full = objective.state_dict()
    ours = {k: v for k, v in full.items() if k.split(".", 1)[0] in prefixes}
    homes = {k.split(".", 1)[0] for k in full}  # its children (and top-level tensors) now
    diff = state_differences(theirs, ours)
    problems = []
    if missing := sorted(diff.missing):
        problems.append(f"missing from the export {missing[:8]}")
    if unexpected := sorted(k for k in diff.unexpected if k.split(".", 1)[0] in homes):
        problems.append(f"not in this objective {unexpected[:8]}")
    if shapes := [f"{k}: export {a} vs run {b}" for k, a, b in diff.shapes]:
        problems.append("shape mismatch " + "; ".join(shapes[:8]))
    if problems:
        log.warning("%s: its %s tensors do not fit this run's %s objective (%s); they were not "
                    "used: the decoder starts fresh", where, what, objective_name,
                    "; ".join(problems))
        return []
    # not strict: the encoder's own tensors are not in ``theirs``; the objective's hooks may
    # create a home for some that it lacks so far (SoftCon: its ema_fp32 shadow)
    left = set(objective.load_state_dict(theirs, strict=False).unexpected_keys)
    if left:
        log.warning("%s: %d of its %s tensors are not in this run's %s objective and were not "
                    "used: %s", where, len(left), what, objective_name, sorted(left)[:8])
    loaded = sorted(set(theirs) - left)
    log.info("%s: loaded its %d %s tensors: pretraining continues with the exported decoder",
             where, len(loaded), what)
    return loaded
