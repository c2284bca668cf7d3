"""Building a validated :class:`Config` from YAML and overrides.

Keys are first resolved (``section.key``, or a bare key naming exactly one), then each section's
class is chosen by its selector key (``algorithm.name``, ``data.name``, ``model.arch``) from the
registries, and pydantic validates the section. A key declared only by *another* registered
component of the same section (``algorithm.lambda_dc`` under ``algorithm.name=fixmatch``) is
accepted, its value checked against the class declaring it, and left out of the resolved config;
a key no component declares is an unknown key. pydantic's errors become the one-line
:class:`~interlude.errors.ConfigError` messages users and tests rely on.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from interlude.config.keys import SECTIONS, range_of, schema, type_name, valid_keys
from interlude.config.options import (
    AlgorithmOptions,
    DataConfig,
    ModelConfig,
    Options,
    TrainConfig,
    allows_none,
    strip_none,
)
from interlude.config.registry import ALGORITHMS, BACKBONES, DATASETS, REGISTRIES
from interlude.config.yaml_io import parse_override, read_yaml
from interlude.errors import ConfigError, shown

log = logging.getLogger("interlude")

AUTO = "auto"
"""``model.arch=auto``: one of the built-in networks, picked once the data is known."""


def _default(section: str) -> Any:
    return field(default_factory=lambda: section_options(section))


@dataclass
class Config:
    """A whole run: the generic keys of each section plus the chosen components' options."""

    data: DataConfig = _default("data")
    model: ModelConfig = _default("model")
    algorithm: AlgorithmOptions = _default("algorithm")
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {section: getattr(self, section).model_dump() for section in SECTIONS}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from interlude.files import write_atomic

        write_atomic(path, self.to_yaml())


# ----------------------------------------------------------------------------- public builders
def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config` from an optional YAML file and overrides (applied in
    order, the last value of a key wins)."""
    values = _empty()
    if path is not None:
        tree = read_yaml(path) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path} must contain a mapping of sections (data, model, ...)")
        _set_all(values, _flatten(tree).items())
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    _set_all(values, items)
    return _build(values)


def warn_repeated_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` as typed on a command line, with one warning per key given twice
    (``train.lr=0.1 ... lr=0.3``): the last value is used, as scripts that append overrides to a
    base list expect, but a person who typed the key twice by mistake is told which one won."""
    seen: dict[tuple[str, str], str] = {}
    for text in overrides:
        key = _resolve_key(parse_override(text)[0])
        if key in seen:
            log.warning("%s is given twice (%s, then %s): using the last", ".".join(key),
                        shown(seen[key]), shown(text))
        seen[key] = text
    return overrides


def merged_overrides(overrides: list[str]) -> list[str]:
    """One override per key, the last one given (in the place of the first): a sweep's
    variant overriding its sweep-wide values, passed on to ``interlude train``."""
    last: dict[tuple[str, str], str] = {}
    for text in overrides:
        last[_resolve_key(parse_override(text)[0])] = text
    return list(last.values())


def config_from_dict(tree: Mapping[str, Any]) -> Config:
    """Rebuild a Config saved with :meth:`Config.to_dict` (e.g. from a checkpoint)."""
    values = _empty()
    _set_all(values, _flatten(dict(tree)).items())
    return _build(values)


def section_options(section: str, **values: Any) -> Any:
    """One validated section: ``section_options("algorithm", name="freematch", ema_p=0.9)`` is
    FreeMatch's options object (keys of other algorithms accepted and left out)."""
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section '{section}'. Sections are: {', '.join(SECTIONS)}")
    for name in values:
        _resolve_key(f"{section}.{name}")
    return _validate_section(section, values)


def replaced(options: Options, **updates: Any) -> Any:
    """A copy of a section with ``updates`` applied and validated again; changing the selector
    (``arch="wrn28_2"`` after ``auto`` is resolved) picks the new component's class."""
    section = next(s for s, base in SECTIONS.items() if isinstance(options, base))
    return _validate_section(section, {**options.model_dump(), **updates})


