"""Proof on a GPU, in one command; prints Markdown for benchmarks/RESULTS.md.

    python benchmarks/gpu_check.py                         # on a CUDA machine: all of the below
    python benchmarks/gpu_check.py --out gpu_check.md      # ... and keep the Markdown
    python benchmarks/gpu_check.py --device cpu --quick    # end to end on a CPU at tiny sizes

The library was written and tested on CPUs; bf16, channels_last, torch.compile, the on-device
RandAugment, NCCL DDP and peak memory only show on the hardware users have. This script checks
and measures them there:

1. ``tests``: the CUDA-only tests (``pytest -m cuda``: device augmentation against the CPU,
   bf16 + channels_last + compile training steps, ...) and ``tests/test_hot_path.py``, which on
   CUDA turns any host synchronisation in the training loop into an error.
2. ``step``: one training step of WRN-28-2 at the paper batch (64 labeled + 7 x 64 unlabeled,
   weak + strong views) for FixMatch, InterLUDE and InterLUDE+ in fp32, bf16, bf16 +
   channels_last and bf16 + channels_last + ``torch.compile``: it/s, img/s, peak memory
   (``torch.cuda.max_memory_allocated``). Goal on an H100: >= 75 it/s for InterLUDE in bf16.
   ``vit``: the same for InterLUDE with timm's ViT-B/16 at 224 px at the paper's ViT batch
   (8 labeled + 7 x 8 unlabeled, the STL-10 configs' optimiser), fp32 and bf16.
3. ``pipeline``: the input pipeline alone at that batch, device augmentation and DataLoader
   workers, against the step's own rate: does the step wait for data?
4. ``ops``: aten operators one step dispatches (launch overhead), augmentation and model step.
5. ``train``: a short real training (mnist5k) on CUDA and on the CPU with the same config and
   seed; the test accuracies must agree within ``--tolerance`` points (the CUDA run draws other
   random numbers for its augmentation, so they agree within noise, not exactly).
6. ``ddp``: DDP over NCCL with one process per GPU through ``torchrun`` and the real CLI (with
   one GPU: a one-process NCCL DDP smoke test, since a one-process run skips DDP).

``--device cpu --quick`` runs every section at tiny sizes (small CNN, 2 x 2 batch, a few steps,
``torch.compile`` with the ``aot_eager`` backend, gloo instead of NCCL): it shows the script works
(``tests/test_gpu_check.py`` runs it), not how fast anything is. The exit status is 1 when a
check fails (a test, the accuracy agreement, DDP).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from speed import CLASSES, SIZE, synthetic_data  # noqa: E402

from interlude.algorithms import build_algorithm  # noqa: E402
from interlude.config import load_config  # noqa: E402
from interlude.nets import build_net  # noqa: E402
from interlude.train import run  # noqa: E402
from interlude.train.loop import Trainer  # noqa: E402
from interlude.train.opcount import step_op_counts  # noqa: E402

ALGORITHMS = ("fixmatch", "interlude", "interlude_plus")
CONFIGS = {  # name -> train.* overrides
    "fp32": ["train.precision=fp32", "train.channels_last=false"],
    "bf16": ["train.precision=bf16", "train.channels_last=false"],
    "bf16 + channels_last": ["train.precision=bf16", "train.channels_last=true"],
    "bf16 + channels_last + compile": ["train.precision=bf16", "train.channels_last=true",
                                       "train.compile=true"],
}
GOAL_IT_S = 75.0  # InterLUDE, bf16, paper batch, H100
SECTIONS = ("tests", "step", "vit", "pipeline", "ops", "train", "ddp")
VIT = {"arch": "timm/vit_base_patch16_224", "size": 224, "batch": (8, 7)}  # configs/stl10_*_vit
VIT_QUICK = {"arch": "timm/vit_tiny_patch16_224", "size": 32, "batch": (2, 2)}


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        print(*lines, sep="\n", flush=True)

    def fail(self, what: str) -> None:
        self.failures.append(what)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(name: str, batch: int, mu: int, device: str, overrides: list[str],
                 run_dir: Path, args) -> Trainer:
    """A real Trainer (the training code path) on synthetic 32x32 RGB data."""
    cfg = load_config(None, [
        f"model.arch={args.arch}", f"algorithm.name={name}", f"train.batch_size={batch}",
        f"train.mu={mu}", f"train.device={device}", "train.steps=1000000",
        "train.progress=false", *(["model.width=8"] if args.arch == "small_cnn" else []),
        *overrides,
    ])
    data = _data(batch * (1 + mu))
    torch.manual_seed(0)
    model = build_net(cfg.model, CLASSES, 3, SIZE, "cifar10")
    algorithm = build_algorithm(cfg.algorithm, CLASSES, num_unlabeled=len(data.unlabeled))
    return Trainer(cfg, data, model, algorithm, run_dir, torch.device(device))


@functools.lru_cache(maxsize=4)
def _data(images: int):
    return synthetic_data(labeled=max(400, images), unlabeled=max(4000, 8 * images))


# ---------------------------------------------------------------------- 1. tests
def tests_section(args, report: Report) -> None:
    report.add("## CUDA-only tests", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if args.device != "cuda":
        out = subprocess.run([*base, "--collect-only", "-m", "cuda", "tests"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600).stdout
        found = re.search(r"(\d+) CUDA-only tests deselected", out)
        report.add(f"Not run: no CUDA device ({found.group(1) if found else 0} tests are marked "
                   "`cuda`; on a GPU this runs `pytest -m cuda tests` and "
                   "`pytest tests/test_hot_path.py`).", "")
        return
    report.add("| command | result | seconds |", "|---|---|---|")
    for command in (["-m", "cuda", "tests"], ["tests/test_hot_path.py"]):
        started = time.perf_counter()
        done = subprocess.run([*base, *command], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=3600)
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        report.add(f"| `pytest {' '.join(command)}` | {summary} | "
                   f"{time.perf_counter() - started:.0f} |")
        if done.returncode != 0:
            report.fail(f"pytest {' '.join(command)}")
            print(done.stdout[-4000:], done.stderr[-2000:], file=sys.stderr)
    report.add("")


# ---------------------------------------------------------------------- 2. step
def step_section(args, report: Report) -> dict[str, float]:
    batch, mu = args.batch
    report.add(f"## Training step: {args.arch}, {batch} + {mu} x {batch} (weak + strong views)",
               "", "| algorithm | config | images/step | it/s | img/s | peak MiB | "
               "first step s |", "|---|---|---|---|---|---|---|")
    device = torch.device(args.device)
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ALGORITHMS:
            for config, overrides in CONFIGS.items():
                trainer = make_trainer(name, batch, mu, args.device, overrides, Path(tmp), args)
                rates[f"{name}/{config}"], cells = measure_steps(trainer, args, device)
                report.add(f"| {name} | {config} | {cells}")
                del trainer
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    bf16 = rates.get("interlude/bf16", 0.0)
    best = max(v for k, v in rates.items() if k.startswith("interlude/"))
    verdict = ("met" if bf16 >= GOAL_IT_S else "not met") if _paper(args) else (
        "not applicable (not the paper batch on a GPU)")
    report.add("", f"InterLUDE: {bf16:.1f} it/s in bf16, {best:.1f} it/s at best; goal on an "
               f"H100 (>= {GOAL_IT_S:.0f} it/s in bf16 at the paper batch): {verdict}.",
               "" if device.type == "cuda" else "On the CPU bf16 and channels_last do not "
               "apply (those rows run in fp32), and compile uses the aot_eager backend.", "")
    return rates


# ---------------------------------------------------------------------- 2b. ViT step
def vit_section(args, report: Report) -> None:
    """InterLUDE with ViT-B/16 at 224 px and the paper's ViT batch (random weights: the speed of a
    step does not depend on them), with the optimiser of ``configs/stl10_40_vit.yaml``."""
    spec = VIT_QUICK if args.quick else VIT
    batch, mu = spec["batch"]
    size = spec["size"]
    report.add(f"## ViT step: {spec['arch']} at {size} px, {batch} + {mu} x {batch} "
               "(InterLUDE, weak + strong views)", "",
               "| config | images/step | it/s | img/s | peak MiB | first step s |",
               "|---|---|---|---|---|---|")
    device = torch.device(args.device)
    data = synthetic_data(labeled=4 * batch, unlabeled=4 * batch * mu, size=size)
    rate = 0.0
    for config, overrides in list(CONFIGS.items())[:2]:  # fp32, bf16
        cfg = load_config(None, [
            f"model.arch={spec['arch']}", "model.pretrained=false", "algorithm.name=interlude",
            "algorithm.lambda_dc=0.1", f"train.batch_size={batch}", f"train.mu={mu}",
            "train.optimizer=adamw", "train.lr=1e-4", "train.layer_decay=0.65",
            "train.ema_decay=0", f"train.device={args.device}", "train.steps=1000000",
            "train.progress=false", *overrides,
        ])
        torch.manual_seed(0)
        algorithm = build_algorithm(cfg.algorithm, CLASSES, num_unlabeled=len(data.unlabeled))
        model = build_net(cfg.model, CLASSES, 3, size, fusion_strength=algorithm.fusion_strength)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, data, model, algorithm, Path(tmp), device)
            rate, cells = measure_steps(trainer, args, device)
            report.add(f"| {config} | {cells}")
            del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report.add("", f"The STL-10 ViT configs' 204,800 steps at the bf16 rate: "
               f"{204_800 / rate / 3600:.1f} h." if not args.quick else
               "Quick mode: a tiny ViT at 32 px (checks the code path, not the speed).", "")


def measure_steps(trainer: Trainer, args, device: torch.device) -> tuple[float, str]:
    """Median it/s after ``args.warmup`` steps, and the table cells ``images/step | it/s |
    img/s | peak MiB (n/a on CPU) | first step s |``."""
    first = _timed(lambda: trainer.train_step(0), device)
    for step in range(1, args.warmup + 1):
        trainer.train_step(step)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = [_timed(lambda s=s: trainer.train_step(s), device)
               for s in range(args.warmup + 1, args.warmup + 1 + args.reps)]
    peak = (f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda"
            else "n/a (CPU)")
    it_s = 1 / statistics.median(seconds)
    images = trainer.layout.order.numel()
    return it_s, f"{images} | {it_s:.1f} | {it_s * images:.0f} | {peak} | {first:.1f} |"


def _paper(args) -> bool:
    return args.device == "cuda" and tuple(args.batch) == (64, 7) and args.arch == "wrn28_2"


def _timed(fn, device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


# ---------------------------------------------------------------------- 3. pipeline
def pipeline_section(args, report: Report, rates: dict[str, float]) -> None:
    batch, mu = args.batch
    config = "bf16 + channels_last + compile"
    step_rate = rates.get(f"interlude/{config}") or rates.get("interlude/fp32", 0.0)
    report.add(f"## Input pipeline alone: InterLUDE, {batch} + {mu} x {batch}", "",
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
            trainer = make_trainer("interlude", batch, mu, args.device,
                                   [*CONFIGS[config], *overrides], Path(tmp), args)
            trainer.batches.build(0)
            started = time.perf_counter()
            for step in range(1, args.reps + 1):
                x = trainer.batches.build(step).x
            sync(device)
            per_s = args.reps / (time.perf_counter() - started)
            del x
            trainer.batches.close()
            waits = "yes" if per_s < step_rate else "no"
            if "device" in label:  # it runs inside the step: its share of the step time
                waits = f"{waits} (augmentation is {100 * step_rate / per_s:.0f}% of a step)"
            report.add(f"| {label} | {per_s:.1f} | {per_s * images:.0f} | {step_rate:.1f} | "
                       f"{waits} |")
    report.add("", "A pipeline waits-for-data verdict compares its rate alone with the step's "
               f"({config}); the workers' rate includes the transfer to the device.", "")


# ---------------------------------------------------------------------- 4. ops
def ops_section(args, report: Report) -> None:
    batch, mu = args.batch
    report.add(f"## Dispatched aten operators per step ({args.device}, {batch} + {mu} x {batch})",
               "", "| algorithm | augmentation (all views) | input pipeline | model step |",
               "|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ALGORITHMS:
            trainer = make_trainer(name, batch, mu, args.device, CONFIGS["bf16"], Path(tmp),
                                   args)
            ops = step_op_counts(trainer, 1)
            report.add(f"| {name} | {ops.augmentation} | {ops.input.total} | "
                       f"{ops.model.total} |")
    report.add("", "Goal: the step's augmentation under 400 operators (`torch.profiler`, nested "
               "calls counted; `interlude.train.opcount`).", "")


# ---------------------------------------------------------------------- 5. train
def train_section(args, report: Report) -> None:
    report.add(f"## Short training: mnist5k, {args.train_steps} steps, {args.device} vs CPU", "",
               "| device | test top-1 (EMA, %) | wall s |", "|---|---|---|")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in dict.fromkeys([args.device, "cpu"]):
            cfg = load_config(ROOT / "configs" / "mnist5k.yaml", [
                f"train.steps={args.train_steps}", f"train.eval_interval={args.train_steps}",
                f"train.checkpoint_interval={args.train_steps}", "train.log_interval=10",
                f"train.device={device}", "train.progress=false", f"train.out_dir={tmp}",
                f"train.run_name=mnist5k-{device}",
            ])
            started = time.perf_counter()
            result = run(cfg)
            top1 = 100 * result.summary["last"]["test/ema/top1"]
            results[device] = top1
            report.add(f"| {device} | {top1:.1f} | {time.perf_counter() - started:.0f} |")
    gap = abs(results[args.device] - results["cpu"])
    verdict = "within" if gap <= args.tolerance else "NOT within"
    report.add("", f"Difference {gap:.1f} points: {verdict} the tolerance of {args.tolerance} "
               "points (seed-to-seed spread on the CPU: 0.2-0.6 points at 1500 steps, "
               "benchmarks/RESULTS.md).", "")
    if gap > args.tolerance:
        report.fail("mnist5k accuracy on the device differs from the CPU run")


# ---------------------------------------------------------------------- 6. ddp
NCCL_SMOKE = textwrap.dedent("""
    import os, torch, torch.distributed as dist
    from interlude.nets import build_net
    from interlude.config import load_config
    dist.init_process_group("nccl")
    rank = int(os.environ["LOCAL_RANK"]); torch.cuda.set_device(rank)
    model = build_net(load_config(None, ["model.arch=wrn28_2"]).model, 10, 3, 32, "cifar10")
    model = torch.nn.parallel.DistributedDataParallel(model.cuda(), device_ids=[rank])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    for _ in range(3):
        loss = model(torch.randn(64, 3, 32, 32, device="cuda")).square().mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    total = torch.ones(1, device="cuda"); dist.all_reduce(total)
    assert total.item() == dist.get_world_size() and torch.isfinite(loss).item()
    print("nccl ddp ok", dist.get_backend(), dist.get_world_size())
    dist.destroy_process_group()
