"""What a resumed run changed in its configuration, compared with its checkpoint's.

A run may be resumed with other settings on purpose (a mask-ratio curriculum, a larger batch
on a larger allocation); it must never be silent: ``config.yaml`` and every export then state
the new values only. The schedule (:meth:`.schedules.Schedule.load_state_dict`) and the
optimiser's betas, eps and weight decay (:func:`.strategy.reapply_hyperparameters`) are
reported where they are restored; :func:`changed_settings` names every other setting that
shapes training.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

__all__ = ["INTRODUCED_LATER", "NOT_TRAINING", "SECTIONS", "changed_settings"]

# sections whose values shape what is trained; minus the keys below
SECTIONS = ("data", "model", "objective", "optim")
NOT_TRAINING = frozenset({
    "data.path", "data.build_from", "data.build_args", "data.build_more",  # where, not what
    "data.num_workers",  # refused by the data position when it matters (loader state)
    "model.init_from", "model.init_new_bands",  # read only by a fresh run, not a resume
    "objective.params.weights",  # SoftCon's starting weights: read only by a fresh run too
    "optim.betas", "optim.eps", "optim.weight_decay",  # reported with the optimiser
})

# settings added after checkpoints were written without them, with the value that does what
# those runs did: a checkpoint's config lacking the key compares as that value, not as null
INTRODUCED_LATER: Mapping[str, Any] = {
    "optim.loss_norm": "micro_batch",  # earlier runs normalised each micro-batch's loss
}


def changed_settings(saved: Mapping[str, Any], now: Mapping[str, Any],
                     sections: Sequence[str] = SECTIONS,
                     ignore: Collection[str] = NOT_TRAINING) -> list[str]:
    """``"key old -> new"`` for each setting of ``sections`` (flattened to dotted keys;
    ``objective.params`` and ``model.overrides`` key by key), except those in ``ignore``, that
    differs between the checkpoint's config ``saved`` and this run's ``now``, in a stable
    order. A key of :data:`INTRODUCED_LATER` that ``saved`` lacks (written before the setting
    existed) counts as the value that does what that run did; other keys only one side has
    count as absent (null) on the other. The defaults are pretraining's; fine-tuning passes
    its own sections and the keys it refuses or reports elsewhere."""
    old, new = _flat(saved), _flat(now)
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ignore or not key.startswith(tuple(f"{s}." for s in sections)):
            continue
        a = old[key] if key in old else INTRODUCED_LATER.get(key)
        b = new.get(key)
        if _plain(a) != _plain(b):
            out.append(f"{key} {_show(a)} -> {_show(b)}")
    return out


def _flat(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": value}`` (lists are values)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples as lists, an empty mapping as absent)."""
    if isinstance(value, Mapping) and not value:
        return None
    return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
    """A value for a message (null for absent)."""
    return "null" if value is None else json.dumps(value, default=str)
