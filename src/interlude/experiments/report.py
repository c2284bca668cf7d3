"""Reports: a Markdown table and plots that summarise finished run directories.

Runs are grouped into *variants*: runs whose resolved configs are equal once per-run bookkeeping
(seed, run name, output dir, device, ...) is removed. A variant is labelled by the config keys that
differ between variants, so an ablation or a sweep reads as ``algorithm.lambda_dc=0.1`` rather than
as a directory name. Numbers are mean ± sample std over seeds, in percent, of the run's primary model
(``summary["primary_model"]``, EMA or raw), so the report shows what the run itself would report.

Plots need matplotlib (``pip install 'interlude[plots]'``); without it only the table is written.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interlude.errors import InterludeError

# Keys that change between runs of one variant without changing what is being measured.
IGNORED_KEYS = frozenset(
    {
        "train.seed",
        "train.run_name",
        "train.out_dir",
        "train.progress",
        "train.device",
        "train.threads",
        "data.data_dir",
    }
)
PLOTS_HINT = "Plots need matplotlib: `pip install 'interlude[plots]'`."


class ReportError(InterludeError):
    """No usable run directory was given, so there is nothing to report."""


@dataclass
class Run:
    """One finished run: where it is, its flattened config and its summary.json."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]

    @property
    def model(self) -> str:
        """The model the run reports (``ema`` or ``raw``), so metric keys match the run's own choice."""
        return str(self.summary.get("primary_model") or "ema")

    @property
    def seed(self) -> Any:
        return self.summary.get("seed", self.config.get("train.seed"))

    def last(self, metric: str, split: str = "test") -> float | None:
        """A metric of the final model, or None when the run did not record it."""
        return _number((self.summary.get("last") or {}).get(f"{split}/{self.model}/{metric}"))

    def selected(self, metric: str) -> float | None:
        """A test metric of the val-selected checkpoint; None unless selection really used val."""
        if self.summary.get("selected_by") != "val":
            return None
        return _number((self.summary.get("best") or {}).get(f"test/{self.model}/{metric}"))

    def curve(self) -> tuple[list[int], list[float]]:
        """(steps, test top-1) of the primary model from the eval rows of metrics.jsonl."""
        key = f"test/{self.model}/top1"
        steps: list[int] = []
        values: list[float] = []
        for row in _read_jsonl(self.path / "metrics.jsonl"):
            value = _number(row.get(key))
            if row.get("kind") == "eval" and value is not None and "step" in row:
                steps.append(int(row["step"]))
                values.append(value)
        return steps, values


@dataclass
class Variant:
    """Runs that share a config up to IGNORED_KEYS; ``label`` is filled in once all are known."""

    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    def last_top1(self) -> list[float]:
        return [v for v in (r.last("top1") for r in self.runs) if v is not None]


