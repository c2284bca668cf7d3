"""Images/s of batched tensor augmentation vs the per-image PIL reference pipeline.

    python benchmarks/augment_speed.py [--device cpu|cuda] [--batch 448] [--size 32] [--threads 2]

Both pipelines turn uint8 images into float ``(N, C, H, W)`` views in ``[0, 1]``: "weak+strong" is
what a FixMatch strong view costs (flip + pad-crop, RandAugmentMC n=2, Cutout). The per-image
pipeline always runs on the CPU (as DataLoader workers would, here in one process). Timings are
the median over repeated batches after a warm-up; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from interlude.data.augment import (
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=448)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

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


if __name__ == "__main__":
    main()
