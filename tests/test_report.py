"""Tests for ``interlude report``: variant grouping, the Markdown table's numbers, plots, errors.

Run directories are written by hand (config.yaml from the real default Config, summary.json,
metrics.jsonl) so these tests stay fast and pin the run-dir format the report depends on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlude.config import Config
from interlude.errors import InterludeError
from interlude.experiments.report import ReportError, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path,
    name: str,
    top1: float,
    *,
    seed: int,
    overrides: dict[str, Any] | None = None,
    balanced: float | None = None,
    best_top1: float | None = None,
    model: str = "ema",
) -> Path:
    """Write a finished fake run dir; overrides are ``section.key`` -> value on the default config."""
    run = root / name
    run.mkdir(parents=True)
    tree = Config().to_dict()
    tree["train"].update(seed=seed, run_name=name, out_dir=str(root))
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        tree[section][field] = value
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    last = {
        "step": 100,
        f"test/{model}/top1": top1,
        f"test/{model}/balanced_acc": top1 if balanced is None else balanced,
        f"test/{model}/macro_f1": top1,
        "test/other/top1": 0.0,  # the non-primary model must never leak into the table
        f"test/{model}/confusion": [[1, 0], [0, 1]],
    }
    best = None if best_top1 is None else dict(last, **{f"test/{model}/top1": best_top1})
    summary = {
        "algorithm": tree["algorithm"]["name"],
        "dataset": "digits",
        "seed": seed,
        "data_seed": 0,
        "steps": 100,
        "primary_model": model,
        "selected_by": "val" if best_top1 is not None else "last",
        "last": last,
        "best": best,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    rows = [{"step": 10, "kind": "train", "loss": 1.0}]
    rows += [{"step": s, "kind": "eval", f"test/{model}/top1": top1 * s / 100} for s in (50, 100)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run


def two_variants(root: Path) -> list[Path]:
    """fixmatch vs interlude, two seeds each, with known top-1 values."""
    return [
        make_run(root, "fm0", 0.90, seed=0, overrides={"algorithm.name": "fixmatch"}, best_top1=0.91),
        make_run(root, "fm1", 0.94, seed=1, overrides={"algorithm.name": "fixmatch"}, best_top1=0.95),
        make_run(root, "il0", 0.95, seed=0, balanced=0.80),
        make_run(root, "il1", 0.97, seed=1, balanced=0.84),
    ]


def table_rows(report: Path) -> list[list[str]]:
    lines = [ln for ln in report.read_text().splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]  # drop header and separator


def test_table_labels_and_numbers(tmp_path: Path) -> None:
    report = write_report(two_variants(tmp_path / "runs"), tmp_path / "out")
    assert report == tmp_path / "out" / "report.md"
    rows = table_rows(report)
    assert [r[0] for r in rows] == ["algorithm.name=fixmatch", "algorithm.name=interlude"]
    fm, il = rows
    assert fm[1] == "0, 1 (2)"
    assert fm[2] == "92.0 ± 2.8"
    assert fm[4] == "93.0 ± 2.8"  # selected (val) top-1 from best
    assert fm[5] == "92.0 ± 2.8"  # selected balanced accuracy (= last's in these fakes)
    assert fm[6] == "0: 90.0, 1: 94.0"
    assert il[2] == "96.0 ± 1.4"
    assert il[3] == "82.0 ± 2.8"  # balanced accuracy, not top-1
    assert il[4] == il[5] == "-"  # selected_by == "last" -> no selected numbers


def test_single_variant_labelled_by_algorithm_and_raw_model(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", 0.5, seed=3, model="raw")
    rows = table_rows(write_report([run], tmp_path / "out"))
    assert rows == [["interlude", "3 (1)", "50.0 ± 0.0", "50.0 ± 0.0", "-", "-", "3: 50.0"]]


def test_plots_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    text = write_report(two_variants(tmp_path / "runs"), out).read_text()
    for name in ("curves.png", "bars.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
        assert f"({name})" in text
    assert not (out / "sensitivity.png").exists()  # the differing key is a string


def test_numeric_sweep_gives_sensitivity_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = [
        make_run(tmp_path / "sweep", f"dc{v}", 0.9 + i / 100, seed=0, overrides={"algorithm.lambda_dc": v})
        for i, v in enumerate([10.0, 0.1, 1.0])
    ]
    out = tmp_path / "out"
    rows = table_rows(write_report(runs, out))
    assert [r[0] for r in rows] == [f"algorithm.lambda_dc={v}" for v in (10.0, 0.1, 1.0)]
    assert (out / "sensitivity.png").read_bytes().startswith(PNG_MAGIC)


def test_parent_folder_expands_and_skips_interrupted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    two_variants(tmp_path / "sweep" / "a")
    broken = make_run(tmp_path / "sweep" / "b", "dead", 0.1, seed=9)
    (broken / "summary.json").unlink()
    rows = table_rows(write_report([tmp_path / "sweep"], tmp_path / "out"))
    assert [r[1] for r in rows] == ["0, 1 (2)", "0, 1 (2)"]  # the interrupted seed 9 is not counted
    assert "dead" in capsys.readouterr().err


def test_without_matplotlib_writes_table_and_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    text = write_report(two_variants(tmp_path / "runs"), out).read_text()
    assert "pip install 'interlude[plots]'" in text
    assert "pip install 'interlude[plots]'" in capsys.readouterr().err
    assert len(table_rows(out / "report.md")) == 2
    assert not (out / "curves.png").exists()


def test_no_runs_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no finished run") as info:
        write_report([tmp_path / "empty", tmp_path / "missing"], tmp_path / "out")
    assert isinstance(info.value, InterludeError)
    assert not (tmp_path / "out" / "report.md").exists()


def test_sweep_runs_are_labelled_by_their_variant_folder(tmp_path: Path) -> None:
    dirs = [
        make_run(tmp_path, "no-dc/seed0", 0.9, seed=0, overrides={"algorithm.lambda_dc": 0.0}),
        make_run(tmp_path, "no-dc/seed1", 0.9, seed=1, overrides={"algorithm.lambda_dc": 0.0}),
        make_run(tmp_path, "full/seed0", 0.8, seed=0),
    ]
    rows = table_rows(write_report(dirs, tmp_path / "out"))
    assert [row[0] for row in rows] == ["no-dc", "full"]
