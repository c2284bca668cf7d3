"""The key listing read from the option classes: ranges, defaults, docs, bookkeeping, ``diff``.

Everything here is derived from the pydantic models (``model_fields``: annotation, ``Field``
constraints, attribute docstrings, ``json_schema_extra`` markers) and the registries, so a key
declared by a component appears in ``interlude config keys`` and the README table without being
listed anywhere else.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic.fields import FieldInfo

from interlude.config.options import (
    AlgorithmOptions,
    DataConfig,
    ModelConfig,
    Options,
    TrainConfig,
    allows_none,
    strip_none,
)
from interlude.config.registry import REGISTRIES, generation
from interlude.errors import shown

SECTIONS: dict[str, type[Options]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "algorithm": AlgorithmOptions,
    "train": TrainConfig,
}
"""Section -> its generic class (the keys every component of the section has)."""


@dataclass(frozen=True)
class Range:
    """Valid interval of a numeric key, read from its ``Field(ge=.., gt=.., le=.., lt=..)``
    (of every item for a list); ``None`` leaves that side open. Used to word messages and docs."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __str__(self) -> str:
        """``> 0``, ``>= 1``, ``[0, 1)``, ``(0, 1]`` ..."""
        low = (f"[{_number_text(self.ge)}" if self.ge is not None
               else f"({_number_text(self.gt)}" if self.gt is not None else None)
        high = (f"{_number_text(self.le)}]" if self.le is not None
                else f"{_number_text(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"{low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return "any"

    def phrase(self) -> str:
        """``> 0`` or ``in [0, 1)``: what follows "must be a number" in an error message."""
        text = str(self)
        return f"in {text}" if text[0] in "[(" else text


def _number_text(value: float) -> str:
    if isinstance(value, int) and value >= 2**31 and (value + 1) & value == 0:
        return f"2**{(value + 1).bit_length() - 1}-1"  # 2**63-1 rather than 19 digits
    return str(int(value)) if float(value).is_integer() else repr(value)


def range_of(info: FieldInfo) -> Range | None:
    """The field's bounds, or those of its list items (``list[Annotated[int, Field(ge=0)]]``)."""
    bounds = _bounds(info.metadata)
    kind = strip_none(info.annotation)
    if bounds is None and typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        if typing.get_origin(item) is Annotated:
            extra = typing.get_args(item)[1:]
            bounds = _bounds([m for a in extra for m in (a.metadata if isinstance(a, FieldInfo)
                                                         else [a])])
    return bounds


def _bounds(metadata: list[Any]) -> Range | None:
    found = {}
    for item in metadata:
        for side, cls in (("ge", annotated_types.Ge), ("gt", annotated_types.Gt),
                          ("le", annotated_types.Le), ("lt", annotated_types.Lt)):
            if isinstance(item, cls):
                found[side] = getattr(item, side)
    return Range(**found) if found else None


def type_name(tp: Any) -> str:
    """``int``, ``float or None``, ``list[int]``, ``avg|cd`` ... as docs show a type."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, typing.get_origin(int | None)):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def extra_of(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


@dataclass(frozen=True)
class KeySpec:
    """Everything the option classes say about one dotted key."""

    key: str
    type: Any
    default: Any
    description: str = ""
    range: Range | None = None
    bookkeeping: bool = False
    rounding: bool = False
    choices: tuple[str, ...] | None = None
    forms: str | None = None
    """How a ``pattern`` key's valid values are described (``train.device``)."""
    owners: tuple[str, ...] = ()
    """The components declaring the key (empty: a generic key of the section)."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Owner -> its default, for a key whose default differs between its owners."""

    @property
    def kind(self) -> str:
        """``int``, ``float``, ``list[int]`` ... of the value once None is set aside."""
        return type_name(strip_none(self.type))

    @property
    def optional(self) -> bool:
        return allows_none(self.type)

    @property
    def section(self) -> str:
        return self.key.partition(".")[0]

    @property
    def valid(self) -> str:
        """Compact valid values for docs: ``> 0``, ``[0, 1)``, ``auto, cpu, ...`` ('' = any)."""
        if self.range is not None:
            text = f"items {self.range}" if self.kind.startswith("list") else str(self.range)
        elif self.choices is not None:
            text = ", ".join(self.choices)
        elif self.forms is not None:
            text = self.forms
        else:
            return ""
        return f"{text}, or None" if self.optional else text

    def default_text(self, quote: str = "") -> str:
        """The default as docs show it: ``0.03``, or ``freematch 0.001, interlude_plus 0.05``."""
        if not self.defaults:
            return f"{quote}{self.default!r}{quote}"
        return ", ".join(f"{owner} {quote}{value!r}{quote}" for owner, value in self.defaults.items())

    def selecting(self) -> list[str]:
        """Overrides that choose a component declaring this key (none for a generic key)."""
        registry = REGISTRIES.get(self.section)
        if not self.owners or registry is None:
            return []
        return [f"{self.section}.{registry.selector}={registry.get(self.owners[0]).example}"]


def schema() -> dict[str, KeySpec]:
    """Dotted key -> :class:`KeySpec`: the generic keys of each section, then the keys its
    registered components declare (in registration order)."""
    return _schema(generation())


@functools.lru_cache(maxsize=4)
def _schema(generation: int) -> dict[str, KeySpec]:
    specs: dict[str, KeySpec] = {}
    for section, base in SECTIONS.items():
        registry = REGISTRIES.get(section)
        owners: dict[str, list[tuple[str, FieldInfo]]] = {name: [] for name in base.model_fields}
        for component in registry or []:
            for name, info in component.options.model_fields.items():
                owners.setdefault(name, []).append((component.name, info))
        for name, declared in owners.items():
            generic = name in base.model_fields
            info = base.model_fields[name] if generic else declared[0][1]
            defaults = {owner: i.default for owner, i in declared}
            differ = not generic and len({repr(v) for v in defaults.values()}) > 1
            specs[f"{section}.{name}"] = _spec(
                f"{section}.{name}", info, () if generic else tuple(defaults),
                defaults if differ else {}, _choices(section, name),
            )
    return specs


def _spec(key: str, info: FieldInfo, owners: tuple[str, ...], defaults: dict[str, Any],
          choices: tuple[str, ...] | None) -> KeySpec:
    extra = extra_of(info)
    return KeySpec(
        key=key, type=info.annotation, default=info.default,
        description=" ".join((info.description or "").split()), range=range_of(info),
        bookkeeping=bool(extra.get("bookkeeping")), rounding=bool(extra.get("rounding")),
        choices=choices, forms=extra.get("forms"), owners=owners, defaults=defaults,
    )


def _choices(section: str, name: str) -> tuple[str, ...] | None:
    """The selector keys' valid values come from their registry; ``data.*_from`` name datasets."""
    registry = REGISTRIES.get(section)
    if registry is None:
        return None
    if name == registry.selector:
        values = registry.selector_values()
        return ("auto", *values) if section == "model" else tuple(values)
    if section == "data" and name in ("unlabeled_from", "test_from"):
        return tuple(registry.names())
    return None


def valid_keys() -> list[str]:
    """All dotted keys a config accepts, e.g. ``train.steps``."""
    return list(schema())


def bookkeeping_keys() -> frozenset[str]:
    return frozenset(k for k, s in schema().items() if s.bookkeeping)


def rounding_keys() -> frozenset[str]:
    return frozenset(k for k, s in schema().items() if s.rounding)


def _described(spec: KeySpec) -> str:
    """The key's description, then which components read it (a component's own key)."""
    return f"{spec.description} (used by {', '.join(spec.owners)})" if spec.owners else \
        spec.description


def key_lines() -> list[str]:
    """``interlude config keys``: one line per key with type, default, valid values, markers."""
    lines = []
    for key, spec in schema().items():
        what = REGISTRIES[spec.section].what if spec.section in REGISTRIES else ""
        default = (f"default per {what}: {spec.default_text()}" if spec.defaults
                   else f"default {spec.default_text()}")
        facts = [type_name(spec.type), default]
        if spec.valid:
            facts.append(f"valid: {spec.valid}")
        if spec.bookkeeping:
            facts.append("bookkeeping")
        if spec.rounding:
            facts.append("rounding only")
        lines.append(f"{key} ({'; '.join(facts)}): {_described(spec)}")
    return lines


def config_reference_markdown() -> str:
    """The config reference table embedded in the README (kept in sync by a test)."""
    rows = ["| key | type | default | valid | meaning |", "|---|---|---|---|---|"]
    for key, spec in schema().items():
        text = _described(spec).replace("|", "\\|")
        type_text = type_name(spec.type).replace("|", " \\| ")
        what = REGISTRIES[spec.section].what if spec.section in REGISTRIES else ""
        default = (f"per {what}: {spec.default_text('`')}" if spec.defaults
                   else spec.default_text("`"))
        valid = spec.valid.replace("|", "\\|")
        rows.append(f"| `{key}` | {type_text} | {default} | {valid} | {text} |")
    return "\n".join(rows)


def diff(
    old: Any,
    new: Any,
    *,
    include_bookkeeping: bool = False,
) -> list[str]:
    """One line per dotted key whose value differs, e.g. ``"train.lr: 0.03 there, 0.1 now"``.

    ``old``/``new`` are Configs or ``Config.to_dict()`` trees (nested or already flattened to
    dotted keys), e.g. a saved ``config.yaml`` and the config of now. Only keys present in both are
    compared, so a key added by a newer version (or the options of another component) does not
    make runs differ; bookkeeping and rounding keys are skipped unless ``include_bookkeeping``.
    Keys come in schema order.
    """
    there, now = dotted(old), dotted(new)
    skipped = set() if include_bookkeeping else bookkeeping_keys() | rounding_keys()
    known = [k for k in schema() if k in there and k in now]
    other = sorted((there.keys() & now.keys()) - set(known))
    return [
        f"{key}: {shown(there[key])} there, {shown(now[key])} now"
        for key in [*known, *other]
        if key not in skipped and there[key] != now[key]
    ]


def dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` (or a Config) -> ``{"train.lr": 0.1}``."""
    if hasattr(tree, "to_dict"):
        tree = tree.to_dict()
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
