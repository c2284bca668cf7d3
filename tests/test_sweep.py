"""Sweep planning and resumption (training itself is replaced by a stub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interlude.errors import ConfigError
from interlude.experiments import sweep
from interlude.experiments.sweep import (
    SweepSpec,
    Variant,
    expand_grid,
    load_sweep_file,
    parse_grid,
    plan_runs,
    run_sweep,
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
    assert counts["ablation"] == 7 * 3 and counts["openset"] == 6 * 3 and counts["layout"] == 2 * 3


def test_run_dirs_are_separate_and_seeded(tmp_path):
    spec = load_sweep_file(ROOT / "configs" / "sweeps" / "lambda_dc.yaml")
    planned = plan_runs(spec, tmp_path)
    assert len({p.run_dir for p in planned}) == len(planned)
    first = planned[0]
    assert first.run_dir == tmp_path / "lambda_dc" / "lambda_dc=0.1" / "seed0"
    assert "train.seed=0" in first.overrides and "algorithm.lambda_dc=0.1" in first.overrides


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
    dirs = run_sweep(spec, tmp_path)
    assert calls == [(1, "fixmatch", True, "a/seed1")]
    assert dirs == [done, tmp_path / "s" / "a" / "seed1"]


def test_not_a_sweep_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  steps: 3\n")
    assert not sweep.is_sweep_file(path)
    with pytest.raises(ConfigError, match="not a sweep file"):
        load_sweep_file(path)
