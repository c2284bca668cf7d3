"""The config schema: every numeric key's range (generated from the field metadata), device
strings, duplicate YAML keys, per-algorithm defaults, bookkeeping keys and ``config.diff``."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from interlude.config import (
    ALGORITHMS,
    BOOKKEEPING_KEYS,
    Config,
    Range,
    config_from_dict,
    config_reference_markdown,
    diff,
    load_config,
    schema,
    section_options,
)
from interlude.errors import ConfigError

NUMERIC_KINDS = ("int", "float", "list[int]", "list[float]")
RANGED = {key: spec for key, spec in schema().items() if spec.range is not None}

# Settings a boundary value needs to pass the cross-field checks of validate(); a component's
# key is set with that component chosen (from the registries), so the value is kept.
SUPERVISED = next(c.name for c in ALGORITHMS if not c.target.uses_unlabeled)
CONTEXT = {
    **{key: spec.selecting() for key, spec in schema().items() if spec.owners},
    "train.mu": [f"algorithm.name={SUPERVISED}"],  # mu=0 is for labeled-only algorithms
    "train.momentum": ["train.nesterov=false"],  # Nesterov needs momentum > 0
    "data.mean": ["data.std=[1,1,1]"],  # given together, one value per channel (1 or 3)
    "data.std": ["data.mean=[0,0,0]"],
}
# Valid items a list value starts with, so its last item alone decides (default [0]).
LIST_START = {"data.mean": [0.5, 0.5], "data.std": [0.5, 0.5]}


def _outside(rng: Range, integer: bool) -> list[float]:
    """Values just outside each finite bound, plus NaN and +-inf for floats."""
    step = 1 if integer else 0.5
    values = []
    if rng.ge is not None:
        values.append(rng.ge - step)
    if rng.gt is not None:
        values.append(rng.gt)
    if rng.le is not None:
        values.append(rng.le + step)
    if rng.lt is not None:
        values.append(rng.lt)
    if not integer:
        values += [math.nan, math.inf, -math.inf]
    return [int(v) if integer else float(v) for v in values]


def _inside(rng: Range, integer: bool) -> list[float]:
    """The inclusive bounds themselves (they must be accepted)."""
    values = [b for b in (rng.ge, rng.le) if b is not None]
    return [int(v) if integer else float(v) for v in values]


def _text(value: float | list) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)  # nan, inf, -inf, 1e-06 ... all parse back


def _cases(pick) -> list[tuple[str, object]]:
    cases = []
    for key, spec in RANGED.items():
        integer = "int" in spec.kind
        for value in pick(spec.range, integer):
            listed = [*LIST_START.get(key, [0]), value]
            cases.append((key, listed if spec.kind.startswith("list") else value))
    return cases


OUT_OF_RANGE = _cases(_outside)
IN_RANGE = _cases(_inside)


def test_every_numeric_key_has_a_range():
    numeric = {k for k, s in schema().items() if s.kind in NUMERIC_KINDS}
    assert numeric == set(RANGED)
    assert {"data.resolution", "data.labeled_classes", "model.width", "train.lr"} <= numeric
    # every range and NaN/inf case is generated, not listed by hand
    assert len(OUT_OF_RANGE) >= 2 * len(RANGED)


@pytest.mark.parametrize(("key", "value"), OUT_OF_RANGE, ids=lambda v: str(v))
def test_out_of_range_override_fails_with_one_line_naming_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        load_config(None, [*CONTEXT.get(key, []), f"{key}={_text(value)}"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key}="), message
    assert "out of range" in message and str(RANGED[key].range) in message


@pytest.mark.parametrize(("key", "value"), IN_RANGE, ids=lambda v: str(v))
def test_inclusive_bounds_are_accepted(key, value):
    cfg = load_config(None, [*CONTEXT.get(key, []), f"{key}={_text(value)}"])
    section, _, name = key.partition(".")
    assert getattr(getattr(cfg, section), name) == value


@pytest.mark.parametrize("key", [k for k, s in RANGED.items() if s.kind == "float"])
def test_non_finite_floats_rejected_from_yaml_and_saved_dicts(key, tmp_path):
    section, _, name = key.partition(".")
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: .nan\n")
    with pytest.raises(ConfigError, match=rf"^{key}=nan is out of range: must be a finite number"):
        load_config(path)
    tree = Config().to_dict()
    tree[section][name] = -math.inf
    with pytest.raises(ConfigError, match=rf"^{key}=-inf is out of range"):
        config_from_dict(tree)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=nan", "train.lr=nan is out of range: must be a finite number in (0, 10000]"),
        ("algorithm.lambda_dc=-1", "algorithm.lambda_dc=-1.0 is out of range: must be a finite "
                                   "number in [0, 10000]"),
        ("algorithm.lambda_u=-1", "algorithm.lambda_u=-1.0 is out of range"),
        ("train.weight_decay=-1", "train.weight_decay=-1.0 is out of range"),
        ("train.threads=-3", "train.threads=-3 is out of range: must be an integer in [0, 1024]"),
        ("train.momentum=-5", "train.momentum=-5.0 is out of range: must be a finite number in "
                              "[0, 1)"),
        ("model.width=0", "model.width=0 is out of range: must be an integer in [1, 4096]"),
        ("data.labeled_classes=[0,-2]", "every item must be an integer in [0, 100000]"),
        ("train.seed=-1", "train.seed=-1 is out of range: must be an integer in [0, 2**63-1]"),
    ],
)
def test_known_silent_cases_now_fail(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cross_field_checks_stay():
    with pytest.raises(ConfigError, match="train.mu=0 is out of range for interlude"):
        load_config(None, ["train.mu=0"])
    assert load_config(None, ["train.mu=0", "algorithm.name=supervised"]).train.mu == 0
    with pytest.raises(ConfigError, match="train.nesterov=true needs train.momentum > 0"):
        load_config(None, ["train.momentum=0"])
    load_config(None, ["train.momentum=0", "train.optimizer=adamw"])  # AdamW has no momentum


def test_cli_prints_one_error_line(capsys):
    from interlude.cli import main

    assert main(["config", "show", "train.lr=nan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.lr=nan") and "\n" not in err


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_valid_device_strings(device):
    assert load_config(None, [f"train.device={device}"]).train.device == device


@pytest.mark.parametrize("device", ["tpu", "gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cpu:0",
                                    " cpu", "cuda:0,1", "", "0"])
def test_invalid_device_strings(device):
    with pytest.raises(ConfigError) as info:
        load_config(None, {"train.device": device})
    assert str(info.value).startswith(f"train.device={device!r} is not valid: use auto, cpu, cuda")


def test_algorithm_name_is_checked_and_matches_the_registry():
    from interlude.algorithms import algorithm_names

    assert schema()["algorithm.name"].choices == tuple(algorithm_names())
    with pytest.raises(ConfigError, match="did you mean fixmatch"):
        load_config(None, ["algorithm.name=fixmatc"])


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("train:\n  steps: 5\n  lr: 0.1\n  steps: 6\n", "train.steps"),
        ("train:\n  steps: 5\nmodel:\n  width: 8\ntrain:\n  lr: 0.1\n", "train"),
        ("data:\n  labeled_classes: [0, 1]\n  name: digits\n  name: mnist5k\n", "data.name"),
    ],
)
def test_duplicate_yaml_key_is_refused(tmp_path, content, key):
    path = tmp_path / "dup.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and f"key '{key}' is given twice" in message
    assert "\n" not in message


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("train:\n  <<: {lr: 0.1, steps: 9}\n  lr: 0.2\n")
    cfg = load_config(path)
    assert cfg.train.lr == 0.2 and cfg.train.steps == 9


# ------------------------------------------------------------------ per-algorithm defaults
@pytest.mark.parametrize(("algorithm", "expected"),
                         [("freematch", 0.001), ("interlude_plus", 0.05), ("interlude", None),
                          ("fixmatch", None)])
def test_lambda_ent_default_per_algorithm(algorithm, expected, tmp_path):
    cfg = load_config(None, [f"algorithm.name={algorithm}"])
    assert getattr(cfg.algorithm, "lambda_ent", None) == expected
    if expected is None:  # an algorithm without a fairness term has no such key
        assert "lambda_ent" not in cfg.to_yaml()
        assert "lambda_ent" not in load_config(None, [f"algorithm.name={algorithm}",
                                                      "algorithm.lambda_ent=0.3"]).to_yaml()
        return
    assert f"lambda_ent: {expected}" in cfg.to_yaml()  # a saved config holds the value
    path = tmp_path / "c.yaml"
    path.write_text(f"algorithm:\n  name: {algorithm}\n")
    assert load_config(path).algorithm.lambda_ent == expected
    assert section_options("algorithm", name=algorithm).lambda_ent == expected
    assert ALGORITHMS.get(algorithm).options.model_fields["lambda_ent"].default == expected


def test_lambda_ent_explicit_value_wins_and_saved_value_is_kept():
    cfg = load_config(None, ["algorithm.lambda_ent=0.2", "algorithm.name=freematch"])
    assert cfg.algorithm.lambda_ent == 0.2
    # a run saved before the per-algorithm default keeps its value
    tree = load_config(None, ["algorithm.name=interlude_plus"]).to_dict()
    tree["algorithm"]["name"] = "freematch"
    assert config_from_dict(tree).algorithm.lambda_ent == 0.05
    del tree["algorithm"]["lambda_ent"]  # missing: the algorithm's default
    assert config_from_dict(tree).algorithm.lambda_ent == 0.001
    with pytest.raises(ConfigError, match="algorithm.lambda_ent: expected a number"):
        load_config(None, ["algorithm.name=freematch", "algorithm.lambda_ent=none"])


@pytest.mark.parametrize("algorithm", [c.name for c in ALGORITHMS
                                       if "lambda_ent" in c.options.model_fields])
def test_fairness_algorithms_read_a_float(algorithm):
    from interlude.algorithms import AlgorithmContext, build_algorithm

    cfg = load_config(None, [f"algorithm.name={algorithm}"])
    algo = build_algorithm(cfg.algorithm, AlgorithmContext(num_classes=3))
    assert isinstance(algo.cfg.lambda_ent, float)
    assert algo.cfg.lambda_ent == {"freematch": 0.001, "interlude_plus": 0.05}[algorithm]


def test_docs_show_ranges_and_per_algorithm_defaults(capsys):
    from interlude.cli import main

    table = config_reference_markdown()
    assert table.splitlines()[0] == "| key | type | default | valid | meaning |"
    row = next(line for line in table.splitlines() if line.startswith("| `algorithm.lambda_ent`"))
    assert "freematch `0.001`" in row and "interlude_plus `0.05`" in row and "[0, 10000]" in row
    assert main(["config", "keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    lr = next(line for line in lines if line.startswith("train.lr "))
    assert "valid: (0, 10000]" in lr
    ent = next(line for line in lines if line.startswith("algorithm.lambda_ent "))
    assert "default per algorithm: freematch 0.001" in ent
    threads = next(line for line in lines if line.startswith("train.threads "))
    assert "rounding only" in threads and "bookkeeping" not in threads
    interval = next(line for line in lines if line.startswith("train.log_interval "))
    assert "bookkeeping" in interval


# ------------------------------------------------------------------ bookkeeping and diff
def test_bookkeeping_keys():
    expected = {
        "train.log_interval", "train.eval_interval", "train.checkpoint_interval",
        "train.eval_batch_size", "train.progress", "train.tensorboard", "train.num_workers",
        "train.out_dir", "train.run_name", "data.data_dir",
        "data.download", "data.cache", "data.cache_dir", "data.decode_workers",
    }  # device and threads change rounding: ROUNDING_KEYS (issue 19)
    assert expected == BOOKKEEPING_KEYS
    assert isinstance(BOOKKEEPING_KEYS, frozenset)


def test_diff_shows_values_in_schema_order():
    old = load_config(None, ["train.lr=0.03"])
    new = load_config(None, ["train.lr=0.1", "algorithm.name=fixmatch"])
    assert diff(old, new) == [
        "algorithm.name: 'interlude' there, 'fixmatch' now",
        "train.lr: 0.03 there, 0.1 now",
    ]
    assert diff(old, old) == []


def test_diff_skips_bookkeeping_unless_asked():
    old = load_config(None, ["train.threads=1", "train.out_dir=a"])
    new = load_config(None, ["train.threads=4", "train.out_dir=b"])
    assert diff(old, new) == []
    assert diff(old, new, include_bookkeeping=True) == [
        "train.out_dir: 'a' there, 'b' now",
        "train.threads: 1 there, 4 now",
    ]


def test_diff_ignores_keys_missing_on_one_side_and_takes_trees():
    old = load_config(None).to_dict()
    new = load_config(None, ["train.steps=10"]).to_dict()
    del old["algorithm"]["fusion_at_eval"]  # saved by an older version
    new["train"]["future_key"] = 1  # added by a newer version
    new["algorithm"]["fusion_at_eval"] = True
    assert diff(old, new) == ["train.steps: 2000 there, 10 now"]
    flat = {f"{s}.{k}": v for s, values in new.items() for k, v in values.items()}
    assert diff(old, flat) == ["train.steps: 2000 there, 10 now"]
    assert diff(Config(), new) == [
        "algorithm.fusion_at_eval: False there, True now", "train.steps: 2000 there, 10 now",
    ]


# ------------------------------------------------------------------ estimator
@pytest.fixture(scope="module")
def tiny_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X, y = bunch.images[:40] / 16.0, bunch.target[:40].copy()
    y[10:] = -1  # mostly unlabeled
    return X, y


@pytest.mark.parametrize(("params", "key"),
                         [({"lr": float("nan")}, "train.lr=nan"), ({"width": 0}, "model.width=0"),
                          ({"device": "tpu"}, "train.device='tpu'"),
                          ({"threads": -3}, "train.threads=-3")])
def test_estimator_rejects_bad_values_before_training(tiny_digits, monkeypatch, params, key):
    import interlude.train
    from interlude import InterLUDEClassifier

    def no_training(*args, **kwargs):
        raise AssertionError("training started with an invalid config")

    monkeypatch.setattr(interlude.train, "run", no_training)
    X, y = tiny_digits
    assert np.count_nonzero(y >= 0) == 10
    with pytest.raises(ValueError, match=f"^{key.replace('.', '[.]').replace('(', '[(]')}"):
        InterLUDEClassifier(**params, steps=2, verbose=0).fit(X, y)


# ------------------------------------------------------------------ keys of other components
def test_keys_of_another_component_are_checked_then_left_out(tmp_path):
    """digits.yaml sets InterLUDE's keys; switching algorithm.name keeps it usable."""
    cfg = load_config("configs/digits.yaml", ["algorithm.name=fixmatch"])
    saved = cfg.to_dict()
    assert "lambda_dc" not in saved["algorithm"] and "fusion_strength" not in saved["algorithm"]
    assert set(saved["algorithm"]) == set(ALGORITHMS.get("fixmatch").options.model_fields)
    assert config_from_dict(saved) == cfg
    with pytest.raises(ConfigError, match=r"^algorithm.lambda_dc=-1.0 is out of range"):
        load_config(None, ["algorithm.name=fixmatch", "algorithm.lambda_dc=-1"])
    with pytest.raises(ConfigError, match="unknown config key 'algorithm.lambda_dd'.*lambda_dc"):
        load_config(None, ["algorithm.name=fixmatch", "algorithm.lambda_dd=1"])
    cifar = load_config(None, ["data.name=cifar10", "data.svhn_extra=true", "model.arch=wrn28_2",
                               "model.width=8"])
    assert "svhn_extra" not in cifar.to_dict()["data"] and "width" not in cifar.to_dict()["model"]
    mixed = load_config(None, ["data.name=cifar10", "data.unlabeled_from=svhn",
                               "data.svhn_extra=true"])
    assert mixed.data.svhn_extra is True  # the unlabeled pool's format reads it
    with pytest.raises(ConfigError, match="data.test_from='svhm' is not valid.*did you mean svhn"):
        load_config(None, ["data.test_from=svhm"])
    three = load_config(None, ["data.name=stl10", "data.unlabeled_from=svhn",
                               "data.test_from=imagefolder"])  # one class with all their options
    assert {"use_unlabeled_extra", "svhn_extra", "labeled_dir"} <= set(three.to_dict()["data"])
    assert pickle.loads(pickle.dumps(three)) == three == config_from_dict(three.to_dict())


def test_every_component_registers_options_of_its_section():
    from interlude.config import BACKBONES, DATASETS

    for registry, base in ((ALGORITHMS, "AlgorithmOptions"), (DATASETS, "DataConfig"),
                           (BACKBONES, "ModelConfig")):
        assert registry.names(), registry.what
        for component in registry:
            assert base in [c.__name__ for c in component.options.__mro__]
            selected = [f"{registry.section}.{registry.selector}={component.example}"]
            if registry is ALGORITHMS and not component.target.uses_unlabeled:
                selected.append("train.mu=0")
            cfg = load_config(None, selected)
            assert isinstance(getattr(cfg, registry.section), component.options)
