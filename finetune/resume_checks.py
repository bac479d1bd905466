"""Whether a fine-tuning run may resume from the checkpoints of an earlier one: the data
order (``data.seed``, ``data.batch_size``, an ``optim.accum_steps`` that changes the samples
an epoch reads), the train/test split (hashes of the sample keys, so a moved copy of the
same data still resumes) and the encoder's input contract (the preprocessing the
checkpoint's weights were trained with; a moved copy of the same export still resumes) must
stay; schedule changes may, as in pretraining (a warning)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .evaluation_check import contract_differences

__all__ = ["FINETUNE_SECTIONS", "NOT_RESUME_CHECKED", "contract_problem", "order_problems",
           "resume_problems", "samples_per_epoch", "schedule_changes", "split_fingerprint",
           "split_problem"]

ORDER_KEYS = ("data.seed", "data.batch_size")  # a resume with others reads other samples
SCHEDULE_KEYS = ("schedule.steps", "schedule.epochs", "schedule.warmup_steps",
                 "schedule.warmup_fraction", "schedule.final_lr_ratio", "optim.base_lr",
                 "optim.scale_lr")  # a resume may change them (ScheduleConfig): a warning
# Sections whose other changes a resume names (warned, old -> new: pretrain.resume_changes),
# and the keys it does not: refused or warned above, where the data or the encoder is read
# from (the split and the contract are checked instead), not shaping training, or never read
# by eofm-finetune (optim.loss_norm: refused unless its default, finetune_config.NOT_READ).
FINETUNE_SECTIONS = ("task", "encoder", "data", "optim")
NOT_RESUME_CHECKED = frozenset({
    *ORDER_KEYS, *SCHEDULE_KEYS, "data.path", "data.test_path", "data.test_fraction",
    "data.group_tiles", "data.s2_offset", "data.modality", "data.eval_batch_size",
    "encoder.path", "encoder.license", "encoder.license_name", "encoder.license_link",
    "encoder.override_contract", "optim.loss_norm",
})


def _dotted(tree: Any, key: str) -> Any:
    """``tree["a"]["b"]`` for ``key`` "a.b"; KeyError when a part is missing."""
    for part in key.split("."):
        tree = tree[part]
    return tree


def _changes(saved: dict[str, Any], now: dict[str, Any], keys: Sequence[str]
             ) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, value now)`` of each of ``keys`` that differs (a key the saved
    config lacks, from an older version, is left out)."""
    out = []
    for key in keys:
        try:
            then = _dotted(saved, key)
        except (KeyError, TypeError):
            continue
        if then != _dotted(now, key):
            out.append((key, then, _dotted(now, key)))
    return out


def order_problems(saved: dict[str, Any], now: dict[str, Any], train: int,
                   where: Path) -> list[str]:
    """Why a resume of the checkpoints in ``where`` (written with config ``saved``) with
    config ``now`` and ``train`` training samples would read other samples at its steps than
    the checkpoint's run: another ``data.seed`` or ``data.batch_size``, or an
    ``optim.accum_steps`` that changes the samples an epoch reads (:func:`samples_per_epoch`)."""
    again = "or start a new run in another --out"
    out = [f"{key}: the checkpoint's run ({where}) had {a!r}, this one {b!r}; it sets which "
           f"samples every step reads, so the resumed run would repeat some and skip others: "
           f"resume with {key}={a}, {again}" for key, a, b in _changes(saved, now, ORDER_KEYS)]
    for key, a, b in _changes(saved, now, ("optim.accum_steps",)):
        if _changes(saved, now, ("data.batch_size",)):
            continue  # refused above
        batch = now["data"]["batch_size"]
        was, will = samples_per_epoch(train, batch, a), samples_per_epoch(train, batch, b)
        if was != will:
            out.append(f"{key}: the checkpoint's run ({where}) had {a}, this one {b}; with "
                       f"data.batch_size {batch} an epoch then read {was} of the {train} "
                       f"training samples, now {will}, so later steps would read other samples: "
                       f"resume with {key}={a}, {again}")
    return out


