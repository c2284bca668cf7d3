"""Images/s of batched tensor augmentation vs the per-image PIL reference pipeline.

    python benchmarks/augment_speed.py [--device cpu|cuda] [--batch 448] [--size 32] [--threads 2]
    python benchmarks/augment_speed.py --steps 2x7 8x7 64x7 --threads 1   # whole steps' views
    python benchmarks/augment_speed.py --threads 1 --against 904f2db      # vs a commit's code

Both pipelines turn uint8 images into float ``(N, C, H, W)`` views in ``[0, 1]``: "weak+strong" is
what a FixMatch strong view costs (flip + pad-crop, RandAugmentMC n=2, Cutout). The per-image
pipeline always runs on the CPU (as DataLoader workers would, here in one process). Timings are
the median over repeated batches after a warm-up; prints a Markdown table.

``--steps B x mu ...`` times a training step's views instead (weak lw/uw/ls/us, strong ls/us):
``augment_views`` against calling ``weak_augment`` per view and ``strong_augment`` per strong
view, interleaved so machine noise hits both alike.

``--against REV`` also times the batched weak+strong view of ``interlude.data.augment`` as it was
at git revision ``REV`` (the package ``src/interlude/data/augment/``, or the single module
``augment.py`` of older revisions) against the working tree's, interleaved in the same process
(same images, same seeds), and prints the median and the interquartile range of images/s for each.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from interlude.data import augment as current_augment
from interlude.data.augment import (
    augment_views,
    strong_augment,
    strong_augment_per_image,
    to_float,
    weak_augment,
    weak_augment_per_image,
)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after two warm-up calls."""
    times = []
    for i in range(repeats + 2):
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def per_image_pipeline(arrays: list[np.ndarray], rng: random.Random) -> torch.Tensor:
    views = [strong_augment_per_image(weak_augment_per_image(a, rng), rng) for a in arrays]
    return to_float(torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2))


