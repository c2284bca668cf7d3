"""The YAML side of a config: files, ``key=value`` overrides, duplicate keys, alias bombs.

These are YAML concerns, not validation: a mapping that holds a key twice or anchors that expand
to billions of values is refused before anything is built from it (:mod:`interlude.config.build`
then validates the values with pydantic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from interlude.errors import ConfigError, shown


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is parsed as YAML so ``1e-3``, ``true``, ``[1,2]`` work."""
    if "=" not in text:
        raise ConfigError(f"override {shown(text)} must look like key=value (e.g. train.steps=500)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else raw  # a SafeLoader
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise ConfigError(f"override {shown(key.strip())}: the value is nested too deeply; "
                          "write a flat value") from None
    except ConfigError as exc:
        raise ConfigError(f"override {shown(key.strip())}: {exc}") from None
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)
    return key.strip(), value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in ".e")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding the same key twice, at any depth.

    Plain YAML keeps the last value silently, so ``lr: 0.1`` written twice in a long config
    would train with whichever came last. Keys merged in with ``<<: *anchor`` may be overridden.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._root = node
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    dotted = ".".join([*_yaml_path(getattr(self, "_root", None), node), str(key)])
                    raise ConfigError(
                        f"{key_node.start_mark.name}: key '{dotted}' is given twice (lines {first} "
                        f"and {key_node.start_mark.line + 1}); keep only one of them"
                    )
        return super().construct_mapping(node, deep=deep)


MAX_YAML_VALUES = 100_000
"""Most values a config (file or override) may hold once its aliases are expanded."""


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose anchors/aliases expand past :data:`MAX_YAML_VALUES` values, or
    refer to themselves, before anything is built from it.

    ``&a [x, x] , &b [*a, *a], ...`` takes a few hundred characters and expands to billions of
    values: harmless while the aliases are shared references, a hang as soon as anything walks
    the value (validation, an error message). Sizes are counted once per node (memoised), so the
    check costs the size of the text, not of the expansion.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes and sizes[id(node)] >= 0:
            continue
        children = _yaml_children(node)
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                _refuse_expansion(node, f"expand to more than {MAX_YAML_VALUES:,} values")
            continue
        if sizes.get(id(node)) == -1:
            _refuse_expansion(node, "refer to themselves")
        sizes[id(node)] = -1  # in progress: meeting it again below means a cycle
        stack.append((node, True))
        for child in children:
            if sizes.get(id(child)) == -1:
                _refuse_expansion(child, "refer to themselves")
            if id(child) not in sizes:
                stack.append((child, False))


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _refuse_expansion(node: yaml.Node, what: str) -> None:
    mark = node.start_mark
    where = "" if mark.name.startswith("<") else f"{mark.name}, "  # a file, not an override
    raise ConfigError(f"{where}line {mark.line + 1}: the YAML anchors/aliases (&name, *name) here "
                      f"{what}; write the values out instead")


def _yaml_path(root: yaml.Node | None, target: yaml.Node) -> list[str]:
    """Keys leading from the document root to ``target`` (for error messages)."""
    stack: list[tuple[yaml.Node, list[str]]] = [(root, [])] if root is not None else []
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend((v, [*path, str(k.value)]) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, [*path, str(i)]) for i, v in enumerate(node.value))
    return []


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file with :class:`UniqueKeyLoader`; any problem is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; a config must be YAML text "
                          "(save it as UTF-8)") from None
    except RecursionError:
        raise ConfigError(f"{path}: values are nested too deeply to be a config") from None
