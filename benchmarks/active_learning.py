"""What to label next, measured: each suggestion strategy vs random picks, a simulated labeler.

    python benchmarks/active_learning.py run digits --seeds 0 1 2
    python benchmarks/active_learning.py run mnist5k --seeds 0 --initial-steps 600 --round-steps 300
    python benchmarks/active_learning.py plot      # table + PNG from the JSON files

The dataset's training pool is the unlabeled pool and its test split the yardstick; the true
labels stand in for a person. Per seed: 1 label per class drawn at random (the seed), an
``InterLUDEClassifier`` fitted on them (``--initial-steps``); then, per strategy, 3 rounds of
+10 labels chosen by ``clf.suggest`` (or at random), each round continuing from the previous
round's weights (``warm_start``, ``--round-steps`` steps), as ``suggest -> label -> train`` does.
The initial model is shared by every strategy of a seed, so the rounds differ only in what was
labeled. Test top-1 after every round is written to
``benchmarks/results/active_learning/<dataset>.json`` (or ``--out-name``) after each strategy (a
kill keeps what ran); ``plot`` merges the files of a dataset.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np

from interlude import InterLUDEClassifier
from interlude.config import section_options
from interlude.data import load_raw

STRATEGIES = ("random", "margin", "entropy", "coreset", "hybrid")
OUT = Path(__file__).parent / "results" / "active_learning"


def run_dataset(name: str, seeds: list[int], strategies: list[str], rounds: int, per_round: int,
                initial_steps: int, round_steps: int, width: int, out_name: str) -> None:
    raw = load_raw(section_options("data", name=name))
    X, y = raw.train.images.read(np.arange(len(raw.train))), raw.train.labels  # small sets
    X_test, y_test = raw.test.images.read(np.arange(len(raw.test))), raw.test.labels
    path = OUT / f"{out_name}.json"
    results = json.loads(path.read_text()) if path.is_file() else {"dataset": name, "runs": []}
    results["settings"] = {"rounds": rounds, "per_round": per_round, "initial_steps": initial_steps,
                           "round_steps": round_steps, "width": width, "pool": len(X),
                           "test": len(X_test)}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        labeled = np.array([rng.choice(np.flatnonzero(y == c)) for c in range(raw.num_classes)])
        start = time.perf_counter()
        base = InterLUDEClassifier(steps=initial_steps, width=width, random_state=seed,
                                   verbose=0, threads=1).fit(X, _masked(y, labeled))
        base_acc = float((base.predict(X_test) == y_test).mean())
        print(f"{name} seed {seed}: {len(labeled)} labels -> {base_acc:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        for strategy in strategies:
            results["runs"] = [r for r in results["runs"]
                               if (r["seed"], r["strategy"]) != (seed, strategy)]
            clf = copy.deepcopy(base).set_params(warm_start=True, steps=round_steps)
            chosen, accuracy, counts = labeled.copy(), [base_acc], [len(labeled)]
            pick_rng = np.random.default_rng(1000 + seed)
            start = time.perf_counter()
            for _ in range(rounds):
                pool = np.setdiff1d(np.arange(len(X)), chosen)
                if strategy == "random":
                    new = pick_rng.choice(pool, per_round, replace=False)
                else:
                    rows, _ = clf.suggest(X[pool], per_round, strategy, X_labeled=X[chosen])
                    new = pool[rows]
                chosen = np.concatenate([chosen, new])
                clf.fit(X, _masked(y, chosen))
                accuracy.append(float((clf.predict(X_test) == y_test).mean()))
                counts.append(len(chosen))
            results["runs"].append({"seed": seed, "strategy": strategy, "labels": counts,
                                    "accuracy": accuracy,
                                    "seconds": round(time.perf_counter() - start, 1)})
            print(f"  {strategy:8s} {' '.join(f'{a:.4f}' for a in accuracy)} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))


def _masked(y: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    masked = np.full(len(y), -1)
    masked[labeled] = y[labeled]
    return masked


def summarise() -> str:
    """The Markdown table of every JSON file (mean +- sd and range over seeds) and the plot."""
    lines = []
    found = _merged()
    for results in found:
        rounds = results["settings"]["rounds"]
        counts = results["runs"][0]["labels"]
        lines += [f"**{results['dataset']}** (pool {results['settings']['pool']}, test "
                  f"{results['settings']['test']}; test top-1 %, mean ± sd [min, max] over seeds)",
                  "", "| strategy | seeds | " + " | ".join(f"{c} labels" for c in counts) + " |",
                  "|---|---|" + "---|" * (rounds + 1)]
        for strategy in STRATEGIES:
            runs = [r for r in results["runs"] if r["strategy"] == strategy]
            if not runs:
                continue
            cells = []
            for k in range(rounds + 1):
                values = [100 * r["accuracy"][k] for r in runs]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.1f} ± {sd:.1f} "
                             f"[{min(values):.1f}, {max(values):.1f}]")
            lines.append(f"| {strategy} | {len(runs)} | " + " | ".join(cells) + " |")
        lines += ["", _paired(results), ""]
    _plot(found)
    return "\n".join(lines)


def _paired(results: dict) -> str:
    """Per seed, each strategy's last-round accuracy minus random's (the same initial model, so
    the difference is what was labeled, not the start)."""
    final = {(r["seed"], r["strategy"]): 100 * r["accuracy"][-1] for r in results["runs"]}
    seeds = sorted({seed for seed, _ in final})
    parts = []
    for strategy in STRATEGIES[1:]:
        diffs = [final[s, strategy] - final[s, "random"] for s in seeds
                 if (s, strategy) in final and (s, "random") in final]
        if diffs:
            parts.append(f"{strategy} {' / '.join(f'{d:+.1f}' for d in diffs)}")
    labels = results["runs"][0]["labels"][-1]
    return (f"Minus random at {labels} labels, per seed ({', '.join(map(str, seeds))}), points: "
            + "; ".join(parts))


def _merged() -> list[dict]:
    """One result per dataset: the runs of its JSON files (seeds run by separate processes)."""
    by_name: dict[str, dict] = {}
    for path in sorted(OUT.glob("*.json")):
        results = json.loads(path.read_text())
        merged = by_name.setdefault(results["dataset"], {**results, "runs": []})
        if merged["settings"] != results["settings"]:
            raise SystemExit(f"{path}: other settings than the other {results['dataset']} files")
        merged["runs"] += results["runs"]
    for results in by_name.values():
        results["runs"].sort(key=lambda r: (r["seed"], STRATEGIES.index(r["strategy"])))
    return list(by_name.values())


def _plot(found: list[dict]) -> None:
    """Top: accuracy per round (mean ± sd over seeds). Bottom: each strategy minus random on the
    same seed (same initial model), per seed (dots) and mean (line): the seed-to-seed spread of
    the start hides differences the paired view shows."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(found), 7.5), layout="constrained")
    axes = figure.subplots(2, len(found), squeeze=False)
    styles = {"random": ("black", "--"), "margin": ("tab:blue", "-"),
              "entropy": ("tab:orange", "-"), "coreset": ("tab:green", "-"),
              "hybrid": ("tab:red", "-")}
    for column, results in enumerate(found):
        top, bottom = axes[0, column], axes[1, column]
        random_acc = {r["seed"]: np.array(r["accuracy"]) for r in results["runs"]
                      if r["strategy"] == "random"}
        for strategy in STRATEGIES:
            runs = [r for r in results["runs"] if r["strategy"] == strategy]
            if not runs:
                continue
            acc = 100 * np.array([r["accuracy"] for r in runs])
            shift = 0.4 * (STRATEGIES.index(strategy) - 2)
            x = np.array(runs[0]["labels"]) + shift
            color, line = styles[strategy]
            top.errorbar(x, acc.mean(0), yerr=acc.std(0, ddof=1) if len(runs) > 1 else None,
                         color=color, linestyle=line, marker="o", capsize=3,
                         label=f"{strategy} (n={len(runs)})")
            paired = [100 * (np.array(r["accuracy"]) - random_acc[r["seed"]]) for r in runs
                      if r["seed"] in random_acc]
            if strategy == "random" or not paired:
                continue
            paired_arr = np.array(paired)
            bottom.plot(x, paired_arr.mean(0), color=color, linestyle=line, marker="o",
                        label=f"{strategy} (n={len(paired)})")
            for diffs in paired_arr:
                bottom.scatter(x, diffs, color=color, s=12, alpha=0.5)
        top.set_title(f"{results['dataset']}: +{results['settings']['per_round']} labels per round")
        top.set_ylabel("test top-1 (%), mean ± sd over seeds")
        bottom.axhline(0, color="black", linestyle="--", linewidth=1)
        bottom.set_title(f"{results['dataset']}: minus random on the same seed")
        bottom.set_ylabel("test top-1 difference (points); dots = seeds")
        for ax in (top, bottom):
            ax.set_xlabel("labeled images")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    figure.savefig(OUT / "active_learning.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run")
    go.add_argument("dataset", choices=["digits", "mnist5k"])
    go.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    go.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    go.add_argument("--rounds", type=int, default=3)
    go.add_argument("--per-round", type=int, default=10)
    go.add_argument("--initial-steps", type=int, default=600)
    go.add_argument("--round-steps", type=int, default=300)
    go.add_argument("--width", type=int, default=16)
    go.add_argument("--out-name", default=None,
                    help="JSON file name (default: the dataset); seeds run in parallel processes "
                    "write separate files, merged by `plot`")
    sub.add_parser("plot")
    args = parser.parse_args()
    if args.command == "run":
        run_dataset(args.dataset, args.seeds, args.strategies, args.rounds, args.per_round,
                    args.initial_steps, args.round_steps, args.width,
                    args.out_name or args.dataset)
    print(summarise())


if __name__ == "__main__":
    main()
