"""Supervised vs FixMatch vs InterLUDE on the embedded digits data, several seeds.

    python benchmarks/digits.py --seeds 0 1 2 [--config configs/digits.yaml] [key=value ...]

Every run uses the shipped config (4 labels per class, data_seed fixed) and differs only in the
algorithm and the training seed. Prints a Markdown table (test top-1 of the EMA model at the last
step, mean +- std over seeds) and the wall-clock time of each run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from interlude.config import load_config
from interlude.train import run

ALGORITHMS = ("supervised", "fixmatch", "interlude")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run")
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--out-dir", default="runs/bench-digits")
    args, extra = parser.parse_known_args()
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides += extra  # key=value may also follow the options

    results: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    for algorithm in args.algorithms:
        for seed in args.seeds:
            cfg = load_config(args.config, [
                *args.overrides, f"algorithm.name={algorithm}", f"train.seed={seed}",
                f"train.out_dir={args.out_dir}", "train.progress=false",
            ])
            started = time.perf_counter()
            run_dir = run(cfg, overwrite=True).run_dir
            elapsed = time.perf_counter() - started
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
            accuracy = summary["last"][f"test/{summary['primary_model']}/top1"]
            results.setdefault(algorithm, []).append(accuracy)
            times.setdefault(algorithm, []).append(elapsed)
            print(f"{algorithm} seed {seed}: top1 {accuracy:.4f} in {elapsed:.0f} s", flush=True)

    print(f"\n| algorithm | test top-1 per seed ({', '.join(map(str, args.seeds))}) "
          "| mean +- std | s per run |")
    print("|---|---|---|---|")
    for algorithm, values in results.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = ", ".join(f"{100 * v:.1f}" for v in values)
        print(f"| {algorithm} | {per_seed} | {100 * statistics.mean(values):.1f} +- "
              f"{100 * std:.1f} | {statistics.mean(times[algorithm]):.0f} |")


if __name__ == "__main__":
    main()
