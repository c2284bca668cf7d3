"""Typed config: YAML + overrides, rejection of unknown keys and wrong types."""

from __future__ import annotations

import pytest

from interlude.config import Config, config_from_dict, load_config, parse_override
from interlude.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.steps=123", "algorithm.name=fixmatch", "lr=0.1"])
    assert cfg.train.steps == 123 and cfg.algorithm.name == "fixmatch"
    assert cfg.train.lr == 0.1 and isinstance(cfg.train.lr, float)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  name: mnist5k\ntrain:\n  steps: 50\n  weight_decay: 1e-3\n")
    cfg = load_config(path, ["train.steps=60"])
    assert cfg.data.name == "mnist5k" and cfg.train.steps == 60
    assert cfg.train.weight_decay == pytest.approx(1e-3)


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.stpes=5"])
    message = str(info.value)
    assert "unknown config key 'train.stpes'" in message
    assert "Did you mean train.steps" in message
    assert "algorithm.lambda_dc" in message  # the list of valid keys


def test_config_file_that_is_not_utf8_text_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfetrain:\n")  # a UTF-16 file, or a binary file given by mistake
    with pytest.raises(ConfigError, match="is not a UTF-8 text file"):
        load_config(path)


def test_unknown_key_in_yaml_and_unknown_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  stepz: 5\n")
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config(path)
    path.write_text("trainer:\n  steps: 5\n")
    with pytest.raises(ConfigError, match="unknown config section 'trainer'"):
        load_config(path)


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.steps=abc", "expected an integer"),
        ("train.steps=1.5", "expected an integer"),
        ("train.lr=fast", "expected a number"),
        ("train.progress=maybe", "expected true/false"),
        ("algorithm.layout=zigzag", "not one of interdigitated, blocked"),
        ("algorithm.fusion_strength=1.5", r"fusion_strength=1.5 is out of range: .* in \[0, 1\)"),
        ("train.steps=0", "train.steps=0 is out of range: must be an integer in \\[1, 1000000000\\]"),
        ("algorithm.ema_p=1.0", r"ema_p=1.0 is out of range: .* in \[0, 1\)"),
        ("steps", "must look like key=value"),
    ],
)
def test_bad_values_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_ambiguous_bare_key():
    # 'seed' only exists in train; 'name' exists in data and algorithm
    assert load_config(None, ["seed=3"]).train.seed == 3
    with pytest.raises(ConfigError, match="ambiguous key 'name'"):
        load_config(None, ["name=x"])


def test_optional_and_list_values():
    cfg = load_config(None, ["data.resolution=none", "data.labeled_classes=[0,1,2]"])
    assert cfg.data.resolution is None and cfg.data.labeled_classes == [0, 1, 2]
    assert parse_override("train.lr=1e-3") == ("train.lr", 1e-3)


def test_round_trip_through_dict():
    cfg = load_config(None, ["train.steps=77", "algorithm.dc_variant=cd"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again, Config)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("nope.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(p for p in root.glob("*.yaml"))
    assert files, "no shipped configs found"
    for path in files:
        load_config(path)
