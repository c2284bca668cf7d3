"""Reports: a Markdown table and plots that summarise finished run directories.

Runs are grouped into *variants*: runs whose resolved configs are equal once per-run bookkeeping
(seed, run name, output dir, device, ...) is removed. A variant is labelled by the config keys that
differ between variants, so an ablation or a sweep reads as ``algorithm.lambda_dc=0.1`` rather than
as a directory name. Numbers are mean ± sample std over seeds, in percent, of the run's primary model
(``summary["primary_model"]``, EMA or raw), so the report shows what the run itself would report. One
seed has no spread: it is written ``-`` (``± 0.0`` would claim a perfectly repeatable result).

Plots: test top-1 against step as the mean over seeds with a min-max band per variant; bars of the
last top-1 (mean ± std, one dot per seed, the value written above each bar) on a y-axis cut near the
data when the variants are close; and, for a sweep of one numeric key, that key against top-1.

Failure signatures (:mod:`interlude.experiments.signatures`): each variant's seed spread, and each
run's over-regularisation, mask-rate, DC-share and pseudo-label-skew rules, are listed with their
numbers in a "Failure signatures" section (and returned to the CLI, which prints them).

Plots need matplotlib (``pip install 'interlude[plots]'``); without it only the table is written.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from interlude.config import BOOKKEEPING_KEYS, ROUNDING_KEYS, diff, dotted
from interlude.errors import InterludeError
from interlude.experiments.signatures import (
    DEFAULT,
    TAIL_FRACTION,
    Signature,
    Thresholds,
    group_signatures,
    run_signatures,
)
from interlude.files import parse_json, write_atomic
from interlude.train.logger import read_jsonl

# Keys that change between runs of one variant without changing what is being measured: the
# bookkeeping keys, the keys that change only rounding (device, threads), and the training seed
# (a variant's runs are its seeds).
IGNORED_KEYS = BOOKKEEPING_KEYS | ROUNDING_KEYS | {"train.seed"}
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

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl (read once: the curves and the signatures both use them)."""
        return read_jsonl(self.path / "metrics.jsonl")

    def curve(self) -> tuple[list[int], list[float]]:
        """(steps, test top-1) of the primary model from the eval rows of metrics.jsonl."""
        key = f"test/{self.model}/top1"
        steps: list[int] = []
        values: list[float] = []
        for row in self.records:
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


@dataclass
class Found:
    """A failure signature of a variant: of one of its runs (``seed``) or of its seeds together
    (``of_seeds``)."""

    variant: str
    seed: Any
    signature: Signature
    of_seeds: bool = False

    def where(self) -> str:
        return f"{self.variant}, " + ("all seeds" if self.of_seeds else f"seed {self.seed}")


@dataclass
class Report:
    """What :func:`build_report` wrote and found."""

    path: Path
    signatures: list[Found]


def write_report(run_dirs: list[Path], out_dir: Path,
                 thresholds: Thresholds = DEFAULT) -> Path:
    """Write ``report.md`` (and PNG plots when matplotlib is present) to out_dir; return its path.

    Each entry of run_dirs is a run directory or any folder above run directories (e.g. a sweep's
    output); runs without ``summary.json`` (interrupted) are skipped with a note on stderr.
    """
    return build_report(run_dirs, out_dir, thresholds).path


def build_report(run_dirs: list[Path], out_dir: Path, thresholds: Thresholds = DEFAULT) -> Report:
    """:func:`write_report`, also returning the failure signatures found (the CLI prints them)."""
    runs = load_runs(run_dirs)
    if not runs:
        given = ", ".join(str(d) for d in run_dirs) or "(none)"
        raise ReportError(f"no finished run (a directory with summary.json) found under: {given}")
    variants = group_variants(runs)
    found = find_signatures(variants, thresholds)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(variants, out_dir)
    if plots is None:
        _note(f"wrote the table only. {PLOTS_HINT}")
    path = out_dir / "report.md"
    write_atomic(path, render_markdown(runs, variants, plots, found, thresholds))
    return Report(path, found)