def validate(cfg: Config) -> None:
    """Validate every section of ``cfg`` again, then the cross-section rules (one-line errors)."""
    for section in SECTIONS:
        _validate_section(section, getattr(cfg, section).model_dump())
    _check_rules(cfg)


# ----------------------------------------------------------------------------- keys
def _empty() -> dict[str, dict[str, Any]]:
    return {section: {} for section in SECTIONS}


def _set_all(values: dict[str, dict[str, Any]], items: Any) -> None:
    for key, value in items:
        section, name = _resolve_key(key)
        values[section][name] = value


def _flatten(tree: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key in SECTIONS:
            flat.update({f"{key}.{name}": v for name, v in value.items()})
        elif isinstance(value, dict):
            raise ConfigError(f"unknown config section '{key}'. Sections are: {', '.join(SECTIONS)}")
        else:
            flat[str(key)] = value
    return flat


def _resolve_key(key: str) -> tuple[str, str]:
    """Map ``section.field`` or an unambiguous bare ``field`` to (section, field)."""
    known = schema()
    if "." in key:
        if key in known:
            section, _, name = key.partition(".")
            return section, name
    else:
        owners = [s for s in SECTIONS if f"{s}.{key}" in known]
        if len(owners) == 1:
            return owners[0], key
        if len(owners) > 1:
            raise ConfigError(
                f"ambiguous key {shown(key)}: write one of {', '.join(f'{s}.{key}' for s in owners)}"
            )
    close = difflib.get_close_matches(key, valid_keys(), n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"unknown config key {shown(key)}.{hint} Valid keys: {', '.join(valid_keys())}")


# ----------------------------------------------------------------------------- sections
def _build(values: dict[str, dict[str, Any]]) -> Config:
    cfg = Config(**{section: _validate_section(section, values[section]) for section in SECTIONS})
    _check_rules(cfg)
    return cfg


def _validate_section(section: str, values: dict[str, Any]) -> Any:
    """The section's options object; keys of other components are checked, then dropped."""
    cls = _section_class(section, values)
    own = {name: value for name, value in values.items() if name in cls.model_fields}
    dropped = [name for name in values if name not in own]
    for name in dropped:
        declaring = _declaring_class(section, name)
        if declaring is not None:  # a value of another component is still checked
            _validated(section, declaring, {name: values[name]})
    if dropped:
        log.debug("config: %s not used by %s", ", ".join(f"{section}.{n}" for n in dropped),
                  cls.__name__)
    return _validated(section, cls, own)


def _validated(section: str, cls: type[Options], values: dict[str, Any]) -> Any:
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_message(section, cls, values, exc)) from None


def _declaring_class(section: str, name: str) -> type[Options] | None:
    registry = REGISTRIES.get(section)
    return next((c.options for c in registry or [] if name in c.options.model_fields), None)


def _section_class(section: str, values: dict[str, Any]) -> type[Options]:
    """The options class the selector key picks (several datasets or every built-in backbone
    family: one class holding all their options)."""
    if section == "train":
        return TrainConfig
    if section == "algorithm":
        name = values.get("name", AlgorithmOptions.model_fields["name"].default)
        return ALGORITHMS.get(_selected(section, "name", name)).options
    if section == "data":
        keys = ("name", "unlabeled_from", "test_from")
        given = {k: values.get(k, DataConfig.model_fields[k].default) for k in keys}
        chosen = [_selected(section, k, n) for k, n in given.items()
                  if n is not None and not (k != "name" and _is_none_text(n))]
        return _combined(tuple(dict.fromkeys(DATASETS.get(n).options for n in chosen)))
    arch = values.get("arch", ModelConfig.model_fields["arch"].default)
    if arch == AUTO:  # auto picks one of the built-in networks once the data is known
        return _combined(tuple(dict.fromkeys(c.options for c in BACKBONES if not c.prefix)))
    return _selected_backbone(arch).options


def _is_none_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in ("none", "null")


