"""Reading a weights file for continual pretraining (:mod:`eofm.models.adapt` re-exports
:func:`read_state_dict`).

- The format is read from the file's first bytes, not its name: a safetensors file starts with
  its header's length (8 bytes, little-endian) and the header's ``{``; anything else is read
  with ``torch.load(weights_only=True)`` (never unpickled). Every failure is a ValueError naming
  the file.
- Wrappers are taken apart: a nested ``state_dict``/``model``/``module``/``teacher`` entry; a
  ``module.``/``backbone.``/``encoder.``/``model.`` prefix that every key shares, removed again
  until none is left (``model.module.``); the ``n_averaged`` counter of
  ``torch.optim.swa_utils.AveragedModel``; and, when the network's keys sit under a prefix
  beside other tensors (a DINO teacher: ``backbone.*`` + ``dino_head.*``; a DDP student:
  ``module.backbone.*`` + ``module.head.*``), the tensors under that prefix. Tensors left out
  are named in :attr:`WeightState.set_aside`, which the loaders report as unused.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["WeightState", "is_safetensors", "key_prefixes", "name_list", "read_state_dict"]

log = logging.getLogger(__name__)

_WRAPPERS = ("state_dict", "model", "module", "teacher")
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
_BOOKKEEPING = ("n_averaged",)  # AveragedModel's update counter: not a weight
# a network's input filter, and a key only that network has beside it: under a prefix P,
# P + filter and a key starting with P + sibling mark the network's tensors
_ANCHORS = (("patch_embed.proj.weight", "blocks.0."),  # timm ViT
            ("conv1.weight", "layer1.0.conv1.weight"))  # torchvision/timm ResNet


class WeightState(dict[str, Tensor]):
    """:func:`read_state_dict`'s tensors; ``set_aside``: the names (as in the file) of the
    tensors it left out (beside the network's prefix, or bookkeeping), for the load report."""

    set_aside: tuple[str, ...] = ()


def name_list(names: Iterable[str], most: int = 12) -> str:
    """``['a', 'b', ...]`` of at most ``most`` names, with the count when there are more."""
    names = list(names)
    more = f" ... ({len(names)} in all)" if len(names) > most else ""
    return f"{names[:most]}{more}"


def key_prefixes(keys: Iterable[str], most: int = 6) -> str:
    """What the keys start with: ``'backbone.' (150 tensors), 'head.' (2 tensors)``, most
    common first; for an error that a file's keys are not the ones looked for."""
    counts = Counter(k.split(".", 1)[0] + ("." if "." in k else "") for k in keys)
    return ", ".join(f"{p!r} ({n} tensor{'s' if n > 1 else ''})"
                     for p, n in counts.most_common(most)) or "no tensors"


def is_safetensors(path: str | Path) -> bool:
    """Whether the file starts as a safetensors file does: an 8-byte little-endian header
    length that fits in the file, then the header's ``{``."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= size <= path.stat().st_size - 8


def _load(path: Path) -> object:
    """The file's content: safetensors by its header, else torch.load(weights_only=True)."""
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # a damaged or cut-off file
            raise ValueError(f"weights: cannot read {path} as safetensors (it starts with a "
                             f"safetensors header) ({type(e).__name__}: {e})") from None
    try:  # a file object: torch itself would read a *.safetensors name as safetensors
        with path.open("rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure means the same to the user
        named = (" (named .safetensors, but it does not start with a safetensors header)"
                 if path.suffix == ".safetensors" else "")
        raise ValueError(f"weights: cannot read {path}{named}: not a safetensors file, and "
                         f"torch.load(weights_only=True) failed ({type(e).__name__}: {e}); "
                         f"save plain tensors (e.g. with safetensors.torch.save_file)") from None
    if path.suffix == ".safetensors":
        log.warning("weights: %s is named .safetensors but is a torch file; read with "
                    "torch.load(weights_only=True)", path)
    return state


def _anchor_prefixes(keys: Iterable[str]) -> list[str]:
    """Prefixes (``''`` for none) under which a whole network's keys sit (:data:`_ANCHORS`)."""
    keys = list(keys)
    found = []
    for filt, sibling in _ANCHORS:
        for k in keys:
            if k.endswith(filt) and (k == filt or k[-len(filt) - 1] == "."):
                p = k[:-len(filt)]
                if p not in found and any(j.startswith(p + sibling) for j in keys):
                    found.append(p)
    return found


def read_state_dict(path: str | Path) -> WeightState:
    """Tensors of a safetensors or torch weights file, unwrapped as the module docstring says.

    ValueError naming the file: missing, unreadable (a pickle of classes is not unpickled), no
    tensors, or the tensors of more than one network under different prefixes (a MoCo
    ``encoder_q.`` and ``encoder_k.``: save the one to load alone)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights: no such file {str(path)!r}")
    state = _load(path)
    while isinstance(state, Mapping) and not any(isinstance(v, Tensor) for v in state.values()):
        key = next((k for k in _WRAPPERS if isinstance(state.get(k), Mapping)), None)
        if key is None:
            raise ValueError(f"weights: {path} holds no tensors at the top level nor under "
                             f"{list(_WRAPPERS)}; keys: {sorted(state)[:10]}")
        state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"weights: expected a mapping of tensors in {path}, got "
                         f"{type(state).__name__}")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    aside = [k for k in tensors if k in _BOOKKEEPING and len(tensors) > 1]
    named = {k: k for k in tensors if k not in aside}  # key now -> key in the file
    stripped = True
    while stripped:  # model.module.x -> x
        stripped = False
        for prefix in _PREFIXES:
            if named and all(k.startswith(prefix) for k in named):
                named = {k[len(prefix):]: v for k, v in named.items()}
                stripped = True
    anchors = _anchor_prefixes(named)
    if "" not in anchors and len(anchors) > 1:
        raise ValueError(f"weights: {path} holds more than one network, under the prefixes "
                         f"{anchors}; save the one to start from alone (e.g. "
                         f"{{k[len(prefix):]: v for k, v in state.items() if "
                         f"k.startswith(prefix)}}) and name that file")
    if "" not in anchors and anchors:
        p = anchors[0]
        aside += [v for k, v in named.items() if not k.startswith(p)]
        named = {k[len(p):]: v for k, v in named.items() if k.startswith(p)}
        log.info("weights: %s: took the network under %r; set aside %s", path, p,
                 name_list(sorted(aside)))
    out = WeightState({k: tensors[v] for k, v in named.items()})
    out.set_aside = tuple(sorted(aside))
    return out