def find_signatures(variants: list[Variant], thresholds: Thresholds = DEFAULT) -> list[Found]:
    """Per variant: the signatures of its seeds together, then those of each run."""
    found = []
    for v in variants:
        spread = group_signatures({r.seed: r.last("top1") for r in v.runs}, thresholds)
        found += [Found(v.label, None, s, of_seeds=True) for s in spread]
        for run in v.runs:
            signatures = run_signatures(run.records, run.config, run.model, thresholds)
            found += [Found(v.label, run.seed, s) for s in signatures]
    return found


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
    """Load every finished run found in run_dirs; unreadable ones are skipped with a note.

    ``summary.json`` and ``config.yaml`` are read back as user input: a damaged or foreign file
    costs that run (with a note saying why), never the report.
    """
    from interlude.config import read_yaml

    runs = []
    for d in find_run_dirs(run_dirs):
        try:
            summary = parse_json((d / "summary.json").read_text())
            config = read_yaml(d / "config.yaml") if (d / "config.yaml").is_file() else {}
        except (OSError, ValueError, InterludeError) as exc:
            _note(f"skipping {d}: {' '.join(str(exc).split())}")
            continue
        if not isinstance(summary, dict) or not isinstance(config, dict):
            _note(f"skipping {d}: summary.json / config.yaml do not hold a mapping")
            continue
        runs.append(Run(d, dotted(config), summary))
    return runs


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
        # the same rule as resume and sweeps: config.diff, bookkeeping keys and keys only one
        # side knows (added by a newer version) ignored; the seed is left out of ``config`` above
        match = next((v for v in variants if not diff(v.config, config)), None)
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
    """``mean ± std`` in percent with 1 decimal (sample std); ``mean ± -`` for one value, which has no
    spread; ``-`` when empty."""
    if not values:
        return "-"
    mean, std = _mean_std_pct(values)
    return f"{mean:.1f} ± {_fmt_spread(std)}"


def _fmt_spread(std: float) -> str:
    return "-" if math.isnan(std) else f"{std:.1f}"


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


def render_markdown(runs: list[Run], variants: list[Variant], plots: list[str] | None,
                    found: list[Found], thresholds: Thresholds = DEFAULT) -> str:
    """The report text; plots is the list of written PNG names, or None when matplotlib is missing;
    found the failure signatures (an empty list: "none found")."""
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
    lines += [
        "",
        "Mean ± sample std over seeds (`-` for the spread of a single seed); "
        "selected = val-selected checkpoint (runs with val only).",
    ]
    lines += ["", *signature_section(found, thresholds), ""]
    if plots is None:
        lines.append(PLOTS_HINT)
    else:
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def signature_section(found: list[Found], thresholds: Thresholds = DEFAULT) -> list[str]:
    """The "Failure signatures" section: one bullet per signature (variant, seed, rule, message)."""
    t = thresholds
    lines = ["## Failure signatures", ""]
    if found:
        lines += [f"- {f.where()}, `{f.signature.rule}`: {f.signature.message}" for f in found]
    else:
        lines.append("None found.")
    lines += [
        "",
        f"Checked: seed sd of the last test top-1 > {t.seed_sd:g} pts; labeled (or val) top-1 "
        f"down > {t.acc_drop:g} pts from its best while loss_unsup (+ loss_dc) rose > "
        f"{t.unsup_rise:.0%}; over the last {TAIL_FRACTION:.0%} of the train records: mask rate "
        f"rising > {t.mask_rise:g} or mean < {t.mask_floor:g}, lambda_dc * loss_dc > "
        f"{t.dc_share:.0%} of loss, pseudo-label histogram > {t.pl_tv:g} (total variation) from "
        "the labeled prior. A rule whose metrics a run did not log is skipped.",
    ]
    return lines


def format_signatures(found: list[Found]) -> list[str]:
    """Console lines for the signatures found, one per signature, or one saying there are none."""
    if not found:
        return ["failure signatures: none found"]
    return [f"warning: {f.where()}: {f.signature.message}" for f in found]


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


# --- plots --------------------------------------------------------------------------------------


