#!/usr/bin/env bash
# Sweeps (1)-(3) on mnist5k (4 labels per class, 3 seeds) and their reports, as in RESULTS.md.
# About 25 minutes on a 2-core CPU. Re-running skips finished runs and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/.."
for sweep in ablation lambda_dc layout; do
  interlude sweep "configs/sweeps/$sweep.yaml" --processes 2 --out runs/sweeps
done
variants="supervised fixmatch freematch interlude interlude_plus interlude-no-fusion interlude-no-dc"
interlude report $(for v in $variants; do echo runs/sweeps/ablation/$v; done) \
  --out benchmarks/results/ablation
interlude report runs/sweeps/lambda_dc --out benchmarks/results/lambda_dc
interlude report runs/sweeps/layout --out benchmarks/results/layout
