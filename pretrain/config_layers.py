"""The layers of a configuration: YAML files with ``_base_`` parents and ``key=value`` overrides.

:func:`read_yaml_layers` reads a YAML file and its parents (parents first); :func:`assign` merges
one value into a structured OmegaConf config (mappings key by key, ``_replace_: true`` replaces),
collecting every problem (unknown key with a suggestion, wrong type) instead of stopping at the
first; :func:`parse_override` and :func:`string_override` read ``key=value`` overrides (string
fields keep the text as typed). Used by :mod:`.config` (pretraining) and
:mod:`eofm.finetune.finetune_config`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import StringNode

from .config_checks import suggest

__all__ = ["BASE_KEY", "REPLACE_KEY", "assign", "parse_override", "read_yaml_layers",
           "string_override"]

BASE_KEY = "_base_"
REPLACE_KEY = "_replace_"  # in a mapping: replace the earlier mapping instead of merging


def read_yaml_layers(path: Path, problems: list[str], seen: tuple[Path, ...] = ()) -> list[dict]:
    """The mappings of ``path`` and its ``_base_`` parents, parents first."""
    path = path.resolve()
    if path in seen:
        problems.append(f"{path}: {BASE_KEY} cycle through {[str(p) for p in seen]}")
        return []
    try:
        node = OmegaConf.load(path)  # OmegaConf's YAML reads 3e-4 as a float
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as e:
        problems.append(f"{path}: cannot read the YAML file ({e})")
        return []
    if not isinstance(node, DictConfig):
        problems.append(f"{path}: expected a mapping at the top level, got a list")
        return []
    data = OmegaConf.to_container(node, resolve=False)
    bases = data.pop(BASE_KEY, None) or []
    bases = [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, list) and all(isinstance(b, str) and b for b in bases)):
        problems.append(f"{path}: {BASE_KEY}: expected a parent YAML file name or a list of "
                        f"them (relative to this file), got {bases!r}")
        return []
    out: list[dict] = []
    for base in bases:
        out += read_yaml_layers(path.parent / str(base), problems, (*seen, path))
    return [*out, data]


def _expected(root: Any, parts: Sequence[str]) -> str:
    """The declared type of the field at ``parts`` of dataclass ``root``, as written there."""
    cls: Any = root
    for p in parts:
        if not dataclasses.is_dataclass(cls):
            return f"an entry of {cls}"
        owner = sys.modules[cls.__module__].__dict__
        cls = {f.name: f.type for f in dataclasses.fields(cls)}[p]
        cls = owner.get(cls, cls)  # nested config classes are named by string
    return cls.__name__ if isinstance(cls, type) else str(cls)


def _is_struct(node: Any) -> bool:
    """Whether ``node`` is a dataclass section (closed keys) rather than a free dict."""
    return isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node))


def _unknown(node: Any, parts: Sequence[str], problems: list[str]) -> bool:
    """Record an unknown-key problem (with a suggestion) when ``parts[-1]`` is not in ``node``."""
    if _is_struct(node) and parts[-1] not in node:
        problems.append(f"{'.'.join(parts)}: unknown key{suggest(parts[-1], list(node.keys()))}")
        return True
    return False


def _take_replace(value: Any, parts: Sequence[str], problems: list[str]) -> tuple[Any, bool]:
    """``value`` without its ``_replace_`` marker, and whether the marker asked to replace."""
    if not isinstance(value, Mapping) or REPLACE_KEY not in value:
        return value, False
    flag = value[REPLACE_KEY]
    if not isinstance(flag, bool):
        problems.append(f"{'.'.join([*parts, REPLACE_KEY])}: expected true or false, got "
                        f"{flag!r}")
        flag = False
    return {k: v for k, v in value.items() if k != REPLACE_KEY}, flag


def _reset(cfg: DictConfig, parts: list[str], problems: list[str]) -> None:
    """Empty the free dict, or restore the section's defaults, at ``parts`` (for ``_replace_``)."""
    node: Any = cfg
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, DictConfig) else None
    if not isinstance(node, DictConfig) or _unknown(node, parts, problems):
        return
    child = node.get(parts[-1])
    if _is_struct(child):
        node[parts[-1]] = OmegaConf.structured(OmegaConf.get_type(child))
    elif isinstance(child, DictConfig):
        node[parts[-1]] = {}
    elif child is not None:
        problems.append(f"{'.'.join(parts)}: {REPLACE_KEY} applies to a mapping, and this is "
                        f"{_expected(OmegaConf.get_type(cfg), parts)}")


def assign(cfg: DictConfig, parts: list[str], value: Any, problems: list[str]) -> None:
    """Set ``cfg.<parts> = value`` (mappings merge key by key unless they hold ``_replace_:
    true``); problems are collected."""
    value, replace = _take_replace(value, parts, problems)
    if replace:
        _reset(cfg, parts, problems)
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if _unknown(node, parts[: i + 1], problems):
            return
        child = node.get(part)
        if child is None:  # a new key inside a free dict: OmegaConf.update creates the path
            break
        if not isinstance(child, DictConfig):
            problems.append(f"{'.'.join(parts[: i + 1])}: is a value, not a section "
                            f"(cannot set {'.'.join(parts)})")
            return
        node = child
    else:
        if _unknown(node, parts, problems):
            return
        child = node.get(parts[-1])
        if isinstance(value, Mapping) and value and isinstance(child, DictConfig):
            for k, v in value.items():
                assign(cfg, [*parts, str(k)], v, problems)
            return
    try:
        OmegaConf.update(cfg, ".".join(parts), value, merge=True)
    except OmegaConfBaseException:
        problems.append(f"{'.'.join(parts)}: expected {_expected(OmegaConf.get_type(cfg), parts)}, got {value!r}")


def string_override(cfg: DictConfig, parts: Sequence[str], text: str, value: Any) -> Any:
    """The value of override ``text`` (``key=value``, already parsed as YAML into ``value``)
    for the field at ``parts`` of ``cfg``: for a string field (a path, a name) the text after
    ``=`` as typed, one layer of matching quotes removed, instead of its YAML reading, which
    would turn ``runtime.out_dir=0612`` into 394, ``12:30`` into 750, ``on`` into True and cut
    ``runs/a #1`` at its ``#``; ``null`` (or ``~``) unquoted is None, which only an optional
    field takes (quote it, ``'null'``, for the text itself).
    Any other field, or a path that is not a string field of ``cfg``: ``value`` unchanged."""
    node: Any = cfg
    try:
        for p in parts[:-1]:
            node = node[p]
        field = node._get_node(parts[-1]) if isinstance(node, DictConfig) else None
    except (KeyError, AttributeError, OmegaConfBaseException):
        return value
    if not isinstance(field, StringNode):
        return value
    raw = text.partition("=")[2].strip()
    if raw in ("null", "~"):  # None: refused below for a field that must hold a string
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def parse_override(text: str, problems: list[str]) -> tuple[list[str], Any] | None:
    """``'a.b=3e-4'`` -> ``(['a', 'b'], 0.0003)``, the value parsed as YAML."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
        problems.append(f"override {text!r}: expected key=value with a dotted key")
        return None
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([text]), resolve=False)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        problems.append(f"override {text!r}: cannot parse the value ({e})")
        return None
    value: Any = parsed
    parts = key.strip().split(".")
    for p in parts:
        value = value[p]
    return parts, value
