"""Speed of one training step (FixMatch vs InterLUDE vs InterLUDE+) and of the augmentation paths.

    python benchmarks/speed.py                                  # CPU defaults: WRN-28-2, B=2, mu=7
    python benchmarks/speed.py --device cuda --batches 64x7 8x7 --precision bf16
    python benchmarks/speed.py --sections step --reps 40 --threads 1
    python benchmarks/speed.py --sections ops --batches 64x7               # dispatched operators

Sections (``--sections``, default all):

- ``step``: images/s of ``Trainer.train_step`` on WRN-28-2 with synthetic 32x32 data, for
  ``fixmatch`` (forwards lw, uw, us), ``fixmatch4`` (FixMatch forwarding the *same* four views as
  InterLUDE: lw, uw, ls, us, in natural order, no fusion), ``interlude`` and ``interlude_plus``
  (when installed). ``interlude`` vs ``fixmatch4`` differ only by the layout permutation, the
  embedding fusion and the DC loss, which is InterLUDE's whole overhead. Three timings per step:
  ``model`` (batch prebuilt: layout, forward, loss, backward, SGD, EMA), ``full`` (plus the
  batched augmentation) and ``floor``: a bare forward + cross-entropy + backward + SGD of the
  same net on the same batch, nothing else; ``full / floor`` is what the training step costs on
  top of the network itself. Algorithms are interleaved (rotated order) for ``--reps`` rounds
  and the median is reported, so machine noise hits all of them alike.
- ``ops``: aten operators dispatched by one step (``interlude.train.opcount``, torch profiler,
  nested calls included): the augmentation of all views, the whole input pipeline, the model
  step, and the bare forward + backward + SGD. On a GPU each costs launch/dispatch time whatever
  the batch size, so this is the launch overhead, measurable on the CPU. The model-step counts
  do not depend on the batch; they are taken at 2 x 7 to keep the CPU time short.
- ``overhead``: the three things InterLUDE adds, timed alone at the step's shapes: the layout
  gather of the input batch, fusion (roll + lerp) forward and backward at the fusion point, and the
  DC loss forward and backward.
- ``memory``: peak memory of one step. CUDA: ``torch.cuda.max_memory_allocated``. CPU: each
  configuration runs in a fresh subprocess and reports the growth of the peak resident set
  (``VmHWM`` after ``clear_refs``) during one step, with glibc told to return large blocks.
- ``augment``: images/s of a strong view (flip + pad-crop, RandAugment n=2, Cutout) at 32x32:
  per-image PIL in one process, batched tensors on ``--device`` (the plan drawn on the host, as
  in training; the same batched code serves the CPU and the GPU, so run the section once per
  device for both figures), and the ``augment_on: workers`` DataLoader with ``--workers``
  processes.

Prints Markdown tables (copy them into ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from interlude.algorithms import AlgorithmContext, build_algorithm
from interlude.algorithms.fixmatch import FixMatch
from interlude.algorithms.interlude import dc_loss_avg
from interlude.config import load_config
from interlude.data.augment import (
    strong_augment,
    strong_augment_per_image,
    to_float,
    weak_augment,
    weak_augment_per_image,
)
from interlude.data.base import SSLData
from interlude.data.sampler import StepSampler
from interlude.data.synthetic import synthetic_data
from interlude.nets import fuse_with_next
from interlude.train import build_trainer
from interlude.train.forward import permute_rows
from interlude.train.loop import Trainer
from interlude.train.opcount import AUGMENT_RANGE, count_aten_ops, floor_step_fn, step_op_counts
from interlude.train.optim import build_optimizer
from interlude.train.workers import PairedViews, WorkerBatches

ALGORITHMS = ("fixmatch", "fixmatch4", "interlude", "interlude_plus")
SIZE, CLASSES = 32, 10


class FixMatch4(FixMatch):
    """FixMatch that forwards (and batch-normalises over) the same four views as InterLUDE."""

    name = "fixmatch4"
    views = ("lw", "uw", "ls", "us")


# ---------------------------------------------------------------------- setup
def make_trainer(
    name: str, batch: int, mu: int, device: str, precision: str, data: SSLData, run_dir: Path,
    overrides: Sequence[str] = (), arch: str = "wrn28_2",
) -> Trainer:
    """A Trainer built by the function a real run uses (``interlude.train.build_trainer``: the
    algorithm's fusion strength, seeding, precision, channels_last, compile), on ``data``."""
    base = "fixmatch" if name == "fixmatch4" else name
    cfg = load_config(None, [
        f"model.arch={arch}", f"algorithm.name={base}", f"train.batch_size={batch}",
        f"train.mu={mu}", f"train.device={device}", f"train.precision={precision}",
        "train.steps=1000000", "train.progress=false", *overrides,
    ])
    trainer = build_trainer(cfg, run_dir, data=data)
    if name == "fixmatch4":  # the same net (FixMatch has no fusion), four views in natural order
        algorithm = FixMatch4(trainer.cfg.algorithm, AlgorithmContext(data.num_classes))
        trainer = Trainer(trainer.cfg, data, trainer.model, algorithm, run_dir, trainer.device)
        _natural_layout(trainer)
    return trainer


def _natural_layout(trainer: Trainer) -> None:
    """Forward in natural order (views concatenated): FixMatch needs no pairing."""
    layout = trainer.layout
    identity = torch.arange(len(layout.order), device=layout.order.device)
    trainer.layout = type(layout)(
        layout.views, layout.batch_size, layout.mu, identity, identity, layout.slices
    )


def available(name: str) -> bool:
    if name == "fixmatch4":
        return True
    try:
        build_algorithm(load_config(None, [f"algorithm.name={name}"]).algorithm,
                        AlgorithmContext(CLASSES, num_unlabeled=10))
    except Exception:  # not installed yet (algorithm modules are imported on demand)
        return False
    return True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- step timing
KINDS = ("model", "full", "floor")


def floor_step(trainer: Trainer, x: torch.Tensor) -> Callable[[], None]:
    """The bare step of ``trainer``'s network (a copy, same memory format and precision) on
    ``x``: forward, cross-entropy, backward, the same optimizer; nothing else."""
    model = copy.deepcopy(trainer.model)
    step = floor_step_fn(model, x, build_optimizer(model, trainer.cfg.train))
    if not trainer.autocast:
        return step

    def autocast_step() -> None:
        with torch.autocast("cuda", torch.bfloat16):
            step()

    return autocast_step


def time_steps(trainers: dict[str, Trainer], reps: int, warmup: int) -> dict[str, dict]:
    """Median seconds of a model step, a full step and the floor per algorithm, interleaved."""
    cached = {name: t.batches.build(0) for name, t in trainers.items()}
    floors = {name: floor_step(t, cached[name].x) for name, t in trainers.items()}
    names = list(trainers)
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in KINDS} for n in names}
    for rep in range(warmup + reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            trainer = trainers[name]
            for kind in KINDS:
                times[name][kind].append(
                    _timed(floors[name], trainer.device) if kind == "floor"
                    else _one_step(trainer, rep, cached[name], kind))
    result = {}
    for name in names:
        trainer = trainers[name]
        result[name] = {"images": trainer.layout.order.numel()}
        for kind in KINDS:
            result[name][f"{kind}_s"] = statistics.median(times[name][kind][warmup:])
    return result


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def _one_step(trainer: Trainer, step: int, batch, kind: str) -> float:
    build = trainer.batches.build
    if kind == "model":
        trainer.batches.build = lambda _step: batch  # type: ignore[method-assign]
    elapsed = _timed(lambda: trainer.train_step(step), trainer.device)
    trainer.batches.build = build  # type: ignore[method-assign]
    return elapsed


def step_section(args, device: str) -> list[str]:
    names = [n for n in args.algorithms if available(n)]
    missing = [n for n in args.algorithms if n not in names]
    rows = [
        "| batch (B x mu) | algorithm | images/step | model step ms | model img/s | "
        "full step ms | full img/s | floor ms | full / floor | model vs fixmatch4 | "
        "full vs fixmatch4 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    data = synthetic_data()
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.batches:
            batch, mu = (int(v) for v in spec.split("x"))
            trainers = {
                n: make_trainer(n, batch, mu, device, args.precision, data, Path(tmp))
                for n in names
            }
            result = time_steps(trainers, args.reps, args.warmup)
            ref = result.get("fixmatch4")
            for name, r in result.items():
                rel_model = f"{r['model_s'] / ref['model_s'] - 1:+.1%}" if ref else "-"
                rel_full = f"{r['full_s'] / ref['full_s'] - 1:+.1%}" if ref else "-"
                rows.append(
                    f"| {batch} x {mu} | {name} | {r['images']} | {r['model_s'] * 1e3:.1f} | "
                    f"{r['images'] / r['model_s']:.0f} | {r['full_s'] * 1e3:.1f} | "
                    f"{r['images'] / r['full_s']:.0f} | {r['floor_s'] * 1e3:.1f} | "
                    f"{r['full_s'] / r['floor_s']:.2f} | {rel_model} | {rel_full} |"
                )
            del trainers
    if missing:
        rows.append(f"\nnot available here: {', '.join(missing)}")
    return rows


# ---------------------------------------------------------------------- dispatched operators
def ops_section(args, device: str) -> list[str]:
    """Aten operators of one step: augmentation and input pipeline at each ``--batches`` spec,
    model step and the bare forward + backward + SGD at 2 x 7 (they do not depend on it)."""
    names = [n for n in args.algorithms if available(n) and n != "fixmatch4"]
    rows = [
        "| batch (B x mu) | algorithm | augmentation (all views) | input pipeline | "
        "model step | bare fwd+bwd+SGD | step total |",
        "|---|---|---|---|---|---|---|",
    ]
    data = synthetic_data()
    with tempfile.TemporaryDirectory() as tmp:
        model_ops = {}
        for name in names:
            trainer = make_trainer(name, 2, 7, device, args.precision, data, Path(tmp))
            step = step_op_counts(trainer, 1)
            floor = floor_step(trainer, step.input.result.x)
            floor()
            model_ops[name] = (step.model.total, count_aten_ops(floor).total)
        for spec in args.batches:
            batch, mu = (int(v) for v in spec.split("x"))
            for name in names:
                trainer = make_trainer(name, batch, mu, device, args.precision, data, Path(tmp))
                trainer.batches.build(0)  # constant tables are made once, not counted
                built = count_aten_ops(lambda trainer=trainer: trainer.batches.build(1))
                augmentation = built.within[AUGMENT_RANGE]
                model, floor = model_ops[name]
                rows.append(f"| {batch} x {mu} | {name} | {augmentation} | {built.total} | "
                            f"{model} | {floor} | {built.total + model} |")
    return rows


# ---------------------------------------------------------------------- InterLUDE's own ops
def overhead_section(args, device: str) -> list[str]:
    """Time the three things InterLUDE adds to a step, alone, at the step's real shapes."""
    rows = [
        "| batch (B x mu) | layout gather us | fusion fwd+bwd us | DC loss fwd+bwd us |",
        "|---|---|---|---|",
    ]
    for spec in args.batches:
        batch, mu = (int(v) for v in spec.split("x"))
        times = _overhead_us(batch, mu, device, args)
        rows.append(f"| {batch} x {mu} | " + " | ".join(f"{t:.0f}" for t in times) + " |")
    return rows


def _overhead_us(batch: int, mu: int, device: str, args) -> list[float]:
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer("interlude", batch, mu, device, args.precision,
                               synthetic_data(), Path(tmp))
    x = trainer.batches.build(0).x
    order = trainer.layout.order
    h = torch.randn(_fusion_input_shape(trainer, x), device=dev, requires_grad=True)
    logits = [torch.randn(n, CLASSES, device=dev, requires_grad=True)
              for n in (batch, batch, batch * mu, batch * mu)]

    def gather() -> None:
        permute_rows(x, order)

    def fusion() -> None:
        fuse_with_next(h, 0.1).backward(torch.ones_like(h))

    def dc() -> None:
        dc_loss_avg(*logits, mu).backward()

    return [_median(fn, dev, args.reps) * 1e6 for fn in (gather, fusion, dc)]


def _fusion_input_shape(trainer: Trainer, x: torch.Tensor) -> tuple[int, ...]:
    shapes: list[tuple[int, ...]] = []
    hook = trainer.model.fusion.register_forward_hook(
        lambda module, inputs, output: shapes.append(tuple(inputs[0].shape))
    )
    with torch.no_grad():
        trainer.model(x)
    hook.remove()
    return shapes[0]


# ---------------------------------------------------------------------- memory
def memory_section(args, device: str) -> list[str]:
    names = [n for n in args.algorithms if available(n)]
    unit = "peak allocated MiB" if device.startswith("cuda") else "step RSS growth MiB"
    rows = [f"| batch (B x mu) | algorithm | {unit} |", "|---|---|---|"]
    for spec in args.batches:
        for name in names:
            if device.startswith("cuda"):
                value = _cuda_peak(name, spec, device, args.precision)
            else:
                value = _cpu_peak_subprocess(name, spec, args)
            rows.append(f"| {spec.replace('x', ' x ')} | {name} | {value} |")
    return rows


def _cuda_peak(name: str, spec: str, device: str, precision: str) -> str:
    batch, mu = (int(v) for v in spec.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(name, batch, mu, device, precision, synthetic_data(), Path(tmp))
        trainer.train_step(0)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        trainer.train_step(1)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        del trainer
        torch.cuda.empty_cache()
    return f"{peak:.0f}"


def _cpu_peak_subprocess(name: str, spec: str, args) -> str:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--_memory-probe", name, spec,
               "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    lines = result.stdout.strip().splitlines()
    return lines[-1] if result.returncode == 0 and lines else "n/a"


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def memory_probe(name: str, spec: str) -> None:
    """Child process: print the peak RSS growth (MiB) of one step after a warm-up step."""
    batch, mu = (int(v) for v in spec.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(name, batch, mu, "cpu", "fp32", synthetic_data(), Path(tmp))
        trainer.train_step(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            print("n/a")
            return
        before = _proc_status_kib("VmRSS")
        trainer.train_step(1)
        print(f"{(_proc_status_kib('VmHWM') - before) / 1024:.0f}")


# ---------------------------------------------------------------------- augmentation
def augment_section(args, device: str) -> list[str]:
    n = args.aug_batch
    data = synthetic_data(labeled=n, unlabeled=n)
    images = data.labeled.images.read(np.arange(len(data.labeled)))  # synthetic: small
    arrays = [np.ascontiguousarray(im.transpose(1, 2, 0)) for im in images]
    rng = random.Random(0)
    dev = torch.device(device)
    x = to_float(torch.from_numpy(images).to(dev))
    generator = torch.Generator(device=dev).manual_seed(0)
    plan = torch.Generator().manual_seed(1)  # the op plan on the host, as training draws it

    def per_image() -> None:
        for a in arrays:
            strong_augment_per_image(weak_augment_per_image(a, rng), rng)

    def batched() -> None:
        strong_augment(weak_augment(x, generator, True), generator, plan_generator=plan)

    rows = ["| pipeline | where | strong views/s |", "|---|---|---|"]
    per_image_rate = n / _median(per_image, dev, args.aug_reps)
    batched_rate = n / _median(batched, dev, args.aug_reps)
    rows.append(f"| per-image PIL | 1 CPU process | {per_image_rate:.0f} |")
    path = "shared CPU/GPU path"  # interlude.data.augment: one batched path for every device
    rows.append(f"| batched tensors ({path}) | {device} ({args.threads} threads) | "
                f"{batched_rate:.0f} |")
    rows.append(f"| workers DataLoader | {args.workers} worker processes | "
                f"{_workers_rate(data, args):.0f} |")
    rows.append(f"\nbatched / per-image: {batched_rate / per_image_rate:.1f}x")
    return rows


def _workers_rate(data: SSLData, args) -> float:
    """Strong views/s delivered by the ``augment_on: workers`` loader (strong views only)."""
    batch, mu = 8, 7
    sampler = StepSampler(len(data.labeled), len(data.unlabeled), batch, mu, seed=0)
    dataset = PairedViews(data.labeled.images, data.unlabeled.images, ("ls", "us"), True, 0)
    steps = max(2, args.aug_batch * args.aug_reps // (batch * (1 + mu)))
    loader = WorkerBatches(dataset, sampler, steps + 1, args.workers)
    loader.get(0)  # start the workers
    started = time.perf_counter()
    for step in range(1, steps + 1):
        loader.get(step)
    elapsed = time.perf_counter() - started
    loader.close()
    return steps * batch * (1 + mu) / elapsed


def _median(fn: Callable[[], None], device: torch.device, reps: int) -> float:
    times = []
    for i in range(reps + 1):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        if i:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", nargs="+", default=None,
                        help="B x mu per step, e.g. 64x7 (default: 64x7 8x7 on CUDA, 2x7 on CPU)")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--sections", nargs="+",
                        default=["step", "ops", "overhead", "memory", "augment"])
    parser.add_argument("--precision", default=None, help="fp32|bf16 (default bf16 on CUDA)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--aug-batch", type=int, default=448)
    parser.add_argument("--aug-reps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--_memory-probe", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args._memory_probe:
        memory_probe(*args._memory_probe)
        return
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.batches = args.batches or (["64x7", "8x7"] if cuda else ["2x7"])
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {args.threads} thread(s)"
    print(f"# speed: {name}, torch {torch.__version__}, precision {args.precision}, "
          f"WRN-28-2 32x32, reps {args.reps} (median)\n")
    sections = {
        "step": step_section, "ops": ops_section, "overhead": overhead_section,
        "memory": memory_section, "augment": augment_section,
    }
    for section in args.sections:
        print(f"## {section}\n")
        print("\n".join(sections[section](args, device)) + "\n", flush=True)


if __name__ == "__main__":
    main()