def write_plots(variants: list[Variant], out_dir: Path) -> list[str] | None:
    """Write the PNGs; return their names, or None when matplotlib is not installed."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return None
    figures = {"curves.png": plot_curves(variants), "bars.png": plot_bars(variants)}
    sensitivity = plot_sensitivity(variants)
    if sensitivity is not None:
        figures["sensitivity.png"] = sensitivity
    for name, fig in figures.items():
        write_atomic(out_dir / name, lambda handle, fig=fig: fig.savefig(handle, format="png",
                                                                          dpi=100))
    return list(figures)


def _new_axes(size: tuple[float, float]) -> tuple[Any, Any]:
    # OO API (Figure, no pyplot): no global backend state, so it works headless and inside other apps.
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="tight")
    return fig, fig.add_subplot()


def _color(i: int) -> str:
    """One colour per variant, the same in every plot."""
    return f"C{i % 10}"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def sensitivity_key(variants: list[Variant]) -> str | None:
    """The one swept numeric key, if the variants differ in exactly one key and all its values are numbers."""
    keys = differing_keys(variants)
    if len(variants) < 2 or len(keys) != 1:
        return None
    values = [v.config.get(keys[0]) for v in variants]
    return keys[0] if all(_number(x) is not None for x in values) else None


def curve_band(runs: list[Run]) -> tuple[list[int], list[float], list[float], list[float], int]:
    """(steps, mean, min, max, n) of the runs' test top-1 curves in percent, n being the number of
    runs with a curve. Every step some run evaluated is kept; a step fewer runs reached is averaged
    over those runs only."""
    by_step: dict[int, list[float]] = {}
    n = 0
    for run in runs:
        steps, values = run.curve()
        n += bool(steps)
        for step, value in zip(steps, values, strict=True):
            by_step.setdefault(step, []).append(100 * value)
    steps = sorted(by_step)
    cols = [by_step[s] for s in steps]
    return steps, [statistics.fmean(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols], n


def plot_curves(variants: list[Variant]) -> Any:
    """Test top-1 against step: one mean line per variant, with a min-max band over its seeds."""
    fig, ax = _new_axes((7, 4.5))
    banded = False
    for i, variant in enumerate(variants):
        steps, mean, low, high, n = curve_band(variant.runs)
        if not steps:
            continue
        marker = "o" if len(steps) <= 30 else None
        label = f"{variant.label} ({_seeds(n)})"
        ax.plot(steps, mean, color=_color(i), marker=marker, markersize=3, label=label)
        if n > 1:
            ax.fill_between(steps, low, high, color=_color(i), alpha=0.2, linewidth=0)
            banded = True
    spread = "mean over seeds, band = min-max" if banded else "one seed per variant"
    ax.set(xlabel="step", ylabel="test top-1 (%)", title=f"Test top-1 of the primary model ({spread})")
    if ax.lines:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no eval rows in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    return fig


def bar_ylim(low: float, high: float) -> tuple[float, float]:
    """y-limits (percent) for bars whose drawn extent (bar tops, error bars, seed dots) is low..high.

    Bars start at 0 when their differences are plain from 0 (the data spans over a tenth of the
    highest value), so bar lengths stay proportional; otherwise the axis is cut a little below the
    data, at a round number, so that 96.5 vs 96.7 do not look equal. The top leaves room for the
    values written above the bars.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 100.0
    span = high - low
    if span > 0.1 * high:
        bottom = 0.0
    else:
        cut = low - max(0.15 * span, 0.5)
        unit = 1.0 if span >= 5 else 0.1
        bottom = max(0.0, round(math.floor(cut / unit) * unit, 1))
    return bottom, high + 0.15 * max(high - bottom, 1.0)


def plot_bars(variants: list[Variant]) -> Any:
    """Last test top-1 per variant: bar = mean, error bar = std, dots = seeds, value written above.

    When a far-behind variant (typically ``supervised``) forces the axis to start at 0, the
    variants close to the best are drawn again in a second panel with a cut axis, so their
    differences stay visible next to the proportional overview.
    """
    stats = [_Points(v.last_top1()) for v in variants]
    cluster = top_cluster(stats)
    panels = [list(range(len(variants)))]
    if cluster is not None:
        panels.append(cluster)
    width = sum(max(3.0, 1.2 * len(p) + 1) for p in panels) + 1
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(max(5, width), 4.5), squeeze=False,
                             gridspec_kw={"width_ratios": [max(2, len(p)) for p in panels]})
    several = any(len(p.values) > 1 for p in stats)
    spread = "mean ± std over seeds, dots = seeds" if several else "one seed each"
    for ax, indices in zip(axes[0], panels, strict=True):
        bottom = _draw_bars(ax, [variants[i] for i in indices], [stats[i] for i in indices], indices)
        ylabel = "last test top-1 (%)" + (f", axis cut at {bottom:g}" if bottom > 0 else "")
        ax.set_ylabel(ylabel)
    axes[0][0].set_title(f"Last test top-1\n({spread})")
    if cluster is not None:
        axes[0][1].set_title(f"zoom: the {len(cluster)} variants\nclosest to the best")
    fig.tight_layout()
    return fig


def top_cluster(stats: list[_Points]) -> list[int] | None:
    """Indices of the variants near the best, when others are so far behind that the bars start
    at 0 and hide the near ones' differences; None when one panel shows everything."""
    drawn = [i for i, p in enumerate(stats) if p.values]
    if len(drawn) < 3:
        return None
    low = min(stats[i].low for i in drawn)
    high = max(stats[i].high for i in drawn)
    if bar_ylim(low, high)[0] > 0:
        return None
    best = max(stats[i].mean for i in drawn)
    near = [i for i in drawn if stats[i].low >= best - 0.05 * best]
    return near if 2 <= len(near) < len(drawn) else None