def split_problem(saved: dict[str, Any], now: dict[str, Any], saved_split: Any,
                  split: dict[str, Any], where: Path) -> str | None:
    """Why the train/test samples of this run (``split``, :func:`split_fingerprint`) cannot
    continue the checkpoints in ``where`` (``saved_split``; absent in older ones: no check),
    naming the data fields that changed; None when they are the same samples."""
    if not isinstance(saved_split, dict) or saved_split == split:
        return None
    keys = ("data.path", "data.test_path", "data.test_fraction", "data.group_tiles",
            "data.seed")
    changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in _changes(saved, now, keys))
    which = "training" if saved_split.get("train") != split["train"] else "held-out test"
    return (f"data: the {which} samples differ from the checkpoint's run ({where}): "
            f"{saved_split.get('samples')} train/test samples then, {split['samples']} now "
            f"({changed or 'the dataset changed'}); the held-out split must stay unseen by "
            "training: resume with the data it was written with, or start a new run in another "
            "--out")


def contract_problem(saved: Any, now: Mapping[str, Any], where: Path,
                     paths: tuple[Any, Any] = (None, None)) -> str | None:
    """Why this run's encoder input contract ``now`` cannot continue the checkpoints in
    ``where``, trained with contract ``saved``: the fields of :data:`.evaluation_check.CHECKED_CONTRACT`
    that differ (every field but ``data``, where the statistics came from), which would
    preprocess the rest of the run unlike its first steps while the export carries only this
    contract. ``paths``: the checkpoint's and this run's ``encoder.path``, named when they
    differ. None when the contracts match, or for an older checkpoint without a contract
    (``saved`` not a mapping: nothing to compare with; the caller says so)."""
    if not isinstance(saved, Mapping):
        return None
    differ = contract_differences(saved, now, ("then", "now"), band_sep="")
    if not differ:
        return None
    fields = "; ".join(f"{k}: {why}" for k, why in differ)
    moved = (f" (encoder.path {paths[0]!r} then, {paths[1]!r} now)"
             if paths[0] is not None and paths[0] != paths[1] else "")
    return (f"encoder: the checkpoint ({where}) was trained with another input contract "
            f"(fields {', '.join(k for k, _ in differ)}; {fields}){moved}; its steps "
            "preprocessed the data "
            "one way, the resumed ones would another, and the export would state only the "
            "second: resume with the encoder it was started from, or start a new run in "
            "another --out")


def samples_per_epoch(train: int, batch_size: int, accum_steps: int) -> int:
    """Training samples an epoch reads (drop-last per micro-step of ``batch_size //
    accum_steps`` samples across all ranks): the data order depends on it, not on the split
    of a step into micro-steps or ranks."""
    micro = max(1, batch_size // accum_steps)
    return train // micro * micro


def split_fingerprint(data: Any, train_idx: Sequence[int], test_data: Any,
                      test_idx: Sequence[int]) -> dict[str, Any]:
    """Which samples train and which are held out (hashes of their keys, and the counts): a
    resume must keep them, whatever the path the data is read from now."""
    def digest(d: Any, idx: Sequence[int]) -> str:
        keys = "\n".join(str(d.keys[int(i)]) for i in idx)
        return hashlib.sha256(keys.encode()).hexdigest()[:16]

    return {"train": digest(data, train_idx), "test": digest(test_data, test_idx),
            "samples": [len(train_idx), len(test_idx)]}


def schedule_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"key old -> new"`` for each of :data:`SCHEDULE_KEYS` that differs between the
    checkpoint's config ``saved`` and this run's ``now`` (allowed on resume, warned about)."""
    return [f"{k} {a} -> {b}" for k, a, b in _changes(saved, now, SCHEDULE_KEYS)]


def resume_problems(saved: dict[str, Any], now: dict[str, Any], train: int, saved_split: Any,
                    split: dict[str, Any], where: Path) -> list[str]:
    """Why this run (config ``now``, ``train`` training samples, ``split``) cannot resume the
    checkpoints in ``where`` (config ``saved``, ``saved_split``): :func:`order_problems`, then
    :func:`split_problem` unless a new ``data.seed`` alone explains it (named once)."""
    problems = order_problems(saved, now, train, where)
    seed_only = (bool(_changes(saved, now, ("data.seed",))) and not _changes(
        saved, now, ("data.path", "data.test_path", "data.test_fraction", "data.group_tiles")))
    why = split_problem(saved, now, saved_split, split, where)
    if why is not None and not seed_only:
        problems.append(why)
    return problems
