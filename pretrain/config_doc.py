"""A resolved configuration as YAML with each key's meaning beside it (``--print-config``).

The meanings are the inline comments of the config dataclasses' fields (``name: type = default
# meaning``), read from their source, so the printout and the code cannot disagree. A field a
subclass inherits, or declares again (a new default) without a comment, has the comment of the
nearest class in its method resolution order that gives one (fine-tuning's sections subclass
pretraining's).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from functools import cache
from typing import Any

import yaml

from eofm.data_shards.remote import without_credentials

__all__ = ["annotated_yaml", "field_comments"]

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")
_MORE = re.compile(r"^\s+#\s*(.+?)\s*$")  # a comment-only line continuing the one above


@cache
def field_comments(cls: type) -> dict[str, str]:
    """``{field: its inline comment}`` of a dataclass (fields without one are left out): the
    comment where ``cls`` declares the field, else where the nearest dataclass it derives
    from does (an inherited field, or one declared again with only a new default)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for klass in cls.__mro__:  # cls first, then its bases, nearest first
        if dataclasses.is_dataclass(klass):
            for name, note in _own_comments(klass).items():
                if name in names:
                    out.setdefault(name, note)
    return out


def _own_comments(cls: type) -> dict[str, str]:
    """``{field: its inline comment}`` of the fields ``cls``'s own source declares."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (e.g. a frozen build): no comments
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    last = None  # the field whose comment a following comment-only line continues
    for line in source.splitlines():
        m = _FIELD.match(line)
        if m and m.group(1) in names and m.group(1) not in out:
            last = m.group(1)
            out[last] = m.group(2)
        elif last is not None and (c := _MORE.match(line)):
            out[last] += " " + c.group(1)
        else:
            last = None
    return out


def _scalar(value: Any) -> str:
    """One YAML flow value (``null``, ``3.0e-4``, ``[s2, s1]``, ``{s2: [B02]}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 16)
    return text.strip().removesuffix("...").strip()


def annotated_yaml(cfg: Any, indent: int = 0) -> str:
    """``cfg`` (a dataclass instance, nested) as block YAML, one key per line, each leaf with its
    field's comment; the output loads back with ``yaml.safe_load`` to ``dataclasses.asdict``,
    except that credentials in URLs and ``pipe:`` commands (``https://user:token@``, ``?token=``)
    read ``***`` (:func:`eofm.data_shards.remote.without_credentials`): what is printed ends up
    in job logs and bug reports, as ``config.yaml`` (redacted the same way) is copied around."""
    lines: list[str] = []
    comments = field_comments(type(cfg))
    pad = " " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(annotated_yaml(value, indent + 2))
            continue
        note = comments.get(f.name)
        lines.append(f"{pad}{f.name}: {_scalar(without_credentials(value))}"
                     + (f"  # {note}" if note else ""))
    return "\n".join(lines)