def _selected(section: str, key: str, value: Any) -> str:
    registry = REGISTRIES[section]
    if not isinstance(value, str):
        raise ConfigError(f"{section}.{key}: expected a string, got {shown(value)}")
    if value not in registry:
        names = registry.names()
        close = difflib.get_close_matches(value, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{section}.{key}={shown(value)} is not valid: use one of "
                          f"{', '.join(names)}{hint}")
    return value


def _selected_backbone(arch: Any) -> Any:
    if not isinstance(arch, str):
        raise ConfigError(f"model.arch: expected a string, got {shown(arch)}")
    component = BACKBONES.selecting(arch)
    if component is None:
        values = [AUTO, *BACKBONES.selector_values()]
        close = difflib.get_close_matches(arch, values, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown model.arch {shown(arch)}: use one of {', '.join(values)}{hint}")
    return component


@functools.cache
def _combined(classes: tuple[type[Options], ...]) -> type[Options]:
    """One options class holding the options of several components (cached: equal configs
    have equal types)."""
    classes = tuple(c for c in classes if not any(o is not c and issubclass(o, c) for o in classes))
    if len(classes) == 1:
        return classes[0]
    name = "".join(c.__name__.removesuffix("Options") for c in classes) + "Options"
    namespace = {
        "__module__": __name__,
        "__doc__": "Options of " + ", ".join(c.__name__ for c in classes),
        # pickled as its parts (DataLoader workers, spawned processes): rebuilt there
        "__reduce__": lambda self: (_restore, (classes, self.model_dump())),
    }
    return type(name, classes, namespace)


def _restore(classes: tuple[type[Options], ...], values: dict[str, Any]) -> Options:
    return _combined(classes).model_validate(values)


# ----------------------------------------------------------------------------- messages
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                "finite_number"}


def _message(section: str, cls: type[Options], values: dict[str, Any], exc: ValidationError) -> str:
    """pydantic's first error as one line naming the key, the value and what is valid."""
    error = exc.errors()[0]
    loc = error["loc"]
    if not loc or loc[0] not in cls.model_fields:
        return f"{section}: {' '.join(str(error['msg']).split())}"
    name = str(loc[0])
    key, info, value = f"{section}.{name}", cls.model_fields[name], values.get(name)
    kind = type_name(strip_none(info.annotation))
    kind_of_error = error["type"]
    if value is None:
        return f"{key}=None is not allowed: give a {kind}"
    if kind_of_error in RANGE_ERRORS and range_of(info) is not None:
        return _range_message(key, info, value, kind)
    if kind_of_error.startswith("int_"):
        return f"{key}: expected an integer, got {shown(value)}"
    if kind_of_error.startswith("float_"):
        return f"{key}: expected a number, got {shown(value)}"
    if kind_of_error.startswith("bool_"):
        return f"{key}: expected true/false, got {shown(value)}"
    if kind_of_error == "literal_error":
        return f"{key}: {shown(value)} is not one of {kind.replace('|', ', ')}"
    if kind_of_error == "string_type":
        return f"{key}: expected a string, got {shown(value)}"
    if kind_of_error == "list_type":
        return f"{key}: expected a list, got {shown(value)}"
    if kind_of_error == "string_pattern_mismatch":
        forms = (info.json_schema_extra or {}).get("forms", "the documented form")  # type: ignore[union-attr]
        return f"{key}={shown(value)} is not valid: use {forms}"
    return f"{key}={shown(value)} is not valid: {' '.join(str(error['msg']).split())}"


def _range_message(key: str, info: Any, value: Any, kind: str) -> str:
    rng = range_of(info)
    assert rng is not None
    integer = "int" in kind
    is_list = kind.startswith("list")
    shown_value = [_as_number(v, integer) for v in value] if isinstance(value, list) else \
        _as_number(value, integer)
    what = "an integer" if integer else "a finite number"
    must = f"every item must be {what}" if is_list else f"must be {what}"
    none = ", or none" if allows_none(info.annotation) else ""
    hint = f" (the default is {info.default!r})" if info.default is not None else ""
    return f"{key}={shown(shown_value)} is out of range: {must} {rng.phrase()}{none}{hint}"