def write_report(run_dirs: list[Path], out_dir: Path) -> Path:
    """Write ``report.md`` (and PNG plots when matplotlib is present) to out_dir; return its path.

    Each entry of run_dirs is a run directory or any folder above run directories (e.g. a sweep's
    output); runs without ``summary.json`` (interrupted) are skipped with a note on stderr.
    """
    runs = load_runs(run_dirs)
    if not runs:
        given = ", ".join(str(d) for d in run_dirs) or "(none)"
        raise ReportError(f"no finished run (a directory with summary.json) found under: {given}")
    variants = group_variants(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(variants, out_dir)
    if plots is None:
        _note(f"wrote the table only. {PLOTS_HINT}")
    path = out_dir / "report.md"
    path.write_text(render_markdown(runs, variants, plots))
    return path


# --- finding and loading runs -------------------------------------------------------------------


def find_run_dirs(run_dirs: Iterable[Path]) -> list[Path]:
    """Expand parent folders into the run dirs below them, keeping the given order and no duplicates."""
    found: list[Path] = []
    for d in run_dirs:
        if (d / "summary.json").is_file():
            candidates = [d]
        elif d.is_dir():
            candidates = sorted(p.parent for p in d.rglob("summary.json"))
            _note_unfinished(d)
        else:
            _note(f"skipping {d}: not a directory")
            candidates = []
        found.extend(c for c in candidates if c.resolve() not in {f.resolve() for f in found})
    return found


def _note_unfinished(root: Path) -> None:
    """Say which runs below root are skipped, so a silently shorter table is not mistaken for all."""
    started = {p.parent for p in root.rglob("config.yaml")} | {p.parent for p in root.rglob("metrics.jsonl")}
    for d in sorted(started):
        if not (d / "summary.json").is_file():
            _note(f"skipping {d}: no summary.json (interrupted or still running?)")


def load_runs(run_dirs: Iterable[Path]) -> list[Run]:
    """Load every finished run found in run_dirs; unreadable ones are skipped with a note."""
    runs = []
    for d in find_run_dirs(run_dirs):
        try:
            summary = json.loads((d / "summary.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            _note(f"skipping {d}: unreadable summary.json ({exc})")
            continue
        runs.append(Run(d, _flatten(_read_yaml(d / "config.yaml")), summary))
    return runs


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    tree = yaml.safe_load(path.read_text())
    return tree if isinstance(tree, dict) else {}


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (run killed mid-write) is ignored, not fatal."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            yield row


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


# --- variants -----------------------------------------------------------------------------------


def group_variants(runs: list[Run]) -> list[Variant]:
    """Group runs by config (ignoring per-run keys), in order of first appearance, and label them."""
    variants: list[Variant] = []
    for run in runs:
        config = {k: v for k, v in run.config.items() if k not in IGNORED_KEYS}
        match = next((v for v in variants if v.config == config), None)
        if match is None:
            match = Variant(config)
            variants.append(match)
        match.runs.append(run)
    keys = differing_keys(variants)
    sweep_names = _sweep_variant_names(variants)
    for v, name in zip(variants, sweep_names or [None] * len(variants), strict=True):
        v.label = name or _label(v, keys)
    return variants


def _sweep_variant_names(variants: list[Variant]) -> list[str] | None:
    """Variant folder names of ``interlude sweep`` (``<sweep>/<variant>/seed<k>``), if they are
    consistent and unique: they say what a variant is more briefly than the differing keys."""
    names = []
    for v in variants:
        parents = {run.path.parent.name for run in v.runs}
        seeded = all(run.path.name.startswith("seed") for run in v.runs)
        if len(parents) != 1 or not seeded:
            return None
        names.append(parents.pop())
    return names if len(set(names)) == len(names) else None


def differing_keys(variants: list[Variant]) -> list[str]:
    """Config keys whose value is not the same in every variant (these are what a reader compares)."""
    all_keys = sorted(set().union(*(v.config for v in variants)))
    missing = object()
    return [k for k in all_keys if len({repr(v.config.get(k, missing)) for v in variants}) > 1]


def _label(variant: Variant, keys: list[str]) -> str:
    if not keys:
        first = variant.runs[0]
        return str(variant.config.get("algorithm.name") or first.summary.get("algorithm", "run"))
    return ", ".join(f"{k}={_fmt_value(variant.config.get(k, '-'))}" for k in keys)


def _fmt_value(value: Any) -> str:
    return "null" if value is None else str(value)


# --- table --------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> str:
    """``mean ± std`` in percent with 1 decimal (sample std, 0 for one value); ``-`` when empty."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def table_row(variant: Variant) -> list[str]:
    runs = variant.runs
    seeds = ", ".join(str(r.seed) for r in runs)

    def present(values: Iterable[float | None]) -> list[float]:
        return [v for v in values if v is not None]

    per_seed = ", ".join(f"{r.seed}: {_pct(r.last('top1'))}" for r in runs)
    return [
        variant.label,
        f"{seeds} ({len(runs)})",
        mean_std(variant.last_top1()),
        mean_std(present(r.last("balanced_acc") for r in runs)),
        mean_std(present(r.selected("top1") for r in runs)),
        mean_std(present(r.selected("balanced_acc") for r in runs)),
        per_seed,
    ]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def render_markdown(runs: list[Run], variants: list[Variant], plots: list[str] | None) -> str:
    """The report text; plots is the list of written PNG names, or None when matplotlib is missing."""
    header = [
        "variant",
        "seeds (n)",
        "last test top-1 (%)",
        "last balanced acc (%)",
        "selected test top-1 (%)",
        "selected balanced acc (%)",
        "per-seed last top-1 (%)",
    ]
    lines = ["# interlude report", "", "Runs:", ""]
    lines += [f"- `{r.path}`" for r in runs]
    lines += ["", _md_row(header), _md_row(["---"] * len(header))]
    lines += [_md_row(table_row(v)) for v in variants]
    lines += ["", "Mean ± sample std over seeds; selected = val-selected checkpoint (runs with val only)."]
    lines.append("")
    if plots is None:
        lines.append(PLOTS_HINT)
    else:
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


# --- plots --------------------------------------------------------------------------------------


def write_plots(variants: list[Variant], out_dir: Path) -> list[str] | None:
    """Write the PNGs; return their names, or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    names = ["curves.png", "bars.png"]
    _plot_curves(Figure(figsize=(7, 4.5)), variants, out_dir / "curves.png")
    _plot_bars(Figure(figsize=(max(5, 1.2 * len(variants) + 2), 4.5)), variants, out_dir / "bars.png")
    if sensitivity_key(variants) is not None:
        _plot_sensitivity(Figure(figsize=(6, 4.5)), variants, out_dir / "sensitivity.png")
        names.append("sensitivity.png")
    return names


def sensitivity_key(variants: list[Variant]) -> str | None:
    """The one swept numeric key, if the variants differ in exactly one key and all its values are numbers."""
    keys = differing_keys(variants)
    if len(variants) < 2 or len(keys) != 1:
        return None
    values = [v.config.get(keys[0]) for v in variants]
    return keys[0] if all(_number(x) is not None for x in values) else None


def _plot_curves(fig: Any, variants: list[Variant], path: Path) -> None:
    # OO API (Figure, no pyplot): no global backend state, so it works headless and inside other apps.
    ax = fig.add_subplot()
    for i, variant in enumerate(variants):
        for j, run in enumerate(variant.runs):
            steps, values = run.curve()
            label = variant.label if j == 0 else None
            ax.plot(steps, [100 * v for v in values], color=f"C{i % 10}", alpha=0.8, label=label)
    ax.set(xlabel="step", ylabel="test top-1 (%)", title="Test top-1 (primary model)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_bars(fig: Any, variants: list[Variant], path: Path) -> None:
    ax = fig.add_subplot()
    means, stds = zip(*(_mean_std_pct(v.last_top1()) for v in variants), strict=True)
    xs = range(len(variants))
    ax.bar(xs, means, yerr=stds, capsize=4, color=[f"C{i % 10}" for i in xs])
    ax.set_xticks(list(xs), [v.label for v in variants], rotation=20, ha="right", fontsize="small")
    ax.set(ylabel="last test top-1 (%)", title="Last test top-1 (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_sensitivity(fig: Any, variants: list[Variant], path: Path) -> None:
    key = sensitivity_key(variants)
    assert key is not None
    points = sorted((float(v.config[key]), *_mean_std_pct(v.last_top1())) for v in variants)
    xs, means, stds = zip(*points, strict=True)
    ax = fig.add_subplot()
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4)
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel="last test top-1 (%)", title=f"Sensitivity to {key}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _mean_std_pct(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, 0.0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return 100 * statistics.fmean(values), 100 * std