def _draw_bars(ax: Any, variants: list[Variant], stats: list[_Points], colors: list[int]) -> float:
    """Bars, error bars, seed dots and values of ``variants``; returns the axis bottom."""
    xs = list(range(len(variants)))
    means = [p.mean for p in stats]
    ax.bar(xs, means, color=[_color(i) for i in colors], alpha=0.85)
    ax.errorbar(xs, means, yerr=[p.std for p in stats], fmt="none", ecolor="black", capsize=4)
    for x, p in zip(xs, stats, strict=True):
        if len(p.values) > 1:  # beside the error bar, spread a little so equal values stay apart
            offsets = [0.12 + 0.12 * j / (len(p.values) - 1) for j in range(len(p.values))]
            ax.plot([x + o for o in offsets], p.values, "o", color="black", markersize=3.5,
                    fillstyle="none")
        p.write_value(ax, x)
    drawn = [p for p in stats if p.values]
    low = min((p.low for p in drawn), default=math.nan)
    bottom, top = bar_ylim(low, max((p.high for p in drawn), default=math.nan))
    ax.set_ylim(bottom, top)
    ax.set_xticks(xs, [v.label for v in variants], rotation=20, ha="right", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return bottom


def plot_sensitivity(variants: list[Variant]) -> Any | None:
    """The swept key against last test top-1 (mean ± std, dots = seeds); None when nothing is swept."""
    key = sensitivity_key(variants)
    if key is None:
        return None
    fig, ax = _new_axes((6, 4.5))
    ordered = sorted(variants, key=lambda v: float(v.config[key]))
    xs = [float(v.config[key]) for v in ordered]
    stats = [_Points(v.last_top1()) for v in ordered]
    several = any(len(p.values) > 1 for p in stats)
    label = "mean ± std over seeds" if several else "one seed per value (no spread)"
    ax.errorbar(xs, [p.mean for p in stats], yerr=[p.std for p in stats], marker="o", capsize=4, label=label)
    if several:
        dots = [(x, t) for x, p in zip(xs, stats, strict=True) for t in p.values]
        dot_xs, dot_ys = zip(*dots, strict=True)
        ax.plot(dot_xs, dot_ys, "o", color="black", markersize=3.5, fillstyle="none", label="one seed")
    for i, (x, p) in enumerate(zip(xs, stats, strict=True)):
        # Above the point, unless the line rises on both sides past where the text would sit:
        # then it would be written on the line, so it goes below.
        neighbours = [q.mean for q in stats[max(0, i - 1) : i + 2] if q is not p and math.isfinite(q.mean)]
        p.write_value(ax, x, below=bool(neighbours) and all(m > p.high for m in neighbours))
    drawn = [p for p in stats if p.values]
    if drawn:  # pad around the data, with room for the values written over or under the points
        low, high = min(p.low for p in drawn), max(p.high for p in drawn)
        span = max(high - low, 1.0)
        ax.set_ylim(low - 0.2 * span, high + 0.2 * span)
    ax.margins(x=0.12)  # room for the values written at the first and last point
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(xs, [_fmt_value(v.config[key]) for v in ordered])
    ax.set_xticks([], minor=True)
    ax.set(xlabel=key, ylabel="last test top-1 (%)", title=f"Sensitivity to {key}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


class _Points:
    """One variant's values in percent, with what the plots draw of them: mean, std (NaN for one
    value), the drawn extent (error bar and seed dots) and the text written next to them."""

    def __init__(self, fractions: list[float]) -> None:
        self.values = [100 * f for f in fractions]
        self.mean, self.std = _mean_std_pct(fractions)
        err = 0.0 if math.isnan(self.std) else self.std
        self.low = min([self.mean - err, *self.values]) if self.values else math.nan
        self.high = max([self.mean + err, *self.values]) if self.values else math.nan
        self.text = mean_std(fractions)

    def write_value(self, ax: Any, x: float, below: bool = False) -> None:
        """Write ``mean ± std`` centred above (or below) everything drawn for these values."""
        if self.values:
            y, dy, va = (self.low, -5, "top") if below else (self.high, 5, "bottom")
            ax.annotate(self.text, (x, y), xytext=(0, dy), textcoords="offset points",
                        ha="center", va=va, fontsize="small")


def _mean_std_pct(values: list[float]) -> tuple[float, float]:
    """(mean, sample std) in percent; the std is NaN for fewer than two values (no spread to show:
    matplotlib draws no error bar for NaN), the mean NaN for none."""
    mean = 100 * statistics.fmean(values) if values else math.nan
    std = 100 * statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std
