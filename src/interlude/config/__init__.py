"""Typed configuration: pydantic option classes, YAML files and ``key=value`` overrides.

A run is fully described by one :class:`Config`: the generic keys of the ``data``, ``model``,
``algorithm`` and ``train`` sections plus the options of the chosen dataset format, backbone
family and algorithm, each declared beside its code and registered once
(:mod:`interlude.config.registry`). It is built from a YAML file (optional) plus overrides such
as ``train.steps=500`` or ``algorithm.name=fixmatch``; a bare key (``steps=500``) is accepted
when it names exactly one key. Unknown keys and invalid values are rejected with a one-line
:class:`~interlude.errors.ConfigError`, because a silently ignored typo in an ML config costs a
whole training run.

- :mod:`~interlude.config.options`: the generic sections and the ``Options`` base class;
- :mod:`~interlude.config.registry`: ``register_algorithm`` / ``register_dataset`` /
  ``register_backbone`` and the registries;
- :mod:`~interlude.config.build`: :func:`load_config`, :func:`config_from_dict`, validation;
- :mod:`~interlude.config.keys`: :func:`schema` (the key listing), :func:`diff`, the README table;
- :mod:`~interlude.config.yaml_io`: YAML reading (duplicate keys and alias bombs refused).
"""

from __future__ import annotations

from typing import Any

from interlude.config.build import (
    Config,
    config_from_dict,
    load_config,
    merged_overrides,
    replaced,
    section_options,
    validate,
    warn_repeated_overrides,
)
from interlude.config.keys import (
    SECTIONS,
    KeySpec,
    Range,
    config_reference_markdown,
    diff,
    dotted,
    key_lines,
    schema,
    valid_keys,
)
from interlude.config.options import (
    BOOKKEEPING,
    DEVICE_FORMS,
    DEVICE_PATTERN,
    ROUNDING,
    SEED_MAX,
    AlgorithmConfig,
    AlgorithmOptions,
    DataConfig,
    ModelConfig,
    Options,
    TrainConfig,
)
from interlude.config.registry import (
    ALGORITHMS,
    BACKBONES,
    DATASETS,
    register_algorithm,
    register_backbone,
    register_dataset,
)
from interlude.config.yaml_io import MAX_YAML_VALUES, UniqueKeyLoader, parse_override, read_yaml

__all__ = [
    "ALGORITHMS", "BACKBONES", "BOOKKEEPING", "BOOKKEEPING_KEYS", "DATASETS", "DEVICE_FORMS",
    "DEVICE_PATTERN", "MAX_YAML_VALUES", "ROUNDING", "ROUNDING_KEYS", "SECTIONS", "SEED_MAX",
    "AlgorithmConfig", "AlgorithmOptions", "Config", "DataConfig", "KeySpec", "ModelConfig",
    "Options", "Range", "TrainConfig", "UniqueKeyLoader", "config_from_dict",
    "config_reference_markdown", "diff", "dotted", "key_lines", "load_config",
    "merged_overrides", "parse_override", "warn_repeated_overrides",
    "read_yaml", "register_algorithm", "register_backbone", "register_dataset", "replaced",
    "schema", "section_options", "valid_keys", "validate",
]


def __getattr__(name: str) -> Any:
    """``BOOKKEEPING_KEYS`` / ``ROUNDING_KEYS``: computed on first use, once the components (which
    import this package) have registered their options.

    BOOKKEEPING_KEYS: keys that change where or how a run is recorded (logging, intervals, paths),
    not the weights it trains (bit for bit, tested): a resumed run, a sweep's existing run and a
    report's variant may differ in these. ROUNDING_KEYS: keys that change only floating-point
    rounding (device, threads): a sweep's existing run and a report's variant may differ in these;
    a resume may too, with a warning that it is not bit-exact.
    """
    from interlude.config.keys import bookkeeping_keys, rounding_keys

    if name == "BOOKKEEPING_KEYS":
        return bookkeeping_keys()
    if name == "ROUNDING_KEYS":
        return rounding_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
