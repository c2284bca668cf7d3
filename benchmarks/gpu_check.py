"""Proof on a GPU, in one command; writes Markdown for benchmarks/RESULTS.md as it goes.

    python benchmarks/gpu_check.py --out gpu_check.md                  # on a CUDA machine
    python benchmarks/gpu_check.py --out gpu_check.md --budget-s 480   # ... kept within 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick                # end to end on a CPU, tiny

Sections, in order (``--sections`` picks some; compile-heavy work comes last):

1. ``env``: GPU, driver, torch, CUDA, cuDNN, triton, timm; whether ``torch.compile`` can build
   here (a C compiler and ``Python.h``).
2. ``tests``: the CUDA-only tests (``pytest -m cuda``) and ``tests/test_hot_path.py``, which on
   CUDA runs whole training steps under ``torch.cuda.set_sync_debug_mode("error")``.
3. ``step``: one training step at the paper batch (WRN-28-2, 64 labeled + 7 x 64 unlabeled,
   weak + strong views, 32 x 32) for every algorithm in fp32, bf16 and bf16 + channels_last:
   it/s, images/s, peak memory, the input pipeline's own rate beside it, and the hours of a
   2^20-step run. Trainers come from ``interlude.train.build_trainer``, the function a real run
   uses (fusion at the algorithm's strength).
4. ``vit``: InterLUDE with timm's ViT-B/16 at 224 px at the paper's ViT batch (8 + 7 x 8), with
   the STL-10 configs' optimiser, fp32 and bf16; the hours of those configs.
5. ``pipeline``: the input pipeline alone (device augmentation; DataLoader workers).
6. ``ops``: aten operators dispatched per step (launch overhead).
7. ``profile``: ``torch.profiler`` with CUDA activities over InterLUDE bf16 steps: GPU busy time
   against wall time, kernels per step, the kernels that take the time; what binds.
8. ``train``: digits (scikit-learn, embedded) trained on the device and on the CPU, 3 seeds
   each, in parallel processes; the means must agree within a tolerance derived from the
   measured seed spread.
9. ``ddp``: the library's own DDP: ``torchrun`` with NCCL over every GPU present (one included)
   through ``interlude train``, stopped half-way, then resumed in one plain process.
10. ``compile``: ``torch.compile`` of the step (default mode, then ``reduce-overhead``: CUDA
    graphs) for InterLUDE and FixMatch in bf16 + channels_last.

Each section runs inside its own time budget (and the whole script inside ``--budget-s``); a
section that fails or runs out of time is recorded as such and the next one runs. The Markdown is
rewritten (atomically) after every section, so a run cut short keeps what it measured. The exit
status is 1 when a check failed (a test, the CPU/device agreement, DDP), else 0.

``--device cpu --quick`` runs every section at tiny sizes (small CNN, 2 x 2 batch, a few steps,
``aot_eager`` instead of inductor, gloo instead of NCCL): it shows the script works
(``tests/test_gpu_check.py`` runs it), not how fast anything is.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from speed import make_trainer  # noqa: E402

from interlude.data.synthetic import synthetic_data  # noqa: E402
from interlude.train.loop import Trainer  # noqa: E402
from interlude.train.opcount import step_op_counts  # noqa: E402

ALGORITHMS = ("fixmatch", "flexmatch", "freematch", "interlude", "interlude_plus")
CONFIGS = {  # name -> train.* overrides
    "fp32": ["train.precision=fp32", "train.channels_last=false"],
    "bf16": ["train.precision=bf16", "train.channels_last=false"],
    "bf16 + channels_last": ["train.precision=bf16", "train.channels_last=true"],
    "bf16 + channels_last + cudnn.benchmark": ["train.precision=bf16", "train.channels_last=true",
                                               "train.cudnn_benchmark=true"],
}
COMPILED = ["train.precision=bf16", "train.channels_last=true", "train.compile=true"]
COMPILE_MODES = ("reduce-overhead", "default")  # the faster one first
GOAL_IT_S, AIM_IT_S = 75.0, 150.0  # InterLUDE, bf16, paper batch
RUN_STEPS = 2**20
ANCHORS = ("kekmodel's FixMatch, A100 + AMP: about 6 h a run (~48 it/s); "
           "USB: 8-10 days on an RTX 6000")
SECTIONS = ("env", "tests", "step", "vit", "pipeline", "ops", "profile", "train", "ddp", "compile")
BUDGET_S = {  # each section's own limit on a GPU (the whole run also keeps --budget-s)
    "env": 20, "tests": 150, "step": 100, "vit": 45, "pipeline": 25, "ops": 30, "profile": 25,
    "train": 110, "ddp": 70, "compile": 240,
}
VIT = {"arch": "timm/vit_base_patch16_224", "size": 224, "batch": (8, 7)}  # configs/stl10_*_vit
VIT_QUICK = {"arch": "timm/vit_tiny_patch16_224", "size": 32, "batch": (2, 2)}
VIT_STEPS = 204_800  # configs/stl10_40_vit.yaml
TRAIN_SEEDS = (0, 1, 2)


class SectionTimeout(Exception):
    """A section ran past its time budget."""


@dataclass
class Report:
    out: Path | None
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        print(*lines, sep="\n", flush=True)

    def fail(self, what: str) -> None:
        self.failures.append(what)

    def write(self) -> None:
        """The Markdown so far, replaced atomically (a run cut short keeps every section done)."""
        if self.out is None:
            return
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text("\n".join(self.lines) + "\n")
        os.replace(tmp, self.out)


@dataclass
class Clock:
    """The whole run's budget; each section gets its own limit within what is left."""

    budget_s: float
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (SIGALRM)."""

    def expire(signum, frame):
        raise SectionTimeout(f"ran past its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def trainer_for(name: str, args, overrides: list[str], run_dir: Path) -> Trainer:
    batch, mu = args.batch
    extra = ["model.width=8"] if args.arch == "small_cnn" else []
    precision = next(o.split("=")[1] for o in overrides if o.startswith("train.precision="))
    return make_trainer(name, batch, mu, args.device, precision, _data(batch * (1 + mu)),
                        run_dir, [*extra, *overrides], arch=args.arch)


@functools.lru_cache(maxsize=2)
def _data(images: int):
    return synthetic_data(labeled=max(400, images), unlabeled=max(4000, 8 * images))


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def tail(text: str, chars: int = 2500) -> str:
    return text[-chars:].replace("```", "'''")


# ---------------------------------------------------------------------- 1. env
def compile_problem() -> str | None:
    """Why inductor cannot build kernels here (it compiles C++ and loads a Python extension),
    or None."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc/gcc) on the PATH"
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        return f"no Python.h at {header} (the python3-dev headers)"
    return None


