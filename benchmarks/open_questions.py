"""Tables and plots for the method's open questions (benchmarks/RESULTS.md, issue 16).

Reads the run folders of the shipped sweeps (``interlude sweep configs/sweeps/<name>.yaml --out
ROOT``) and writes, per sweep found under ROOT, a Markdown table (last test top-1 of each run's
primary model, mean ± sample sd over training seeds, ``-`` for one seed) and a plot:

- ``fusion_strength``: alpha against accuracy, FixMatch as a horizontal reference band;
- ``lambda_dc``: lambda_DC against accuracy;
- ``openset``: outlier ratio against accuracy, one line per method;
- ``domain_shift``: one group of bars per scenario (labeled -> unlabeled | test), one bar per method.

Every run also goes through the failure-signature rules of ``interlude report``
(``interlude.experiments.signatures``); the table says how many seeds showed each.

    python benchmarks/open_questions.py runs/sweeps --out benchmarks/results/open_questions
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interlude.experiments.report import Run, load_runs
from interlude.experiments.signatures import group_signatures, run_dir_signatures
from interlude.train.logger import read_jsonl

Key = tuple[Any, ...]


def last_top1(run: Run) -> float | None:
    value = run.last("top1")
    return None if value is None else 100.0 * value


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, sample sd) in percent; sd is NaN for one value (it has no spread)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, sd = spread(values)
    return f"{mean:.1f} ± {'-' if math.isnan(sd) else f'{sd:.1f}'}"


def group(runs: list[Run], key: Callable[[Run], Key | None]) -> dict[Key, list[Run]]:
    groups: dict[Key, list[Run]] = defaultdict(list)
    for run in runs:
        k = key(run)
        if k is not None:
            groups[k].append(run)
    return dict(groups)


def signature_names(run: Run) -> list[str]:
    """The failure signatures one run shows (rule names), as `interlude report` finds them."""
    return [s.rule for s in run_dir_signatures(run.path, run.model)]


def final_mask_rate(runs: list[Run]) -> str:
    """Mean over seeds of the last logged mask rate ('-' for algorithms without one)."""
    rates = []
    for run in runs:
        train = [r for r in read_jsonl(run.path / "metrics.jsonl") if r.get("kind") == "train"]
        if train and isinstance(train[-1].get("mask_rate"), (int, float)):
            rates.append(float(train[-1]["mask_rate"]))
    return f"{statistics.fmean(rates):.2f}" if rates else "-"


def signature_cell(runs: list[Run], groups: list[list[Run]] | None = None) -> str:
    """Run signatures as "rule (runs showing it / runs)", then the seed-spread rule of each
    group of seeds (``groups``; default: ``runs`` is one group) as "rule (groups / groups)"."""
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        for name in set(signature_names(run)):
            counts[name] += 1
    cells = [f"{name} ({n}/{len(runs)})" for name, n in sorted(counts.items())]
    groups = groups if groups is not None else [runs]
    spread_groups = sum(
        bool(group_signatures({r.seed: r.last("top1") for r in group})) for group in groups)
    if spread_groups:
        cells.append(f"seed_spread ({spread_groups}/{len(groups)} groups)")
    return ", ".join(cells) or "none"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def per_seed(runs: list[Run]) -> str:
    ordered = sorted(runs, key=lambda r: str(r.seed))
    return ", ".join(f"{r.seed}: {last_top1(r):.1f}" for r in ordered if last_top1(r) is not None)


def values_of(runs: list[Run]) -> list[float]:
    return [v for v in map(last_top1, runs) if v is not None]


# --- the four experiments -----------------------------------------------------------------------


def algorithm(run: Run) -> str:
    return str(run.config.get("algorithm.name"))


def fusion_key(run: Run) -> Key:
    if algorithm(run) != "interlude":
        return (algorithm(run), None)
    return ("interlude", float(run.config.get("algorithm.fusion_strength", 0.1)))


def lambda_dc_key(run: Run) -> Key:
    return (float(run.config.get("algorithm.lambda_dc", 1.0)),)


def method(run: Run) -> str:
    name = algorithm(run)
    if name == "interlude":
        return f"interlude-{run.config.get('algorithm.dc_variant', 'avg')}"
    return name


def openset_key(run: Run) -> Key:
    return (method(run), float(run.config.get("data.outlier_ratio", 0.0)))


def scenario(run: Run) -> str:
    labeled = str(run.config.get("data.name"))
    unlabeled = run.config.get("data.unlabeled_from") or labeled
    test = run.config.get("data.test_from") or labeled
    return f"L {labeled}, U {unlabeled}, test {test}"


def scenario_order(text: str) -> tuple[str, bool, bool]:
    labeled, unlabeled, test = (part.split()[-1] for part in text.split(", "))
    return labeled, test != labeled, unlabeled != labeled


def domain_key(run: Run) -> Key:
    return (scenario(run), algorithm(run))


def fusion_section(runs: list[Run], out: Path, plt: Any) -> str:
    groups = group(runs, fusion_key)
    rows = [[("alpha=" + str(k[1])) if k[1] is not None else k[0], str(len(g)), cell(values_of(g)),
             per_seed(g), final_mask_rate(g), signature_cell(g)]
            for k, g in sorted(groups.items(), key=lambda kv: (kv[0][1] is not None, kv[0][1] or 0))]
    if plt is not None:
        curve = sorted((k[1], values_of(g)) for k, g in groups.items() if k[1] is not None)
        reference = next((values_of(g) for k, g in groups.items() if k[1] is None), None)
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        if reference:
            mean, sd = spread(reference)
            ax.axhline(mean, color="tab:gray", linestyle="--",
                       label=f"FixMatch {cell(reference)} (band: ± sd)")
            if not math.isnan(sd):
                ax.axhspan(mean - sd, mean + sd, color="tab:gray", alpha=0.15)
        line_plot(ax, [x for x, _ in curve], [v for _, v in curve], "InterLUDE", "tab:blue")
        ax.set(xlabel="fusion strength alpha (0 = no fusion)", ylabel="last test top-1 (%)",
               title="InterLUDE: fusion strength (mean ± sd, dots = seeds)")
        ax.set_xticks([x for x, _ in curve])
        finish(fig, ax, out / "fusion_strength.png")
    return table(["variant", "seeds", "last test top-1 (%)", "per seed", "final mask rate",
                  "failure signatures"], rows)


def lambda_dc_section(runs: list[Run], out: Path, plt: Any) -> str:
    groups = group(runs, lambda_dc_key)
    ordered = sorted(groups.items())
    rows = [[f"lambda_dc={k[0]}", str(len(g)), cell(values_of(g)), per_seed(g), final_mask_rate(g),
             signature_cell(g)]
            for k, g in ordered]
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        positions = list(range(len(ordered)))  # 0, 0.1, 1, 10 evenly spaced
        line_plot(ax, positions, [values_of(g) for _, g in ordered], "InterLUDE", "tab:blue")
        ax.set_xticks(positions, [f"{k[0]:g}" for k, _ in ordered])
        ax.set(xlabel="lambda_DC (0 = no delta consistency)", ylabel="last test top-1 (%)",
               title="InterLUDE: weight of delta consistency (mean ± sd, dots = seeds)")
        finish(fig, ax, out / "lambda_dc.png")
    return table(["variant", "seeds", "last test top-1 (%)", "per seed", "final mask rate",
                  "failure signatures"], rows)


def openset_section(runs: list[Run], out: Path, plt: Any) -> str:
    groups = group(runs, openset_key)
    methods = sorted({k[0] for k in groups})
    ratios = sorted({k[1] for k in groups})
    rows = [[m, *[cell(values_of(groups.get((m, r), []))) for r in ratios],
             signature_cell([run for r in ratios for run in groups.get((m, r), [])],
                            [groups[(m, r)] for r in ratios if (m, r) in groups])] for m in methods]
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7.2, 4.8))
        colors = ["tab:gray", "tab:green", "tab:blue", "tab:orange", "tab:red"]
        offset = 0.008
        for i, m in enumerate(methods):
            shift = (i - (len(methods) - 1) / 2) * offset  # error bars side by side, not on top
            xs = [r + shift for r in ratios if (m, r) in groups]
            line_plot(ax, xs, [values_of(groups[(m, r)]) for r in ratios if (m, r) in groups], m,
                      colors[i % len(colors)])
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.set(xlabel="outlier ratio of the unlabeled pool (classes 6-9; labeled/test: 0-5)",
               ylabel="last test top-1 (%)", title="Open-set unlabeled data (mean ± sd over seeds)")
        finish(fig, ax, out / "openset.png")
    return table(["method", *[f"outliers {r:g}" for r in ratios], "failure signatures"], rows)


def domain_section(runs: list[Run], out: Path, plt: Any) -> str:
    groups = group(runs, domain_key)
    # per labeled domain: in-domain, then no target data, then target data unlabeled
    scenarios = sorted({k[0] for k in groups}, key=scenario_order)
    algorithms = [a for a in ("supervised", "fixmatch", "interlude") if any(k[1] == a for k in groups)]
    algorithms += sorted({k[1] for k in groups} - set(algorithms))
    rows = [[s, *[cell(values_of(groups.get((s, a), []))) for a in algorithms],
             signature_cell([run for a in algorithms for run in groups.get((s, a), [])],
                            [groups[(s, a)] for a in algorithms if (s, a) in groups])]
            for s in scenarios]
    if plt is not None:
        fig, ax = plt.subplots(figsize=(10.5, 4.8))
        width = 0.8 / max(len(algorithms), 1)
        colors = ["tab:gray", "tab:green", "tab:blue", "tab:orange"]
        for j, a in enumerate(algorithms):
            for i, s in enumerate(scenarios):
                values = values_of(groups.get((s, a), []))
                if not values:
                    continue
                x = i + (j - (len(algorithms) - 1) / 2) * width
                mean, sd = spread(values)
                ax.bar(x, mean, width * 0.9, color=colors[j % len(colors)], label=a if i == 0 else None,
                       yerr=None if math.isnan(sd) else sd, capsize=3)
                ax.plot([x] * len(values), values, "o", color="black", markersize=3, fillstyle="none")
                ax.text(x, mean + (0 if math.isnan(sd) else sd) + 1, f"{mean:.0f}", ha="center",
                        fontsize="x-small")
        ax.set_xticks(range(len(scenarios)), [s.replace(", test", "\ntest") for s in scenarios],
                      fontsize="small")
        ax.set(ylabel="last test top-1 (%)", ylim=(0, 118),
               title="Domain shift between digits (8x8 scans) and MNIST (mean ± sd, dots = seeds)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small", loc="upper center", ncol=len(algorithms))
        fig.tight_layout()
        fig.savefig(out / "domain_shift.png", dpi=110)
    return table(["scenario", *algorithms, "failure signatures"], rows)


def line_plot(ax: Any, xs: list[float], values: list[list[float]], label: str, color: str) -> None:
    stats = [spread(v) for v in values]
    means = [m for m, _ in stats]
    sds = [0.0 if math.isnan(s) else s for _, s in stats]
    ax.errorbar(xs, means, yerr=sds, marker="o", capsize=4, color=color, label=label)
    for x, v in zip(xs, values, strict=True):
        ax.plot([x] * len(v), v, "o", color=color, markersize=3, fillstyle="none", alpha=0.7)


def finish(fig: Any, ax: Any, path: Path) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


SECTIONS = {
    "fusion_strength": fusion_section,
    "lambda_dc": lambda_dc_section,
    "openset": openset_section,
    "domain_shift": domain_section,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the sweeps' --out folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables and plots")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    args.out.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, section in SECTIONS.items():
        folder = args.root / name
        if not folder.is_dir():
            continue
        runs = load_runs([folder])
        if runs:
            parts.append(f"### {name} ({len(runs)} runs)\n\n{section(runs, args.out, plt)}\n")
    text = "\n".join(parts) or "no sweep found\n"
    (args.out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