""")


def ddp_section(args, report: Report) -> None:
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    processes = gpus if gpus else 2
    backend = "NCCL" if gpus else "gloo (CPU)"
    report.add(f"## DDP: {processes} process(es), {backend}", "",
               "| run | result | seconds |", "|---|---|---|")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        if processes >= 2:
            steps = args.ddp_steps
            runs.append((f"`interlude train configs/digits.yaml` on {processes} ranks",
                         [*launcher, "-m", "interlude", "train", "configs/digits.yaml",
                          f"train.steps={steps}", f"train.eval_interval={steps}",
                          f"train.checkpoint_interval={steps}", "train.progress=false",
                          f"train.device={args.device}", f"train.out_dir={tmp}",
                          "train.run_name=ddp", "train.batch_size=16"]))
        if gpus == 1:
            script = Path(tmp) / "nccl_smoke.py"
            script.write_text(NCCL_SMOKE)
            runs.append(("NCCL DDP smoke test, WRN-28-2, 3 steps (1 GPU: a one-process "
                         "interlude run skips DDP)", [*launcher, str(script)]))
        for label, command in runs:
            started = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=1800)
            ok = done.returncode == 0
            summary = Path(tmp) / "ddp" / "summary.json"
            if ok and "interlude" in label:
                top1 = json.loads(summary.read_text())["last"].get("test/ema/top1", float("nan"))
                result = f"ok, test top-1 {100 * top1:.1f} %"
            else:
                result = "ok" if ok else f"FAILED (exit {done.returncode})"
            report.add(f"| {label} | {result} | {time.perf_counter() - started:.0f} |")
            if not ok:
                report.fail(f"DDP: {label}")
                print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
    report.add("")


# ---------------------------------------------------------------------- main
def main() -> int:
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
    parser.add_argument("--train-steps", type=int, default=None, help="mnist5k steps (1500)")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="largest accuracy gap (points) between device and CPU training")
    parser.add_argument("--ddp-steps", type=int, default=None, help="default 100 (quick: 2)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run with --device cpu --quick to check the script")
    quick = args.quick
    args.batch = args.batch or ([2, 2] if quick else [64, 7])
    args.arch = args.arch or ("small_cnn" if quick else "wrn28_2")
    args.reps = args.reps or (2 if quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 5)
    args.train_steps = args.train_steps or (10 if quick else 1500)
    args.ddp_steps = args.ddp_steps or (2 if quick else 100)
    if quick:
        args.workers = min(args.workers, 1)
    if args.device == "cpu" and "train.compile=true" in CONFIGS[list(CONFIGS)[-1]]:
        # inductor on a CPU compiles C++ for minutes; aot_eager still traces the step
        torch.compile = functools.partial(torch.compile, backend="aot_eager")
    if args.device == "cpu":  # "bf16 applies on CUDA only", once per CPU trainer: known here
        logging.getLogger("interlude").setLevel(logging.ERROR)
    report = Report()
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU"
    cuda = torch.version.cuda or "none"
    report.add(f"# GPU check: {name}", "",
               f"`python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
               "", f"torch {torch.__version__}, CUDA {cuda}, {torch.cuda.device_count()} GPU(s), "
               f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}", "")
    rates: dict[str, float] = {}
    for section in args.sections:
        if section == "tests":
            tests_section(args, report)
        elif section == "step":
            rates = step_section(args, report)
        elif section == "vit":
            vit_section(args, report)
        elif section == "pipeline":
            pipeline_section(args, report, rates)
        elif section == "ops":
            ops_section(args, report)
        elif section == "train":
            train_section(args, report)
        elif section == "ddp":
            ddp_section(args, report)
    verdict = "all checks passed" if not report.failures else (
        "FAILED: " + "; ".join(report.failures))
    report.add("## Verdict", "", verdict, "")
    if args.out:
        args.out.write_text("\n".join(report.lines) + "\n")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
