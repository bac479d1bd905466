"""The layers of a configuration: YAML files with ``_base_`` parents and ``key=value`` overrides.

:func:`read_yaml_layers` reads a YAML file and its parents (parents first); :func:`assign` merges
one value into a structured OmegaConf config (mappings key by key, ``_replace_: true`` replaces),
collecting every problem (unknown key with a suggestion, wrong type) instead of stopping at the
first; :func:`parse_override` and :func:`string_override` read ``key=value`` overrides (string
fields keep the text as typed). The items of a list of strings (``data.build_args``,
``data.build_more``, a ``data.bands`` list) keep the text as typed too, from a YAML file and
an override alike: both readers mark each sequence with its items' text
(:class:`TextItems`), which :func:`assign` takes for such a field instead of the YAML
reading (``[--tile, 064]`` is not ``['--tile', '52']``). :func:`last_set` tells which layer
set a field last. Used by :mod:`.config` (pretraining) and
:mod:`eofm.finetune.finetune_config` (which takes :func:`string_override` only).
"""

from __future__ import annotations

import dataclasses
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import StringNode

from .config_checks import suggest

__all__ = ["BASE_KEY", "REPLACE_KEY", "Setting", "TextItems", "assign", "last_set",
           "parse_override", "read_yaml_layers", "read_yaml_sources", "string_override"]

BASE_KEY = "_base_"
REPLACE_KEY = "_replace_"  # in a mapping: replace the earlier mapping instead of merging


class TextItems(list):
    """A YAML sequence as read (``064`` the number 52, ``on`` True), that also holds in
    ``texts`` each item as typed: the text of a plain (unquoted) scalar that YAML read as a
    number or a boolean, the item itself otherwise (a string, a quoted one, null, a nested
    value). :func:`assign` takes ``texts`` for a field declared a list of strings."""

    texts: list[Any]


def _text_of(item: Any, node: yaml.Node) -> Any:
    """``item`` (YAML's reading of ``node``) as typed: a plain scalar's text when YAML read a
    number or a boolean from it; ``item`` itself otherwise (null stays None)."""
    plain = isinstance(node, yaml.ScalarNode) and node.style is None
    return node.value if plain and item is not None and not isinstance(item, str) else item


def _entries(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    """The value nodes of mapping ``node`` by key text, those of ``<<`` merge keys included
    (the mapping's own keys win, then the first merged mapping, as YAML reads them)."""
    merged: dict[str, yaml.Node] = {}
    own: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        if key.tag == "tag:yaml.org,2002:merge":
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in reversed(sources):
                if isinstance(source, yaml.MappingNode):
                    merged.update(_entries(source))
        else:
            own[str(key.value)] = value
    return {**merged, **own}


def _with_texts(data: Any, node: yaml.Node | None) -> Any:
    """``data`` (YAML's reading of ``node``) with every sequence a :class:`TextItems`; where
    the two do not line up, ``data`` is left as it is there."""
    if isinstance(data, dict) and isinstance(node, yaml.MappingNode):
        keys = _entries(node)
        return {k: _with_texts(v, keys.get(str(k))) for k, v in data.items()}
    if isinstance(data, list) and isinstance(node, yaml.SequenceNode) \
            and len(data) == len(node.value):
        items = TextItems(_with_texts(x, n) for x, n in zip(data, node.value, strict=True))
        items.texts = [_text_of(x, n) for x, n in zip(data, node.value, strict=True)]
        return items
    return data


def _compose(text: str) -> yaml.Node | None:
    """The YAML node tree of ``text`` (the text of each scalar as typed); None when it cannot
    be read (the reader that parsed ``text`` already reported why)."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _not_a_mapping(tree: yaml.Node | None) -> str | None:
    """What the top level of a YAML file is when it is neither a mapping nor empty (``a
    list``, ``the value 'hello'``); None for a mapping, an empty file, a lone ``null`` or a
    tree that could not be read. OmegaConf would read a lone string ``hello`` as the mapping
    ``{hello: null}``, reported as an unknown key."""
    if isinstance(tree, yaml.SequenceNode):
        return "a list"
    if isinstance(tree, yaml.ScalarNode) and tree.tag != "tag:yaml.org,2002:null":
        return f"the value {tree.value!r}"
    return None


def _read_mapping(path: Path, problems: list[str]) -> dict | None:
    """The top-level mapping of YAML file ``path`` (sequences :class:`TextItems`); None, with
    a problem naming ``path``, when it cannot be read (missing, a folder, not UTF-8 text, not
    YAML) or is not a mapping."""
    node = None
    try:
        text = path.read_text(encoding="utf-8")
        tree = _compose(text)
        got = _not_a_mapping(tree)
        if got is None:
            stream = io.StringIO(text)
            stream.name = str(path)  # YAML's errors name the file ("<file>" otherwise)
            node = OmegaConf.load(stream)  # OmegaConf's YAML reads 3e-4 as a float
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as e:
        problems.append(f"{path}: cannot read the YAML file ({e})")
        return None
    if node is not None and not isinstance(node, DictConfig):
        got = "a list"  # a mapping YAML itself reads as a list of pairs (!!omap, !!pairs)
    if got is not None:
        problems.append(f"{path}: expected a mapping at the top level, got {got}")
        return None
    return _with_texts(OmegaConf.to_container(node, resolve=False), tree)


def read_yaml_layers(path: Path, problems: list[str], seen: tuple[Path, ...] = ()) -> list[dict]:
    """The mappings of ``path`` and its ``_base_`` parents, parents first."""
    return [data for _, data in read_yaml_sources(path, problems, seen)]


def read_yaml_sources(path: Path, problems: list[str],
                      seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """``(file, mapping)`` of ``path`` and its ``_base_`` parents, parents first (each file
    resolved to an absolute path). Sequences in the mappings are :class:`TextItems`."""
    path = path.resolve()
    if path in seen:
        problems.append(f"{path}: {BASE_KEY} cycle through {[str(p) for p in seen]}")
        return []
    data = _read_mapping(path, problems)
    if data is None:
        return []
    bases = data.pop(BASE_KEY, None) or []
    bases = [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, list) and all(isinstance(b, str) and b for b in bases)):
        problems.append(f"{path}: {BASE_KEY}: expected a parent YAML file name or a list of "
                        f"them (relative to this file), got {bases!r}")
        return []
    out: list[tuple[Path, dict]] = []
    for base in bases:
        out += read_yaml_sources(path.parent / str(base), problems, (*seen, path))
    return [*out, (path, data)]


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


def _holds_strings(node: DictConfig, key: str) -> bool:
    """Whether ``node[key]`` is declared a list of strings: a ``list[str]`` field
    (``data.build_args``), or a new entry of a ``dict[str, list[str]]`` (``data.bands``)."""
    try:
        field = node._get_node(key)
    except (KeyError, AttributeError, OmegaConfBaseException):
        field = None
    if isinstance(field, ListConfig):
        return field._metadata.element_type is str
    entry = node._metadata.element_type if field is None else None
    return get_origin(entry) in (list, tuple) and get_args(entry)[:1] == (str,)


def _plain(value: Any) -> Any:
    """``value`` with every :class:`TextItems` a plain list again (OmegaConf refuses a list
    subclass in an untyped entry)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, TextItems):
        return [_plain(v) for v in value]
    return value


