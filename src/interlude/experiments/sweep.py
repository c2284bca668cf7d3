"""Sweeps: many runs of one base config (a grid of values, or named variants) x training seeds.

Each run gets its own directory ``<out>/<sweep>/<variant>/seed<k>`` (``<out>`` defaults to the
base config's ``train.out_dir``). A sweep is resumable: runs with a ``summary.json`` are skipped,
runs with a checkpoint are resumed, the rest start fresh; a run directory that holds a run of a
*different* config is an error rather than silently counted as done. Runs go one after another in
this process, or ``processes`` at a time as ``interlude train`` subprocesses (each with its log file
beside its run directory). ``train.seed`` is set per run; ``data.data_seed`` stays as configured
unless the grid names it.

Entry points: :func:`run_sweep` (a run config or a sweep file, plus a grid and seeds, as the CLI
``interlude sweep`` passes them) and :func:`run_sweep_file`.

A sweep file (``configs/sweeps/*.yaml``)::

    name: ablation
    base: ../mnist5k.yaml          # relative to the sweep file
    seeds: [0, 1, 2]
    overrides: {train.threads: 1}  # applied to every run (optional)
    runs:                          # named variants (optional)
      - {name: fixmatch, overrides: {algorithm.name: fixmatch}}
    grid:                          # cartesian product (optional; combined with each run)
      algorithm.lambda_dc: [0.1, 1, 10]
    slurm: {partition: gpu, time: "2-00:00:00", gpus: 1, cpus: 8, mem_gb: 32}  # (optional)

With ``--launcher slurm`` the runs left are submitted as one Slurm job array instead
(``experiments/slurm.py``); ``--status`` and ``--cancel`` act on the submitted tasks.
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

from interlude.config import Config, diff, load_config, merged_overrides, parse_override, read_yaml
from interlude.errors import ConfigError, InterludeError, shown
from interlude.experiments.slurm import SlurmOptions

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
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


@dataclass
class PlannedRun:
    variant: str
    seed: int
    overrides: list[str]
    run_dir: Path
    config: Config | None = None


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
    """Read a sweep file, validated like any user input (one-line ConfigError per problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict) or "base" not in spec:
        raise ConfigError(f"{path} is not a sweep file: it needs a 'base:' config path")
    unknown = set(spec) - {"name", "base", "seeds", "runs", "grid", "overrides", "slurm"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}; valid: name, base, "
                          "seeds, runs, grid, overrides, slurm")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    ):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers >= 0, "
                          f"got {shown(seeds)}")
    runs_spec = spec.get("runs") or []
    if not isinstance(runs_spec, list) or not all(
        isinstance(r, dict) and "name" in r and set(r) <= {"name", "overrides"} for r in runs_spec
    ):
        raise ConfigError(f"{path}: 'runs' must be a list of {{name: ..., overrides: {{...}}}}")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map keys to non-empty lists of values")
    for item in [spec.get("overrides"), *(r.get("overrides") for r in runs_spec)]:
        if item is not None and not isinstance(item, (dict, list)):
            raise ConfigError(f"{path}: 'overrides' must be a mapping of key: value")
    runs = [Variant(_safe(str(r["name"])), _as_overrides(r.get("overrides"))) for r in runs_spec]
    return SweepSpec(
        name=_safe(str(spec.get("name", path.stem))),
        base=(path.parent / str(spec["base"])).resolve(),
        seeds=list(seeds),
        variants=combine(runs, grid),
        overrides=_as_overrides(spec.get("overrides")),
        slurm=SlurmOptions.from_mapping(spec.get("slurm"), f"{path}: slurm"),
    )


def is_sweep_file(path: str | Path) -> bool:
    try:
        spec = read_yaml(path)
    except (OSError, ConfigError):
        return False
    return isinstance(spec, dict) and "base" in spec


