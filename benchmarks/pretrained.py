"""A tiny timm backbone on mnist5k (4 labels per class): supervised vs InterLUDE, from random init vs
from weights pretrained here on the other dataset (digits).

    python benchmarks/pretrained.py [--seeds 0 1 2] [--steps 500] [--arch timm/resnet10t] [key=value ...]

Stage 1 trains the backbone supervised on scikit-learn's digits (100 labels per class, no
unlabeled loss) and exports its EMA weights as safetensors: the stand-in for a checkpoint from the
hub, made offline. Stage 2 fine-tunes on ``configs/mnist5k.yaml`` with ``model.pretrained=<that
file>`` (timm's loader drops its classifier) or from random init. Every run is fed the same inputs
(16 px, bilinear, mean = std = 0.5, one channel), so the runs of a seed differ only in the initial
weights and the algorithm. Prints a Markdown table of test top-1 (EMA model, last step) and the
wall-clock time of each run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from interlude.config import load_config
from interlude.export import export_run
from interlude.train import run

INPUTS = ["data.resolution=16", "data.interpolation=bilinear", "data.mean=[0.5]", "data.std=[0.5]"]


def top1(run_dir: Path) -> float:
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["last"][f"test/{summary['primary_model']}/top1"]


def pretrain(arch: str, steps: int, out_dir: str, overrides: list[str]) -> tuple[Path, float]:
    cfg = load_config(None, [
        *INPUTS, "data.name=digits", "data.labels_per_class=100", f"model.arch={arch}",
        "algorithm.name=supervised", "train.mu=0", "train.batch_size=32", "train.ema_decay=0.99",
        f"train.steps={steps}",
        f"train.eval_interval={steps}", "train.log_interval=50", f"train.out_dir={out_dir}",
        "train.run_name=pretrain-digits", "train.progress=false", *overrides,
    ])
    run_dir = run(cfg, overwrite=True).run_dir
    weights = export_run(run_dir, "safetensors")
    return weights, top1(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run")
    parser.add_argument("--arch", default="timm/resnet10t")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=500, help="fine-tuning steps")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--out-dir", default="runs/bench-pretrained")
    args = parser.parse_args()

    started = time.perf_counter()
    weights, digits_top1 = pretrain(args.arch, args.pretrain_steps, args.out_dir, args.overrides)
    print(f"pretrained on digits: test top-1 {digits_top1:.4f} in "
          f"{time.perf_counter() - started:.0f} s -> {weights}", flush=True)

    results: dict[tuple[str, str], list[float]] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for init, pretrained in (("random init", "false"), ("pretrained on digits", str(weights))):
        for algorithm in ("supervised", "interlude"):
            for seed in args.seeds:
                name = f"{algorithm}-{'pre' if pretrained != 'false' else 'rand'}-s{seed}"
                cfg = load_config("configs/mnist5k.yaml", [
                    *INPUTS, f"model.arch={args.arch}", f"model.pretrained={pretrained}",
                    f"algorithm.name={algorithm}", f"train.seed={seed}",
                    f"train.steps={args.steps}", f"train.eval_interval={args.steps}",
                    f"train.checkpoint_interval={args.steps}", f"train.out_dir={args.out_dir}",
                    f"train.run_name={name}", "train.progress=false", *args.overrides,
                ])
                started = time.perf_counter()
                accuracy = top1(run(cfg, overwrite=True).run_dir)
                elapsed = time.perf_counter() - started
                results.setdefault((init, algorithm), []).append(accuracy)
                times.setdefault((init, algorithm), []).append(elapsed)
                print(f"{init}, {algorithm}, seed {seed}: top1 {accuracy:.4f} in {elapsed:.0f} s",
                      flush=True)

    print(f"\n| initial weights | algorithm | test top-1 per seed ({', '.join(map(str, args.seeds))})"
          " | mean +- std | s per run |")
    print("|---|---|---|---|---|")
    for (init, algorithm), values in results.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = ", ".join(f"{100 * v:.1f}" for v in values)
        print(f"| {init} | {algorithm} | {per_seed} | {100 * statistics.mean(values):.1f} +- "
              f"{100 * std:.1f} | {statistics.mean(times[init, algorithm]):.0f} |")


if __name__ == "__main__":
    main()