def _as_number(value: Any, integer: bool) -> Any:
    """The value as the key's number type (``-1`` for a float key reads ``-1.0``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    if integer:
        return int(number) if number.is_integer() else value
    return number


# ----------------------------------------------------------------------------- cross-section rules
def _check_rules(cfg: Config) -> None:
    t, a = cfg.train, cfg.algorithm
    algorithm = ALGORITHMS.get(a.name).target
    if t.mu < 1 and algorithm.uses_unlabeled:
        labeled_only = [c.name for c in ALGORITHMS if not c.target.uses_unlabeled]
        raise ConfigError(
            f"train.mu={t.mu} is out of range for {a.name}: it needs at least 1 unlabeled image "
            f"per labeled image (train.mu=0 is for algorithm.name={' or '.join(labeled_only)})"
        )
    if t.optimizer == "sgd" and t.nesterov and t.momentum == 0:
        raise ConfigError(
            "train.nesterov=true needs train.momentum > 0, got 0.0; set train.nesterov=false or "
            "a momentum such as 0.9"
        )
    _check_inputs(cfg.data)
    _check_pretrained(cfg.model)
    _check_run_name(t.run_name)


def _check_run_name(name: str | None) -> None:
    """A run folder stays inside ``train.out_dir``: sub-folders are fine (sweeps use
    ``variant/seed0``), an absolute path or a ``..`` that climbs out is not."""
    if name is None:
        return
    parts = name.replace("\\", "/").split("/")
    if not name.strip() or name.startswith(("/", "\\")) or ".." in parts or (
            len(name) > 1 and name[1] == ":"):
        raise ConfigError(
            f"train.run_name={shown(name)} must name a folder inside train.out_dir (no absolute path, "
            "no '..'); set train.out_dir to choose where runs go"
        )
    if all(part.strip() in ("", ".") for part in parts):  # `.`, `./`: out_dir itself
        raise ConfigError(
            f"train.run_name={shown(name)} names train.out_dir itself, which holds other runs "
            "(--overwrite would clear them); give the run a folder name such as my-run"
        )


def _check_inputs(d: DataConfig) -> None:
    if d.unlabeled_from not in (None, d.name) and (d.labeled_classes is not None
                                                    or d.outlier_ratio > 0):
        raise ConfigError(
            f"data.unlabeled_from={shown(d.unlabeled_from)} cannot be combined with the open-set keys "
            "data.labeled_classes/data.outlier_ratio (the open set is drawn from data.name's own "
            "pool); unset one of them"
        )
    if (d.mean is None) != (d.std is None):
        raise ConfigError(
            f"data.mean={shown(d.mean)} and data.std={shown(d.std)}: give both (one value per channel) or "
            "neither"
        )
    if d.mean is not None and (len(d.mean) != len(d.std) or len(d.mean) not in (1, 3)):
        raise ConfigError(
            f"data.mean={shown(d.mean)} and data.std={shown(d.std)} must both hold 1 or 3 values (one per "
            "channel)"
        )


def _check_pretrained(m: ModelConfig) -> None:
    if isinstance(m.pretrained, str) and not m.pretrained.strip():
        raise ConfigError("model.pretrained is an empty string: use true, false or a file path")
    if m.pretrained is True and not type(m).has_pretrained_weights:
        families = [c for c in BACKBONES if c.options.has_pretrained_weights]
        names = " or ".join(c.name for c in families) or "no"
        example = f"{families[0].prefix or families[0].name}<name>" if families else "?"
        raise ConfigError(
            f"model.pretrained=true (published weights) applies to {names} backbones, not "
            f"model.arch={m.arch}; use model.arch={example}, a previous run's folder or export "
            "(model.pretrained=RUN_DIR), or "
            "model.pretrained=false"
        )