def plan_runs(
    spec: SweepSpec, out_root: str | Path | None = None, extra: list[str] | None = None
) -> list[PlannedRun]:
    """Expand variants x seeds into runs, validating every config before anything trains."""
    root = Path(out_root) if out_root is not None else default_out_root(spec, extra)
    planned: list[PlannedRun] = []
    for variant in spec.variants:
        for seed in spec.seeds:
            run_dir = root / spec.name / variant.name / f"seed{seed}"
            overrides = merged_overrides([  # a variant's value replaces the sweep-wide one
                *spec.overrides, *variant.overrides, *(extra or []), f"train.seed={seed}",
                f"train.out_dir={root / spec.name}", f"train.run_name={variant.name}/seed{seed}",
            ])
            config = load_config(spec.base, overrides)  # fail fast on a bad key in any run
            same = next((r for r in planned if r.run_dir == run_dir), None)
            if same is not None:
                if same.config is not None and diff(same.config, config):
                    raise ConfigError(
                        f"two variants of the sweep are both named '{variant.name}' but differ "
                        f"({'; '.join(diff(same.config, config)[:3])}); give each its own name"
                    )
                continue  # the same value or seed given twice: one run
            planned.append(PlannedRun(variant.name, seed, overrides, run_dir, config))
    return planned


def default_out_root(spec: SweepSpec, extra: list[str] | None = None) -> Path:
    """The base config's ``train.out_dir`` (after the sweep's and the caller's overrides)."""
    return Path(load_config(spec.base, [*spec.overrides, *(extra or [])]).train.out_dir)


def check_existing(run: PlannedRun) -> None:
    """Refuse a run directory that holds a run of another config (e.g. an earlier sweep with other
    overrides but the same variant names), instead of skipping or resuming it as if it were ours.

    Only keys known to both are compared, so a config field added by a newer version of the
    package does not invalidate finished runs; bookkeeping keys (``config.BOOKKEEPING_KEYS``:
    paths, logging) and rounding keys (``config.ROUNDING_KEYS``: device, threads) may differ.
    """
    saved_path = run.run_dir / "config.yaml"
    if run.config is None or not saved_path.is_file():
        return
    saved = read_yaml(saved_path) or {}
    if not isinstance(saved, dict):
        raise ConfigError(f"{saved_path} does not hold a config; remove that run or give this "
                          "sweep another output folder (--out)")
    differing = diff(saved, run.config)
    if differing:
        shown = ", ".join(differing[:4])
        raise ConfigError(
            f"{run.run_dir} already holds a run with a different config ({shown}); give this "
            "sweep another output folder (--out) or remove that run"
        )


def run_spec(
    spec: SweepSpec, out_root: str | Path | None = None, processes: int = 1,
    extra_overrides: list[str] | None = None,
) -> list[Path]:
    """Train every planned run of ``spec`` that has not finished; returns all run directories."""
    planned = plan_runs(spec, out_root, extra_overrides)
    for item in planned:
        check_existing(item)
    todo = [r for r in planned if not (r.run_dir / "summary.json").exists()]
    log.info("sweep %s: %d runs, %d done, %d to train", spec.name, len(planned),
             len(planned) - len(todo), len(todo))
    if processes <= 1:
        for item in todo:
            _train_in_process(spec.base, item)
    else:
        _train_in_subprocesses(spec.base, todo, processes)
    return [r.run_dir for r in planned]


def run_sweep(
    config_path: str | Path,
    grid: dict[str, list[Any]] | None = None,
    seeds: list[int] | None = None,
    processes: int = 1,
    overrides: list[str] | None = None,
    out_root: str | Path | None = None,
) -> list[Path]:
    """Train ``config_path`` for every grid combination x seed; returns every run directory.

    ``config_path`` is a run config (one variant per grid combination, seeds default to [0]) or a
    sweep file (its variants, each crossed with ``grid``; ``seeds`` replaces the file's seeds when
    given). ``overrides`` (``key=value``) apply to every run; runs go to
    ``<out_root or train.out_dir>/<sweep name>/<variant>/seed<k>``.
    """
    spec = sweep_spec(config_path, grid or {}, seeds)
    return run_spec(spec, out_root, processes, overrides)


def run_sweep_file(
    path: str | Path,
    processes: int = 1,
    extra_overrides: list[str] | None = None,
    out_root: str | Path | None = None,
) -> list[Path]:
    """Run a sweep file (``configs/sweeps/*.yaml``) as written; returns every run directory."""
    return run_spec(load_sweep_file(path), out_root, processes, extra_overrides)


