"""Sweeps: many runs of one base config (a grid of values, or named variants) x training seeds.

Each run gets its own directory ``<out>/<sweep>/<variant>/seed<k>``. A sweep is resumable: runs
with a ``summary.json`` are skipped, runs with a checkpoint are resumed, the rest start fresh. Runs
go one after another in this process, or ``processes`` at a time as ``interlude train``
subprocesses (each with its log file beside its run directory).

A sweep file (``configs/sweeps/*.yaml``)::

    name: ablation
    base: ../mnist5k.yaml          # relative to the sweep file
    seeds: [0, 1, 2]
    overrides: {train.threads: 1}  # applied to every run (optional)
    runs:                          # named variants (optional)
      - {name: fixmatch, overrides: {algorithm.name: fixmatch}}
    grid:                          # cartesian product (optional; combined with each run)
      algorithm.lambda_dc: [0.1, 1, 10]
"""

from __future__ import annotations

import itertools
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interlude.config import load_config, parse_override
from interlude.errors import ConfigError, InterludeError

log = logging.getLogger("interlude")


@dataclass
class Variant:
    name: str
    overrides: list[str]


@dataclass
class SweepSpec:
    name: str
    base: Path
    seeds: list[int]
    variants: list[Variant]
    overrides: list[str] = field(default_factory=list)


@dataclass
class PlannedRun:
    variant: str
    seed: int
    overrides: list[str]
    run_dir: Path


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def _as_overrides(mapping: dict[str, Any] | list[str] | None) -> list[str]:
    if mapping is None:
        return []
    if isinstance(mapping, list):
        return [str(item) for item in mapping]
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
            if isinstance(value, (list, dict)) else f"{key}={value}"
            for key, value in mapping.items()]


def expand_grid(grid: dict[str, list[Any]]) -> list[Variant]:
    """One variant per combination of values, named ``key=value,...`` (last key component)."""
    if not grid:
        return [Variant("base", [])]
    keys = list(grid)
    variants = []
    for values in itertools.product(*(grid[k] for k in keys)):
        overrides = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values, strict=True))
        variants.append(Variant(_safe(name), overrides))
    return variants


def combine(runs: list[Variant], grid: dict[str, list[Any]]) -> list[Variant]:
    """Every named run crossed with every grid combination."""
    cells = expand_grid(grid)
    if not runs:
        return cells
    if not grid:
        return runs
    return [Variant(f"{r.name}/{c.name}", r.overrides + c.overrides) for r in runs for c in cells]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["key=v1,v2", ...]`` -> ``{key: [v1, v2]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, value = parse_override(item)
        raw = item.partition("=")[2]
        grid[key] = [v.strip() for v in raw.split(",") if v.strip()] if "," in raw else [str(value)]
    return grid


def load_sweep_file(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or "base" not in spec:
        raise ConfigError(f"{path} is not a sweep file: it needs a 'base:' config path")
    unknown = set(spec) - {"name", "base", "seeds", "runs", "grid", "overrides"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}; valid: name, base, "
                          "seeds, runs, grid, overrides")
    runs = [Variant(_safe(str(r["name"])), _as_overrides(r.get("overrides")))
            for r in spec.get("runs") or []]
    return SweepSpec(
        name=str(spec.get("name", path.stem)),
        base=(path.parent / spec["base"]).resolve(),
        seeds=[int(s) for s in spec.get("seeds", [0])],
        variants=combine(runs, spec.get("grid") or {}),
        overrides=_as_overrides(spec.get("overrides")),
    )


def is_sweep_file(path: str | Path) -> bool:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(spec, dict) and "base" in spec


def plan_runs(spec: SweepSpec, out_root: Path, extra: list[str] | None = None) -> list[PlannedRun]:
    """Expand variants x seeds into runs, validating every config before anything trains."""
    planned = []
    for variant in spec.variants:
        for seed in spec.seeds:
            run_dir = out_root / spec.name / variant.name / f"seed{seed}"
            overrides = [
                *spec.overrides, *variant.overrides, *(extra or []), f"train.seed={seed}",
                f"train.out_dir={out_root / spec.name}", f"train.run_name={variant.name}/seed{seed}",
            ]
            load_config(spec.base, overrides)  # fail fast on a bad key in any run
            planned.append(PlannedRun(variant.name, seed, overrides, run_dir))
    return planned


def run_sweep(
    spec: SweepSpec, out_root: str | Path = "runs/sweeps", processes: int = 1,
    extra_overrides: list[str] | None = None,
) -> list[Path]:
    """Train every planned run that has not finished; returns all run directories."""
    planned = plan_runs(spec, Path(out_root), extra_overrides)
    todo = [r for r in planned if not (r.run_dir / "summary.json").exists()]
    log.info("sweep %s: %d runs, %d done, %d to train", spec.name, len(planned),
             len(planned) - len(todo), len(todo))
    if processes <= 1:
        for item in todo:
            _train_in_process(spec.base, item)
    else:
        _train_in_subprocesses(spec.base, todo, processes)
    return [r.run_dir for r in planned]


def _train_in_process(base: Path, item: PlannedRun) -> None:
    from interlude.train import run

    resume = (item.run_dir / "checkpoints" / "last.pt").exists()
    log.info("run %s seed %d%s", item.variant, item.seed, " (resuming)" if resume else "")
    run(load_config(base, item.overrides), resume=resume, overwrite=True)


def _train_in_subprocesses(base: Path, todo: list[PlannedRun], processes: int) -> None:
    pending, running, failed = list(todo), [], []
    while pending or running:
        while pending and len(running) < processes:
            item = pending.pop(0)
            item.run_dir.parent.mkdir(parents=True, exist_ok=True)
            log_path = item.run_dir.parent / f"seed{item.seed}.log"
            command = [sys.executable, "-m", "interlude", "train", str(base), *item.overrides,
                       "train.progress=false", "--resume"]
            with open(log_path, "w") as handle:
                process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
            running.append((item, process, log_path))
        time.sleep(0.5)
        for entry in list(running):
            item, process, log_path = entry
            if process.poll() is not None:
                running.remove(entry)
                if process.returncode != 0:
                    failed.append(f"{item.variant} seed {item.seed} (see {log_path})")
    if failed:
        raise InterludeError(f"{len(failed)} sweep run(s) failed: {'; '.join(failed)}")


def run_sweep_cli(args) -> list[Path]:
    """``interlude sweep CONFIG|SWEEP_FILE [key=value ...] [--grid k=v1,v2] [--seeds 0,1,2]``."""
    grid = parse_grid(args.grid)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    if is_sweep_file(args.config):
        spec = load_sweep_file(args.config)
        if grid:
            spec.variants = combine(spec.variants, grid)
        if seeds is not None:
            spec.seeds = seeds
    else:
        spec = SweepSpec(Path(args.config).stem, Path(args.config), seeds or [0], expand_grid(grid))
    return run_sweep(spec, args.out, args.processes, args.overrides)