def env_section(args, report: Report, clock: Clock) -> None:
    rows = [("python", platform.python_version()), ("torch", torch.__version__),
            ("CUDA (torch build)", torch.version.cuda or "none"),
            ("cuDNN", str(torch.backends.cudnn.version()) if torch.cuda.is_available() else "-"),
            ("CPU cores", str(os.cpu_count()))]
    for module in ("triton", "timm", "numpy"):
        try:
            rows.append((module, __import__(module).__version__))
        except ImportError:
            rows.append((module, "not installed"))
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        rows += [("GPU", f"{props.name} x {torch.cuda.device_count()}, "
                         f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
                         f"compute capability {props.major}.{props.minor}")]
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            smi = "nvidia-smi not available"
        rows.append(("driver", smi.splitlines()[0] if smi else "?"))
        rows.append(("TF32 (cuDNN conv / matmul)", f"{torch.backends.cudnn.allow_tf32} / "
                     f"{torch.backends.cuda.matmul.allow_tf32}"))
    rows.append(("torch.compile", f"unavailable: {args.compile_problem}" if args.compile_problem
                 else "available"))
    report.add("| what | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "")


# ---------------------------------------------------------------------- 2. tests
def tests_section(args, report: Report, clock: Clock) -> None:
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging",
            "--tb=short"]
    if args.device != "cuda":
        out = subprocess.run([*base, "--collect-only", "-m", "cuda", "tests"], cwd=ROOT,
                             env=subprocess_env(), capture_output=True, text=True,
                             timeout=max(clock.left(), 1)).stdout
        found = re.search(r"(\d+) CUDA-only tests deselected", out)
        report.add(f"Not run: no CUDA device ({found.group(1) if found else 0} tests are marked "
                   "`cuda`; on a GPU this runs `pytest -m cuda tests` and "
                   "`pytest tests/test_hot_path.py`).", "")
        return
    report.add("| command | result | seconds |", "|---|---|---|")
    for command in (["-m", "cuda", "tests"], ["tests/test_hot_path.py"]):
        started = time.perf_counter()
        done = subprocess.run([*base, *command], cwd=ROOT, env=subprocess_env(),
                              capture_output=True, text=True, timeout=max(args.limit(), 1))
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        report.add(f"| `pytest {' '.join(command)}` | {summary} | "
                   f"{time.perf_counter() - started:.0f} |")
        if done.returncode != 0:
            report.fail(f"pytest {' '.join(command)}")
            report.add("", "```", tail(done.stdout, 4000), "```", "")
            if report.out is not None:
                log = report.out.with_name(f"pytest-{command[-1].replace('/', '_')}.txt")
                log.write_text(done.stdout + done.stderr)
    report.add("")


