"""Tests for ``interlude report``: variant grouping, the Markdown table's numbers, plots, errors.

Run directories are written by hand (config.yaml from the real default Config, summary.json,
metrics.jsonl) so these tests stay fast and pin the run-dir format the report depends on.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlude.cli import main
from interlude.config import Config
from interlude.errors import InterludeError
from interlude.experiments.report import (
    ReportError,
    Variant,
    bar_ylim,
    group_variants,
    load_runs,
    plot_bars,
    plot_curves,
    plot_sensitivity,
    write_report,
)

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
    rows: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a finished fake run dir; overrides are ``section.key`` -> value on the default config;
    rows are more metrics.jsonl records (e.g. what a failure signature reads)."""
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
    records = [{"step": 10, "kind": "train", "loss": 1.0}, *(rows or [])]
    records += [{"step": s, "kind": "eval", f"test/{model}/top1": top1 * s / 100} for s in (50, 100)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
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
    assert rows == [["interlude", "3 (1)", "50.0 ± -", "50.0 ± -", "-", "-", "3: 50.0"]]


def test_one_seed_spread_is_a_dash_never_zero(tmp_path: Path) -> None:
    """A single seed has no spread: '-', while several seeds give 'mean ± std' (even a 0.0 one)."""
    dirs = [
        make_run(tmp_path, "one/seed0", 0.965, seed=0, overrides={"algorithm.name": "fixmatch"}),
        make_run(tmp_path, "two/seed0", 0.96, seed=0),
        make_run(tmp_path, "two/seed1", 0.97, seed=1),
        make_run(tmp_path, "same/seed0", 0.9, seed=0, overrides={"algorithm.name": "freematch"}),
        make_run(tmp_path, "same/seed1", 0.9, seed=1, overrides={"algorithm.name": "freematch"}),
    ]
    report = write_report(dirs, tmp_path / "out")
    one, two, same = table_rows(report)
    assert one[1:3] == ["0 (1)", "96.5 ± -"]
    assert two[1:3] == ["0, 1 (2)", "96.5 ± 0.7"]
    assert same[1:3] == ["0, 1 (2)", "90.0 ± 0.0"]  # two equal seeds: a measured spread of zero
    assert "`-` for the spread of a single seed" in report.read_text()


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


def variants_of(root: Path, top1: dict[str, list[float]], key: str = "algorithm.name") -> list[Variant]:
    """Variants named by top1's keys (set as `key`), one run per listed top-1 (seeds 0, 1, ...)."""
    value = str if key == "algorithm.name" else float
    dirs = [
        make_run(root, f"{name}/seed{s}", t, seed=s, overrides={key: value(name)})
        for name, values in top1.items()
        for s, t in enumerate(values)
    ]
    return group_variants(load_runs(dirs))


def test_bar_ylim_cuts_the_axis_only_when_the_values_are_close() -> None:
    bottom, top = bar_ylim(96.5, 96.7)
    assert 90 < bottom < 96.5 and top > 96.7
    assert bottom == round(bottom, 1)  # a round number, as written in the axis label
    assert bar_ylim(60.0, 90.0)[0] == 0.0  # differences plain from 0: bars stay proportional
    assert bar_ylim(0.2, 0.4)[0] == 0.0  # never below 0
    assert bar_ylim(math.nan, math.nan) == (0.0, 100.0)  # no values at all


def test_bar_plot_shows_small_differences_and_writes_the_values(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    variants = variants_of(tmp_path, {"fixmatch": [0.965], "interlude": [0.966, 0.968, 0.967]})
    ax = plot_bars(variants).axes[0]
    bottom, top = ax.get_ylim()
    assert 90 < bottom < 96.5 and top > 96.8
    assert "axis cut at" in ax.get_ylabel()
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["96.5 ± -", "96.7 ± 0.1"]
    assert [t.xy[1] for t in ax.texts] == pytest.approx([96.5, 96.8])  # above the bar, error bar and dots
    assert ax.containers[0].datavalues.tolist() == pytest.approx([96.5, 96.7])


def test_bar_plot_starts_at_zero_for_large_differences(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    ax = plot_bars(variants_of(tmp_path, {"supervised": [0.6, 0.62], "interlude": [0.9, 0.92]})).axes[0]
    assert ax.get_ylim()[0] == 0.0
    assert ax.get_ylabel() == "last test top-1 (%)"


def test_far_behind_variant_adds_a_zoomed_panel_of_the_close_ones(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fig = plot_bars(variants_of(tmp_path, {
        "supervised": [0.83, 0.85], "fixmatch": [0.964, 0.966], "interlude": [0.969, 0.971],
    }))
    overview, zoom = fig.axes
    assert overview.get_ylim()[0] == 0.0 and len(overview.containers[0]) == 3
    assert [t.get_text() for t in zoom.get_xticklabels()] == ["fixmatch", "interlude"]
    assert 90 < zoom.get_ylim()[0] < 96.4 and "axis cut at" in zoom.get_ylabel()
    # same colour for a variant in both panels
    assert overview.containers[0][1].get_facecolor() == zoom.containers[0][0].get_facecolor()


def test_curves_draw_one_mean_line_and_band_per_variant(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.collections import PolyCollection

    variants = variants_of(
        tmp_path, {"fixmatch": [0.8, 0.9, 1.0], "interlude": [0.6, 0.7, 0.8], "supervised": [0.3, 0.4, 0.5]}
    )
    ax = plot_curves(variants).axes[0]
    assert len(ax.lines) == 3  # one mean line per variant, not one per seed
    assert [line.get_label() for line in ax.lines] == [f"{v.label} (3 seeds)" for v in variants]
    assert ax.lines[0].get_ydata().tolist() == pytest.approx([45.0, 90.0])  # mean at steps 50, 100
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3
    assert bands[0].get_paths()[0].get_extents().y1 == pytest.approx(100.0)  # band = min..max of seeds
    assert bands[0].get_paths()[0].get_extents().y0 == pytest.approx(40.0)
    assert "band = min-max" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [line.get_label() for line in ax.lines]


def test_curves_of_single_seeds_have_no_band(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    ax = plot_curves(variants_of(tmp_path, {"fixmatch": [0.9], "interlude": [0.8]})).axes[0]
    assert len(ax.lines) == 2
    assert not ax.collections
    assert "one seed per variant" in ax.get_title()


def test_sensitivity_plot_mean_spread_and_swept_values(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    variants = variants_of(
        tmp_path, {"10.0": [0.9, 0.92], "0.1": [0.8, 0.84], "1.0": [0.85, 0.85]}, key="algorithm.lambda_dc"
    )
    ax = plot_sensitivity(variants).axes[0]
    assert ax.get_xlabel() == "algorithm.lambda_dc"
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "1.0", "10.0"]  # the swept values
    mean_line = ax.containers[0].lines[0]  # the errorbar's line: means, sorted by the swept value
    assert mean_line.get_ydata().tolist() == pytest.approx([82.0, 85.0, 91.0])
    assert [t.get_text() for t in ax.texts] == ["82.0 ± 2.8", "85.0 ± 0.0", "91.0 ± 1.4"]
    low, high = ax.get_ylim()
    assert 70 < low < 80 and 92 < high < 100  # padded around the data, not from 0
    assert plot_sensitivity(variants_of(tmp_path / "s", {"fixmatch": [0.9], "interlude": [0.8]})) is None


def test_sensitivity_plot_of_single_seeds_has_no_error_bars(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    variants = variants_of(tmp_path, {"0.0": [0.8], "1.0": [0.9]}, key="algorithm.lambda_dc")
    ax = plot_sensitivity(variants).axes[0]
    assert ax.get_xscale() == "linear"  # 0 is swept: no log axis
    assert [t.get_text() for t in ax.texts] == ["80.0 ± -", "90.0 ± -"]
    assert error_bar_heights(ax.containers[0]) == []  # not a bar of height 0 ("± 0.0")
    assert "one seed per value" in ax.get_legend().get_texts()[0].get_text()


def error_bar_heights(container: Any) -> list[float]:
    """Heights of the error bars an ``ax.errorbar`` container really draws."""
    _, _, bar_collections = container.lines
    segments = [seg for lc in bar_collections for seg in lc.get_segments() if len(seg)]
    return [float(seg[:, 1].max() - seg[:, 1].min()) for seg in segments]


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


# --- failure signatures -------------------------------------------------------------------------


def stuck_mask_rows(mask_rate: float = 0.01) -> list[dict[str, Any]]:
    """Train windows at steps 20-100 (make_run writes step 10) whose mask rate stays at mask_rate
    (the mask_rate_stuck signature when low)."""
    return [{"step": 10 * i, "kind": "train", "loss": 1.0, "mask_rate": mask_rate}
            for i in range(2, 11)]


def signature_runs(root: Path) -> list[Path]:
    """fixmatch: seeds 90 / 94 (sd 2.8 pts); interlude: seeds 95.0 / 95.5, seed 1 mask stuck."""
    return [
        make_run(root, "fm0", 0.90, seed=0, overrides={"algorithm.name": "fixmatch"}),
        make_run(root, "fm1", 0.94, seed=1, overrides={"algorithm.name": "fixmatch"}),
        make_run(root, "il0", 0.950, seed=0, rows=stuck_mask_rows(0.9)),
        make_run(root, "il1", 0.955, seed=1, rows=stuck_mask_rows(0.01)),
    ]


def signature_lines(report: Path) -> list[str]:
    text = report.read_text()
    section = text[text.index("## Failure signatures"):]
    return [line for line in section.splitlines()[1:] if line and not line.startswith("Checked")
            and not line.startswith("![") and not line.startswith("Plots need")]


def test_report_lists_failure_signatures_per_variant_and_seed(tmp_path: Path) -> None:
    report = write_report(signature_runs(tmp_path / "runs"), tmp_path / "out")
    assert signature_lines(report) == [
        "- algorithm.name=fixmatch, all seeds, `seed_spread`: high variance across seeds: final "
        "test top-1 has a seed-to-seed sd of 2.8 pts (> 1) over 2 seeds (0: 90.0, 1: 94.0)",
        "- algorithm.name=interlude, seed 1, `mask_rate_stuck`: mask rate stuck near zero: mean "
        "mask_rate 0.010 (< 0.05) over the last 20% of training (steps 90-100): almost no "
        "unlabeled image passes the confidence threshold",
    ]
    assert len(table_rows(report)) == 2  # the table is unchanged by the section after it


def test_report_says_when_no_signature_is_found(tmp_path: Path) -> None:
    runs = [make_run(tmp_path / "runs", f"il{s}", 0.95 + s / 1000, seed=s,
                     rows=stuck_mask_rows(0.9)) for s in (0, 1)]
    assert signature_lines(write_report(runs, tmp_path / "out")) == ["None found."]


def test_report_cli_prints_signatures_and_takes_thresholds(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    dirs = [str(d) for d in signature_runs(tmp_path / "runs")]
    assert main(["report", *dirs, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("warning: algorithm.name=fixmatch, all seeds: high variance across "
                             "seeds: final test top-1 has a seed-to-seed sd of 2.8 pts")
    assert out[1].startswith("warning: algorithm.name=interlude, seed 1: mask rate stuck near "
                             "zero: mean mask_rate 0.010")
    assert out[2:] == [str(tmp_path / "out" / "report.md")]
    # a looser seed threshold and a lower mask floor: nothing left to report
    args = ["report", *dirs, "--out", str(tmp_path / "out2"), "--threshold", "seed_sd=3",
            "--threshold", "mask_floor=0.005"]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[0] == "failure signatures: none found"
    assert "sd of the last test top-1 > 3 pts" in (tmp_path / "out2" / "report.md").read_text()


@pytest.mark.parametrize(("flag", "expected"), [
    ("seed_spread=2", "error: --threshold seed_spread: unknown threshold; use one of seed_sd, "),
    ("seed_sd", "error: argument --threshold: expected NAME=NUMBER (e.g. seed_sd=2), got 'seed_sd'"),
])
def test_report_cli_bad_threshold_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              flag: str, expected: str) -> None:
    run = make_run(tmp_path / "runs", "r0", 0.9, seed=0)
    try:  # argparse's own errors exit from the parser
        code = main(["report", str(run), "--out", str(tmp_path / "out"), "--threshold", flag])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(expected) and len(err.splitlines()) == 1