def sweep_spec(
    config_path: str | Path, grid: dict[str, list[Any]], seeds: list[int] | None = None
) -> SweepSpec:
    """The sweep described by a sweep file or a run config, crossed with ``grid`` and ``seeds``."""
    if is_sweep_file(config_path):
        spec = load_sweep_file(config_path)
        if grid:
            spec.variants = combine(spec.variants, grid)
    else:
        if not Path(config_path).is_file():
            raise ConfigError(f"config file not found: {config_path}")
        spec = SweepSpec(Path(config_path).stem, Path(config_path), [0], expand_grid(grid))
    if seeds is not None:
        if not seeds:
            raise ConfigError("a sweep needs at least one seed")
        spec.seeds = list(seeds)
    return spec


def _train_in_process(base: Path, item: PlannedRun) -> None:
    from interlude import train

    resume = (item.run_dir / "checkpoints" / "last.pt").exists()
    log.info("run %s seed %d%s", item.variant, item.seed, " (resuming)" if resume else "")
    cfg = item.config if item.config is not None else load_config(base, item.overrides)
    train.run(cfg, resume=resume, overwrite=True)


def _train_in_subprocesses(base: Path, todo: list[PlannedRun], processes: int) -> None:
    pending, running, failed = list(todo), [], []
    while pending or running:
        while pending and len(running) < processes:
            item = pending.pop(0)
            item.run_dir.parent.mkdir(parents=True, exist_ok=True)
            log_path = item.run_dir.parent / f"seed{item.seed}.log"
            command = [sys.executable, "-m", "interlude", "train", str(base),
                       *merged_overrides([*item.overrides, "train.progress=false"]), "--resume"]
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


def run_sweep_cli(args: Any) -> str:
    """``interlude sweep CONFIG|SWEEP_FILE [key=value ...] [--grid k=v1,v2] [--seeds 0,1,2]
    [--launcher local|slurm ...] [--status | --cancel]``; returns what to print."""
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds {shown(args.seeds)}: expected integers separated by commas, "
                              "e.g. --seeds 0,1,2") from None
        if any(s < 0 for s in seeds):
            raise ConfigError(f"--seeds {shown(args.seeds)}: seeds must be >= 0")
    if args.processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {args.processes}")
    if args.status or args.cancel or args.launcher == "slurm":
        return _slurm_cli(args, sweep_spec(args.config, parse_grid(args.grid), seeds))
    run_dirs = run_sweep(args.config, parse_grid(args.grid), seeds, args.processes, args.overrides,
                         args.out)
    return "\n".join(str(d) for d in run_dirs)


def _slurm_cli(args: Any, spec: SweepSpec) -> str:
    from interlude.experiments import slurm

    planned = plan_runs(spec, args.out, args.overrides)
    root = Path(args.out) / spec.name if args.out is not None else default_out_root(
        spec, args.overrides) / spec.name
    run_dirs = [r.run_dir for r in planned]
    if args.status:
        return slurm.format_status(slurm.status(root, run_dirs))
    if args.cancel:
        cancelled = slurm.cancel(root, run_dirs)
        return (f"cancelled {len(cancelled)} Slurm task(s): {' '.join(cancelled)}" if cancelled
                else "nothing to cancel: no task of this sweep is queued or running")
    options = spec.slurm.updated(
        partition=args.partition, account=args.account, qos=args.qos, time=args.time,
        gpus=args.gpus_per_run, cpus=args.cpus_per_run, mem_gb=args.mem_per_run,
        max_running=args.max_running, sbatch=args.sbatch_arg,
    )
    options.check("command line")
    for item in planned:
        check_existing(item)
    done = slurm.submit(root, spec.base, planned, options, spec.name)
    lines = [f"sweep {spec.name}: {len(planned)} runs, {len(done.finished)} finished, "
             f"{len(done.active)} already queued or running, {len(done.job_ids)} submitted"]
    if done.job_ids:
        arrays = sorted({job_id.split("_")[0] for job_id in done.job_ids.values()})
        lines.append(f"Slurm job array {', '.join(arrays)}; follow it with: interlude sweep "
                     f"{args.config} ... --status (runs in {root})")
    return "\n".join(lines)
