"""Sweep planning and resumption (training itself is replaced by a stub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interlude.errors import ConfigError, InterludeError
from interlude.experiments import sweep
from interlude.experiments.sweep import (
    SweepSpec,
    Variant,
    expand_grid,
    load_sweep_file,
    parse_grid,
    plan_runs,
    run_spec,
    run_sweep,
    run_sweep_file,
)

ROOT = Path(__file__).resolve().parents[1]


def test_expand_grid_is_cartesian_with_readable_names():
    variants = expand_grid({"algorithm.lambda_dc": [0.1, 1], "algorithm.layout": ["blocked"]})
    assert [v.name for v in variants] == ["lambda_dc=0.1,layout=blocked",
                                          "lambda_dc=1,layout=blocked"]
    assert variants[0].overrides == ["algorithm.lambda_dc=0.1", "algorithm.layout=blocked"]


def test_parse_grid_from_cli():
    assert parse_grid(["train.lr=0.1,0.03", "algorithm.name=fixmatch"]) == {
        "train.lr": ["0.1", "0.03"], "algorithm.name": ["fixmatch"]
    }


def test_shipped_sweep_files_plan_valid_runs(tmp_path):
    files = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert {f.stem for f in files} >= {"ablation", "lambda_dc", "layout", "fusion_strength",
                                        "openset"}
    counts = {f.stem: len(plan_runs(load_sweep_file(f), tmp_path)) for f in files}
    assert counts["ablation"] == 7 * 3 and counts["openset"] == 4 * 4 * 3 and counts["layout"] == 2 * 3
    assert counts["fusion_strength"] == 6 * 3 and counts["lambda_dc"] == 4 * 3


def test_run_dirs_are_separate_and_seeded(tmp_path):
    spec = load_sweep_file(ROOT / "configs" / "sweeps" / "lambda_dc.yaml")
    planned = plan_runs(spec, tmp_path)
    assert len({p.run_dir for p in planned}) == len(planned)
    first = planned[0]
    assert first.run_dir == tmp_path / "lambda_dc" / "lambda_dc=0.0" / "seed0"
    assert "train.seed=0" in first.overrides and "algorithm.lambda_dc=0.0" in first.overrides


def test_bad_key_fails_before_any_training(tmp_path):
    spec = SweepSpec("bad", ROOT / "configs" / "digits.yaml", [0], [Variant("x", ["train.nope=1"])])
    with pytest.raises(ConfigError, match="train.nope"):
        plan_runs(spec, tmp_path)


def test_finished_runs_skipped_and_checkpointed_runs_resumed(tmp_path, monkeypatch):
    spec = SweepSpec("s", ROOT / "configs" / "digits.yaml", [0, 1],
                     [Variant("a", ["algorithm.name=fixmatch"])])
    done = tmp_path / "s" / "a" / "seed0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({}))
    half = tmp_path / "s" / "a" / "seed1" / "checkpoints"
    half.mkdir(parents=True)
    (half / "last.pt").write_bytes(b"")
    calls = []

    def fake_run(cfg, resume=False, overwrite=False, **kwargs):
        calls.append((cfg.train.seed, cfg.algorithm.name, resume, cfg.train.run_name))
        return Path(cfg.train.out_dir) / cfg.train.run_name

    monkeypatch.setattr("interlude.train.run", fake_run)
    dirs = run_spec(spec, tmp_path)
    assert calls == [(1, "fixmatch", True, "a/seed1")]
    assert dirs == [done, tmp_path / "s" / "a" / "seed1"]


def test_not_a_sweep_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  steps: 3\n")
    assert not sweep.is_sweep_file(path)
    with pytest.raises(ConfigError, match="not a sweep file"):
        load_sweep_file(path)


@pytest.fixture
def fake_training(monkeypatch):
    """Replace training by a stub that records the config and writes what a finished run leaves."""
    configs = []

    def fake_run(cfg, resume=False, overwrite=False, **kwargs):
        run_dir = Path(cfg.train.out_dir) / cfg.train.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        (run_dir / "summary.json").write_text("{}")
        configs.append(cfg)
        return run_dir

    monkeypatch.setattr("interlude.train.run", fake_run)
    return configs


def test_run_sweep_on_a_run_config_with_grid_and_seeds(tmp_path, fake_training):
    config = ROOT / "configs" / "digits.yaml"
    dirs = run_sweep(config, {"algorithm.lambda_dc": ["0.1", "10"]}, [0, 2],
                     overrides=["data.data_seed=5"], out_root=tmp_path)
    assert dirs == [tmp_path / "digits" / f"lambda_dc={v}" / f"seed{s}"
                    for v in ("0.1", "10") for s in (0, 2)]
    assert [(c.algorithm.lambda_dc, c.train.seed) for c in fake_training] == [
        (0.1, 0), (0.1, 2), (10.0, 0), (10.0, 2)]
    assert {c.data.data_seed for c in fake_training} == {5}  # not tied to the training seed
    # a second call finds every run finished and trains nothing
    assert run_sweep(config, {"algorithm.lambda_dc": ["0.1", "10"]}, [0, 2],
                     overrides=["data.data_seed=5"], out_root=tmp_path) == dirs
    assert len(fake_training) == 4


def test_default_output_is_the_configs_out_dir(tmp_path, fake_training):
    dirs = run_sweep(ROOT / "configs" / "digits.yaml", {}, [1],
                     overrides=[f"train.out_dir={tmp_path / 'elsewhere'}"])
    assert dirs == [tmp_path / "elsewhere" / "digits" / "base" / "seed1"]


def test_sweep_file_seeds_can_be_replaced(tmp_path, fake_training):
    path = ROOT / "configs" / "sweeps" / "layout.yaml"
    dirs = run_sweep(path, None, [7], out_root=tmp_path)
    assert dirs == [tmp_path / "layout" / f"layout={v}" / "seed7" for v in ("interdigitated", "blocked")]
    first = run_sweep_file(path, out_root=tmp_path)[0]
    assert first == tmp_path / "layout" / "layout=interdigitated" / "seed0"
    assert [c.train.seed for c in fake_training] == [7, 7, 0, 1, 2, 0, 1, 2]


def test_run_dir_of_another_config_is_refused(tmp_path, fake_training):
    config = ROOT / "configs" / "digits.yaml"
    run_sweep(config, {"algorithm.lambda_dc": ["1"]}, [0], overrides=["algorithm.name=fixmatch"],
              out_root=tmp_path)
    with pytest.raises(ConfigError, match="different config.*algorithm.name"):
        run_sweep(config, {"algorithm.lambda_dc": ["1"]}, [0], overrides=["algorithm.name=interlude"],
                  out_root=tmp_path)
    # bookkeeping keys (threads, progress, device ...) may differ
    run_sweep(config, {"algorithm.lambda_dc": ["1"]}, [0],
              overrides=["algorithm.name=fixmatch", "train.threads=2", "train.progress=false"],
              out_root=tmp_path)
    assert len(fake_training) == 1


def test_subprocesses_run_interlude_train_with_resume(tmp_path, monkeypatch):
    commands = []

    class FakeProcess:
        returncode = 0

        def __init__(self, command, stdout, stderr):
            commands.append(command)

        def poll(self):
            return 0

    monkeypatch.setattr(sweep.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(sweep.time, "sleep", lambda seconds: None)
    config = ROOT / "configs" / "digits.yaml"
    run_sweep(config, {"algorithm.name": ["fixmatch", "interlude"]}, [0], processes=2, out_root=tmp_path)
    assert len(commands) == 2
    assert commands[0][1:5] == ["-m", "interlude", "train", str(config)]
    assert "algorithm.name=fixmatch" in commands[0] and "--resume" in commands[0]
    assert (tmp_path / "digits" / "name=fixmatch" / "seed0.log").exists()


def test_failed_subprocess_is_reported(tmp_path, monkeypatch):
    class FailingProcess:
        returncode = 1

        def __init__(self, command, stdout, stderr):
            pass

        def poll(self):
            return 1

    monkeypatch.setattr(sweep.subprocess, "Popen", FailingProcess)
    monkeypatch.setattr(sweep.time, "sleep", lambda seconds: None)
    with pytest.raises(InterludeError, match="1 sweep run"):
        run_sweep(ROOT / "configs" / "digits.yaml", {}, [0], processes=2, out_root=tmp_path)


def test_a_variant_value_replaces_the_sweep_wide_one(tmp_path):
    # layered on purpose (sweep-wide, then the variant's, then the command line's), so each run
    # passes one value per key to `interlude train`, which refuses a key given twice
    spec = SweepSpec("s", ROOT / "configs" / "digits.yaml", [0],
                     [Variant("fast", ["train.steps=5"])], overrides=["train.steps=50", "train.lr=0.1"])
    (planned,) = plan_runs(spec, tmp_path, ["train.lr=0.2"])
    assert planned.config.train.steps == 5 and planned.config.train.lr == 0.2
    keys = [item.partition("=")[0] for item in planned.overrides]
    assert len(keys) == len(set(keys)) and "train.steps=5" in planned.overrides