def step_views_table(specs: list[str], device: torch.device, repeats: int) -> None:
    """Median ms of one step's views: a per-view loop vs ``augment_views``."""
    print("\n| batch (B x mu) | images | per-view calls ms | augment_views ms | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for spec in specs:
        batch, mu = (int(v) for v in spec.split("x"))
        old, new = _step_views_ms(batch, mu, device, repeats)
        print(f"| {batch} x {mu} | {2 * batch * (1 + mu)} | {old:.1f} | {new:.1f} | "
              f"{old / new:.2f}x |")


def _step_views_ms(batch: int, mu: int, device: torch.device,
                   repeats: int) -> tuple[float, float]:
    views = ("lw", "uw", "ls", "us")
    rs = np.random.RandomState(0)
    store = torch.from_numpy(rs.randint(0, 256, (batch * (1 + mu), 3, 32, 32)).astype(
        np.uint8)).to(device)
    rows_l, rows_u = np.arange(batch), batch + np.arange(batch * mu)
    xl, xu = to_float(store[:batch]), to_float(store[batch:])
    runs = {
        "per_view": lambda g, p: per_view_calls(xl, xu, g, p),
        "new": lambda g, p: augment_views(store, rows_l, rows_u, views, g, p, True),
    }
    times: dict[str, list[float]] = {"per_view": [], "new": []}
    for rep in range(repeats + 2):
        for name in (("per_view", "new") if rep % 2 else ("new", "per_view")):
            g = torch.Generator(device=device).manual_seed(rep)
            p = torch.Generator().manual_seed(rep + 1)
            started = time.perf_counter()
            runs[name](g, p)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if rep >= 2:
                times[name].append(time.perf_counter() - started)
    return statistics.median(times["per_view"]) * 1e3, statistics.median(times["new"]) * 1e3


def per_view_calls(xl: torch.Tensor, xu: torch.Tensor, generator: torch.Generator,
                   plan: torch.Generator) -> torch.Tensor:
    """A step's views (lw, uw, ls, us) the unbatched way: one call per view."""
    weak = [weak_augment(x, generator, True) for x in (xl, xu, xl, xu)]
    strong = [strong_augment(x, generator, plan_generator=plan) for x in weak[2:]]
    return torch.cat(weak[:2] + strong)


def augment_module_at(revision: str):
    """``interlude.data.augment`` as it was at git ``revision``, loaded as a separate module:
    the package (its files extracted to a temporary folder) or, before the split, the single
    ``augment.py``."""
    root = Path(__file__).resolve().parents[1]
    name = f"augment_at_{revision}"
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    archive = subprocess.run(["git", "archive", revision, "src/interlude/data/"], cwd=root,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "src/interlude/data/augment"
    if package.is_dir():
        spec = importlib.util.spec_from_file_location(
            name, package / "__init__.py", submodule_search_locations=[str(package)])
    else:
        spec = importlib.util.spec_from_file_location(name, package.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and relative imports look their module up
    spec.loader.exec_module(module)
    return module


def against_table(revision: str, batch_uint8: torch.Tensor, device: torch.device,
                  repeats: int) -> None:
    """images/s of weak+strong, ``revision``'s code vs the working tree's, interleaved."""
    modules = {revision: augment_module_at(revision), "working tree": current_augment}
    times: dict[str, list[float]] = {name: [] for name in modules}
    n = len(batch_uint8)
    for rep in range(repeats + 2):
        for name in (list(modules) if rep % 2 else list(modules)[::-1]):
            module = modules[name]
            generator = torch.Generator(device=device).manual_seed(rep)
            started = time.perf_counter()
            module.strong_augment(module.weak_augment(to_float(batch_uint8), generator, True),
                                  generator)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if rep >= 2:
                times[name].append(time.perf_counter() - started)
    print(f"\nbatched weak+strong, interleaved, {repeats} batches each\n")
    print("| code | median ms / batch | images/s (median) | images/s (25th-75th pct) |")
    print("|---|---:|---:|---:|")
    for name, seconds in times.items():
        low, high = np.quantile(seconds, [0.75, 0.25])
        median = statistics.median(seconds)
        print(f"| {name} | {1e3 * median:.1f} | {n / median:,.0f} | {n / low:,.0f}-{n / high:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=448)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", nargs="+", default=None, metavar="BxMU",
                        help="time whole steps' views (per-view calls vs augment_views) instead")
    parser.add_argument("--against", default=None, metavar="REV",
                        help="also time weak+strong of the augment code at git revision REV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.steps:
        print(f"\nA step's views (InterLUDE), 32x32x3, torch threads {args.threads}")
        step_views_table(args.steps, device, args.repeats)
        return

    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, (args.batch, args.size, args.size, 3)).astype(np.uint8)
    arrays = list(images)
    batch_uint8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    rng = random.Random(0)

    def batched_weak() -> torch.Tensor:
        return weak_augment(to_float(batch_uint8), generator, hflip=True)

    def batched_strong() -> torch.Tensor:
        return strong_augment(batched_weak(), generator)

    rows = [
        ("per-image PIL, weak+strong", "cpu", median_seconds(
            lambda: per_image_pipeline(arrays, rng), torch.device("cpu"),
            max(3, args.repeats // 4))),
        ("batched, weak", args.device, median_seconds(batched_weak, device, args.repeats)),
        ("batched, weak+strong", args.device, median_seconds(batched_strong, device,
                                                             args.repeats)),
    ]
    baseline = rows[0][2]
    print(f"\n{args.batch} images of {args.size}x{args.size}x3, torch threads {args.threads}\n")
    print("| pipeline | device | ms / batch | images/s | vs per-image |")
    print("|---|---|---:|---:|---:|")
    for name, dev, seconds in rows:
        print(f"| {name} | {dev} | {1e3 * seconds:.1f} | {args.batch / seconds:,.0f} "
              f"| {baseline / seconds:.1f}x |")
    if args.against:
        against_table(args.against, batch_uint8, device, args.repeats)


if __name__ == "__main__":
    main()