# ---------------------------------------------------------------------- 3. step
def step_section(args, report: Report, clock: Clock) -> None:
    batch, mu = args.batch
    report.add(f"{args.arch}, {batch} + {mu} x {batch} (weak + strong views). it/s is the median "
               "of the timed steps; `pipeline img/s` is the input pipeline alone on the same "
               "batch (inside the step for device augmentation).", "",
               "| algorithm | config | images/step | it/s | img/s | peak MiB | first step s | "
               "pipeline img/s | 2^20 steps h |", "|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.algorithms:
            for config, overrides in CONFIGS.items():
                trainer = trainer_for(name, args, overrides, Path(tmp))
                args.rates[f"{name}/{config}"], cells = measure_steps(trainer, args)
                report.add(f"| {name} | {config} | {cells}")
                del trainer
                free_cuda()
    report.add("", verdict(args, "bf16"), "")


def verdict(args, config: str) -> str:
    rate = args.rates.get(f"interlude/{config}", 0.0)
    best_key = max((k for k in args.rates if k.startswith("interlude/")),
                   key=args.rates.get, default=None)
    best = f"{args.rates[best_key]:.1f} it/s at best ({best_key.split('/', 1)[1]})" if best_key \
        else "-"
    if not _paper(args):
        return (f"InterLUDE {config}: {rate:.1f} it/s, {best} (not the paper batch on a GPU: "
                "no verdict). On a CPU bf16 and channels_last do not apply (fp32 rows).")
    met = "met" if rate >= GOAL_IT_S else "NOT met"
    aim = "reached" if rate >= AIM_IT_S else "not reached"
    return (f"InterLUDE in {config} at the paper batch: {rate:.1f} it/s; {best}. Goal "
            f">= {GOAL_IT_S:.0f} it/s: {met}; aim {AIM_IT_S:.0f} it/s: {aim}. 2^20 steps take "
            f"{hours(rate):.1f} h at {config} (anchors: {ANCHORS}).")


def hours(it_s: float, steps: int = RUN_STEPS) -> float:
    return steps / it_s / 3600 if it_s > 0 else math.inf


def measure_steps(trainer: Trainer, args) -> tuple[float, str]:
    """Median it/s after ``args.warmup`` steps, and the table cells ``images/step | it/s | img/s
    | peak MiB | first step s | pipeline img/s | 2^20 steps h |``."""
    device = trainer.device
    first = _timed(lambda: trainer.train_step(0), device)
    if device.type == "cuda":  # after compilation and cuDNN's timing runs, before CUDA graphs
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(1, args.warmup + 1):
        trainer.train_step(step)
    start = args.warmup + 1
    seconds = [_timed(lambda s=s: trainer.train_step(s), device)
               for s in range(start, start + args.reps)]
    peak = (f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda"
            else "n/a (CPU)")
    images = trainer.layout.order.numel()
    pipeline = [_timed(lambda s=s: trainer.batches.build(s), device)
                for s in range(start, start + max(3, args.reps // 3))]
    it_s = 1 / statistics.median(seconds)
    return it_s, (f"{images} | {it_s:.1f} | {it_s * images:.0f} | {peak} | {first:.1f} | "
                  f"{images / statistics.median(pipeline):.0f} | {hours(it_s):.1f} |")


def _paper(args) -> bool:
    return args.device == "cuda" and tuple(args.batch) == (64, 7) and args.arch == "wrn28_2"


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


# ---------------------------------------------------------------------- 4. ViT step
def vit_section(args, report: Report, clock: Clock) -> None:
    """InterLUDE with ViT-B/16 at 224 px and the paper's ViT batch (random weights: the speed of
    a step does not depend on them), with the optimiser of ``configs/stl10_40_vit.yaml``."""
    spec = VIT_QUICK if args.quick else VIT
    batch, mu = spec["batch"]
    data = synthetic_data(labeled=4 * batch, unlabeled=4 * batch * mu, size=spec["size"])
    report.add(f"{spec['arch']} at {spec['size']} px, {batch} + {mu} x {batch} (InterLUDE, "
               "lambda_DC 0.1, AdamW + layer decay 0.65)", "",
               "| config | images/step | it/s | img/s | peak MiB | first step s | "
               "pipeline img/s | 2^20 steps h |", "|---|---|---|---|---|---|---|---|")
    rate = 0.0
    for config in ("fp32", "bf16"):
        overrides = [*CONFIGS[config], "model.pretrained=false", "algorithm.lambda_dc=0.1",
                     "train.optimizer=adamw", "train.lr=1e-4", "train.layer_decay=0.65",
                     "train.ema_decay=0"]
        with tempfile.TemporaryDirectory() as tmp:
            trainer = make_trainer("interlude", batch, mu, args.device,
                                   config.split()[0], data, Path(tmp), overrides,
                                   arch=spec["arch"])
            rate, cells = measure_steps(trainer, args)
            report.add(f"| {config} | {cells}")
            del trainer
        free_cuda()
    report.add("", f"The STL-10 ViT configs' {VIT_STEPS:,} steps at the bf16 rate: "
               f"{hours(rate, VIT_STEPS):.2f} h ({1 / rate:.3f} s/step)." if not args.quick else
               "Quick mode: a tiny ViT at 32 px (checks the code path, not the speed).", "")


# ---------------------------------------------------------------------- 5. pipeline
def pipeline_section(args, report: Report, clock: Clock) -> None:
    batch, mu = args.batch
    config = "bf16 + channels_last"
    step_rate = args.rates.get(f"interlude/{config}", 0.0)
    report.add(f"InterLUDE, {batch} + {mu} x {batch}, against the step's own rate in {config} "
               "(section `step`).", "",
               "| pipeline | steps/s | img/s | step's own rate (it/s) | waits for data? |",
               "|---|---|---|---|---|")
    device = torch.device(args.device)
    images = 2 * batch * (1 + mu)
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in (
            ("device augmentation (`augment_on: device`)", []),
            (f"DataLoader workers (`augment_on: workers`, {args.workers} workers)",
             ["train.augment_on=workers", f"train.num_workers={args.workers}"]),
        ):
            trainer = trainer_for("interlude", args, [*CONFIGS[config], *overrides], Path(tmp))
            trainer.batches.build(0)
            sync(device)
            started = time.perf_counter()
            for step in range(1, args.reps + 1):
                x = trainer.batches.build(step).x
            sync(device)
            per_s = args.reps / (time.perf_counter() - started)
            del x
            trainer.batches.close()
            if not step_rate:
                waits = "- (no step rate measured)"
            else:
                waits = "yes" if per_s < step_rate else "no"
                if "device" in label:  # it runs inside the step: its share of the step time
                    waits += f" (augmentation is {100 * step_rate / per_s:.0f}% of a step)"
            report.add(f"| {label} | {per_s:.1f} | {per_s * images:.0f} | {step_rate:.1f} | "
                       f"{waits} |")
    report.add("")


# ---------------------------------------------------------------------- 6. ops
def ops_section(args, report: Report, clock: Clock) -> None:
    batch, mu = args.batch
    report.add(f"{args.device}, {batch} + {mu} x {batch}, bf16; nested calls counted "
               "(`interlude.train.opcount`).", "",
               "| algorithm | augmentation (all views) | input pipeline | model step |",
               "|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.algorithms:
            trainer = trainer_for(name, args, CONFIGS["bf16"], Path(tmp))
            ops = step_op_counts(trainer, 1)
            report.add(f"| {name} | {ops.augmentation} | {ops.input.total} | "
                       f"{ops.model.total} |")
    report.add("")


# ---------------------------------------------------------------------- 7. profile
def profile_section(args, report: Report, clock: Clock) -> None:
    """Where a bf16 InterLUDE step's time goes: GPU busy time per step against the wall time
    (a GPU idle between kernels is launch/host bound), kernels per step, the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    config = "bf16 + channels_last"
    steps = 3 if args.quick else 10
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda"
                                           else [])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_for("interlude", args, CONFIGS[config], Path(tmp))
        for step in range(3):
            trainer.train_step(step)
        device = trainer.device
        plain_ms = 1e3 * statistics.median(
            [_timed(lambda s=s: trainer.train_step(s), device) for s in range(3, 3 + steps)])
        sync(device)
        started = time.perf_counter()
        with profile(activities=activities) as prof:
            for step in range(3 + steps, 3 + 2 * steps):
                trainer.train_step(step)
            sync(device)
        wall_ms = (time.perf_counter() - started) * 1e3 / steps
    events = prof.key_averages()
    if args.device == "cuda":
        kernels = [e for e in events if _device_time(e) > 0 and "CUDA" in str(e.device_type)
                   and not e.key.startswith("interlude::")]  # a range is not a kernel
        if not kernels:
            report.add("The profiler recorded no CUDA kernels.", "")
            return
        busy_ms = sum(_device_time(e) for e in kernels) / 1e3 / steps
        launches = sum(e.count for e in kernels) / steps
        bound = ("the GPU is busy most of the step: kernel time binds" if busy_ms > 0.8 * plain_ms
                 else "the GPU idles part of the step: host dispatch/launch overhead binds")
        report.add(f"InterLUDE, {config}: {plain_ms:.2f} ms/step unprofiled ({wall_ms:.2f} under "
                   f"the profiler); kernels {busy_ms:.2f} ms/step on the GPU "
                   f"({100 * busy_ms / plain_ms:.0f}% of the step), {launches:.0f} kernels/step: "
                   f"{bound}.", "",
                   "| kernel | calls/step | GPU ms/step | share |", "|---|---|---|---|")
        for e in sorted(kernels, key=_device_time, reverse=True)[:12]:
            ms = _device_time(e) / 1e3 / steps
            report.add(f"| `{e.key[:70].replace('|', '/')}` | {e.count / steps:.0f} | {ms:.3f} | "
                       f"{100 * ms / busy_ms:.0f}% |")
    else:
        report.add(f"CPU, {steps} steps: wall {wall_ms:.1f} ms/step (no CUDA activity to "
                   "profile).", "", "| op | calls/step | CPU ms/step |", "|---|---|---|")
        for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]:
            report.add(f"| `{e.key[:60]}` | {e.count / steps:.0f} | "
                       f"{e.self_cpu_time_total / 1e3 / steps:.2f} |")
    report.add("")


def _device_time(event) -> float:
    """Self device time in us (torch renamed ``self_cuda_time_total`` to ``self_device_time_total``)."""
    return float(getattr(event, "self_device_time_total", None)
                 or getattr(event, "self_cuda_time_total", 0.0) or 0.0)


# ---------------------------------------------------------------------- 8. train
def agreement_tolerance(a: list[float], b: list[float], floor: float) -> float:
    """Largest difference of the two means (points) that seed noise explains: three standard
    errors of the difference from the measured per-seed spreads, at least ``floor``."""
    variance = sum(statistics.variance(x) / len(x) for x in (a, b) if len(x) > 1)
    return max(3 * math.sqrt(variance), floor)


def train_section(args, report: Report, clock: Clock) -> None:
    devices = list(dict.fromkeys([args.device, "cpu"]))
    seeds = TRAIN_SEEDS[:2] if args.quick else TRAIN_SEEDS
    steps = 20 if args.quick else 2000
    threads = max(1, (os.cpu_count() or 2) // (len(seeds) * 2))
    report.add(f"`interlude train configs/digits.yaml` ({steps} steps), seeds {list(seeds)}, on "
               f"{' and '.join(devices)}, all runs at once (CPU runs: {threads} threads each).",
               "", "| device | test top-1 (EMA, %) per seed | mean | wall s |", "|---|---|---|---|")
    results: dict[str, list[float]] = {}
    test_images = 1
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {}
        for device in devices:
            for seed in seeds:
                name = f"{device}-s{seed}"
                command = [sys.executable, "-m", "interlude", "train", "configs/digits.yaml",
                           f"train.seed={seed}", f"train.steps={steps}",
                           f"train.eval_interval={steps}", f"train.checkpoint_interval={steps}",
                           f"train.device={device}", f"train.threads={threads}",
                           "train.progress=false", f"train.out_dir={tmp}", f"train.run_name={name}"]
                log = open(Path(tmp) / f"{name}.log", "w")  # noqa: SIM115 (closed below)
                jobs[name] = (subprocess.Popen(command, cwd=ROOT, env=subprocess_env(),
                                               stdout=log, stderr=subprocess.STDOUT),
                              log, time.perf_counter())
        walls: dict[str, list[float]] = {d: [] for d in devices}
        try:
            for name, (process, log, started) in jobs.items():
                code = process.wait(timeout=max(args.limit(), 1))
                log.close()
                device = name.rsplit("-s", 1)[0]
                walls[device].append(time.perf_counter() - started)
                if code != 0:
                    report.fail(f"digits training {name}")
                    report.add(f"| {name} | FAILED (exit {code}) | | |", "", "```",
                               tail((Path(tmp) / f"{name}.log").read_text()), "```")
                    continue
                last = json.loads((Path(tmp) / name / "summary.json").read_text())["last"]
                results.setdefault(device, []).append(100 * last["test/ema/top1"])
                test_images = sum(map(sum, last["test/ema/confusion"]))
        finally:
            for process, log, _ in jobs.values():
                if process.poll() is None:
                    process.kill()
                log.close()
    for device, values in results.items():
        report.add(f"| {device} | {', '.join(f'{v:.1f}' for v in values)} | "
                   f"{statistics.mean(values):.2f} | {max(walls[device]):.0f} |")
    if len(results) < 2:
        report.add("", "One device only: no comparison.", "")
        return
    device, cpu = results[args.device], results["cpu"]
    gap = abs(statistics.mean(device) - statistics.mean(cpu))
    tolerance = agreement_tolerance(device, cpu, floor=100 / test_images)  # one test image
    ok = gap <= tolerance
    report.add("", f"Means differ by {gap:.2f} points; tolerance {tolerance:.2f} points (three "
               "standard errors of the difference from the per-seed spreads measured here, at "
               f"least one test image): {'within' if ok else 'NOT within'}. The device draws "
               "other random numbers for its augmentation, so runs agree within noise, not "
               "exactly.", "")
    if not ok:
        report.fail("digits accuracy on the device differs from the CPU beyond seed noise")


# ---------------------------------------------------------------------- 9. ddp
def ddp_section(args, report: Report, clock: Clock) -> None:
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    processes = gpus or 2
    steps = 4 if args.quick else 200
    half = steps // 2
    report.add(f"{processes} process(es), {'NCCL' if gpus else 'gloo (CPU)'}, through "
               f"`torchrun ... -m interlude train configs/digits.yaml` ({steps} steps, stopped "
               f"at {half}), then `--resume` in one plain process.", "",
               "| run | result | seconds |", "|---|---|---|")
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        train = ["-m", "interlude", "train", "configs/digits.yaml", f"train.steps={steps}",
                 f"train.eval_interval={half}", f"train.checkpoint_interval={half}",
                 "train.progress=false", f"train.device={args.device}", f"train.out_dir={tmp}",
                 "train.run_name=ddp", "train.batch_size=16", "train.threads=1"]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}"]
        runs = [(f"DDP, {processes} rank(s), to step {half}", [*launcher, *train,
                                                               f"--stop-after={half}"]),
                (f"resume in 1 process to step {steps}", [sys.executable, *train, "--resume"])]
        for label, command in runs:
            started = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=max(args.limit(), 1))
            ok = done.returncode == 0
            result = "ok" if ok else f"FAILED (exit {done.returncode})"
            summary = Path(tmp) / "ddp" / "summary.json"
            if ok and summary.is_file():
                top1 = json.loads(summary.read_text())["last"].get("test/ema/top1", math.nan)
                result += f", test top-1 {100 * top1:.1f} %"
            if ok and "DDP" in label and "DDP over" not in done.stderr + done.stdout:
                result = "FAILED (the run did not report a DDP-wrapped model)"
                ok = False
            report.add(f"| {label} | {result} | {time.perf_counter() - started:.0f} |")
            if not ok:
                report.fail(f"DDP: {label}")
                report.add("", "```", tail(done.stdout + done.stderr), "```", "")
                break
    report.add("")


# ---------------------------------------------------------------------- 10. compile
def compile_section(args, report: Report, clock: Clock) -> None:
    if args.compile_problem:
        report.add(f"compile unavailable: {args.compile_problem}.", "")
        return
    report.add("bf16 + channels_last + `torch.compile` of the training model (inductor; "
               "`first step s` is the compilation).", "",
               "| algorithm | mode | images/step | it/s | img/s | peak MiB | first step s | "
               "pipeline img/s | 2^20 steps h |", "|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.compile_modes:
            for name in args.algorithms:
                _compiled_row(name, mode, args, report, Path(tmp))
    best = max((v, k) for k, v in args.rates.items() if k.startswith("interlude/"))
    report.add("", f"Best InterLUDE setting: {best[1].split('/', 1)[1]}, {best[0]:.1f} it/s: "
               f"2^20 steps in {hours(best[0]):.1f} h.", "")


def _compiled_row(name: str, mode: str, args, report: Report, run_dir: Path) -> None:
    """One compiled configuration; its failure is a row of the table, not the section's end."""
    try:
        trainer = trainer_for(name, args, [*COMPILED, f"train.compile_mode={mode}"], run_dir)
        rate, cells = measure_steps(trainer, args)
        del trainer
    except SectionTimeout:
        raise
    except Exception as exc:  # noqa: BLE001 (one mode failing keeps the other rows)
        first = str(exc).splitlines()[0][:150] if str(exc) else ""
        report.add(f"| {name} | {mode} | FAILED: {type(exc).__name__}: {first} |")
        report.fail(f"compile {name} {mode}")
        return
    finally:
        free_cuda()
        torch._dynamo.reset()
    key = "compile" if mode == "default" else f"compile {mode}"
    args.rates[f"{name}/bf16 + channels_last + {key}"] = rate
    report.add(f"| {name} | {mode} | {cells}")


# ---------------------------------------------------------------------- main
SECTION_FUNCTIONS: dict[str, tuple[str, Callable]] = {
    "env": ("Environment", env_section),
    "tests": ("CUDA-only tests", tests_section),
    "step": ("Training step", step_section),
    "vit": ("ViT step", vit_section),
    "pipeline": ("Input pipeline alone", pipeline_section),
    "ops": ("Dispatched aten operators per step", ops_section),
    "profile": ("Profile of a step", profile_section),
    "train": ("Short training: digits, device vs CPU", train_section),
    "ddp": ("DDP", ddp_section),
    "compile": ("torch.compile", compile_section),
}


def run_section(name: str, args, report: Report, clock: Clock) -> None:
    """One section inside its own budget; a failure or a timeout is recorded, never raised."""
    title, function = SECTION_FUNCTIONS[name]
    limit = min(args.section_budget(name), clock.left())
    report.add(f"## {title}", "")
    if limit < 5:
        report.add(f"Skipped: the run's budget (--budget-s {clock.budget_s:.0f}) is spent.", "")
        report.fail(f"{name}: not run (budget)")
        report.write()
        return
    started = time.perf_counter()
    args.limit = lambda: limit - (time.perf_counter() - started)  # for subprocess timeouts
    try:
        with time_limit(limit):
            function(args, report, clock)
    except (SectionTimeout, subprocess.TimeoutExpired) as exc:
        report.add("", f"**Stopped: {exc}** (what is above was measured).", "")
        report.fail(f"{name}: timed out")
    except Exception as exc:  # noqa: BLE001 (one section's failure must not lose the others)
        report.add("", f"**FAILED: {type(exc).__name__}: {str(exc)[:300]}**", "", "```",
                   tail(traceback.format_exc()), "```", "")
        report.fail(f"{name}: {type(exc).__name__}")
    finally:
        free_cuda()
    report.add(f"_{name}: {time.perf_counter() - started:.0f} s_", "")
    report.write()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda | cpu (default: cuda if any)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: small CNN, 2 x 2 batch, a few steps (checks the script)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--batch", nargs=2, type=int, default=None, metavar=("B", "MU"),
                        help="labeled batch and mu (default 64 7; quick: 2 2)")
    parser.add_argument("--arch", default=None, help="default wrn28_2 (quick: small_cnn)")
    parser.add_argument("--reps", type=int, default=None, help="timed steps (default 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--compile-modes", nargs="+", default=list(COMPILE_MODES),
                        choices=COMPILE_MODES)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="the whole run's time limit in seconds (default 480 on a GPU)")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here too")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run with --device cpu --quick to check the script")
    if args.budget_s is not None and not 10 <= args.budget_s <= 86400:
        parser.error("--budget-s must be between 10 and 86400 seconds")
    quick = args.quick
    args.batch = args.batch or ([2, 2] if quick else [64, 7])
    args.arch = args.arch or ("small_cnn" if quick else "wrn28_2")
    args.reps = args.reps or (2 if quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 5)
    args.workers = min(args.workers, 1) if quick else args.workers
    args.budget_s = args.budget_s or (480.0 if args.device == "cuda" and not quick else 3600.0)
    # on a GPU each section keeps its own budget; elsewhere only the total applies
    args.section_budget = (lambda name: BUDGET_S[name]) if args.device == "cuda" and not quick \
        else (lambda name: args.budget_s)
    args.rates = {}
    args.compile_problem = compile_problem()
    return args


def main() -> int:
    args = parse_args()
    if args.device == "cpu":
        # inductor on a CPU compiles C++ for minutes; aot_eager still traces the step
        torch.compile = functools.partial(torch.compile, backend="aot_eager")
        args.compile_problem = None
        logging.getLogger("interlude").setLevel(logging.ERROR)  # "bf16 applies on CUDA only"
    report = Report(args.out)
    clock = Clock(args.budget_s)
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU"
    report.add(f"# GPU check: {name}", "",
               f"`python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
               "", f"{time.strftime('%Y-%m-%d %H:%M')}; budget {args.budget_s:.0f} s", "")
    for section in args.sections:
        run_section(section, args, report, clock)
    verdict_line = "all checks passed" if not report.failures else (
        "FAILED: " + "; ".join(report.failures))
    report.add("## Verdict", "", verdict_line, "", f"Total {time.perf_counter() - clock.started:.0f} s.")
    report.write()
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