def _as_typed(node: Any, key: str, value: Any) -> Any:
    """``value`` for ``node[key]``: a :class:`TextItems` assigned to a list of strings gives
    its items as typed (``[--tile, 064]``: ``['--tile', '064']``, not YAML's ``52``);
    anything else YAML's reading (:func:`_plain`)."""
    if isinstance(value, TextItems) and isinstance(node, DictConfig) \
            and _holds_strings(node, key):
        return list(value.texts)
    return _plain(value)


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
        value = _as_typed(node, parts[-1], value)
    value = _plain(value)  # a new key inside a free dict (the loop's break): no declared type
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
    """``'a.b=3e-4'`` -> ``(['a', 'b'], 0.0003)``, the value parsed as YAML (its sequences
    :class:`TextItems`, holding their items as typed)."""
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
    return parts, _with_texts(value, _compose(text.partition("=")[2]))


@dataclasses.dataclass(frozen=True)
class Setting:
    """One layer's setting, in merge order: a YAML file's top-level key, or an override."""

    where: str  # the YAML file, or "the override KEY=VALUE"
    parts: tuple[str, ...]  # the dotted key it sets
    value: Any  # the value as read (a mapping for a section)

    def sets(self, key: Sequence[str]) -> bool:
        """Whether this setting gives the field ``key`` (dotted parts) a value."""
        n = len(self.parts)
        if n > len(key) or self.parts != tuple(key[:n]):
            return False
        value = self.value
        for part in key[n:]:
            if not (isinstance(value, Mapping) and part in value):
                return False
            value = value[part]
        return True

    def resets(self, key: Sequence[str]) -> bool:
        """Whether this setting puts a section holding ``key`` back to its defaults
        (``_replace_: true``) without giving ``key`` a value."""
        n = len(self.parts)
        if n > len(key) or self.parts != tuple(key[:n]) or self.sets(key):
            return False
        value = self.value
        for part in key[n:]:
            if not isinstance(value, Mapping):
                return False
            if value.get(REPLACE_KEY) is True:
                return True
            if part not in value:
                return False
            value = value[part]
        return False


def last_set(settings: Sequence[Setting], key: Sequence[str]) -> Setting | None:
    """The last of ``settings`` that gave the field ``key`` (dotted parts) a value; None when
    none did, or a later ``_replace_: true`` put its section back to the defaults."""
    found = None
    for setting in settings:
        if setting.sets(key):
            found = setting
        elif setting.resets(key):
            found = None
    return found
