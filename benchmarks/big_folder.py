"""Data bigger than memory: peak RSS while training on a large image folder, cache build
throughput, and how fast a second run starts from the cache.

    python benchmarks/big_folder.py --root /tmp/interlude-big [--unlabeled 200000] [--size 64]

1. ``generate``: a synthetic folder (once; reused when it is already there): 10 classes x 20
   labeled JPEGs and ``--unlabeled`` JPEGs of ``--size`` px in 200 subfolders (smooth random
   colour fields, ~1.4 KB each).
2. ``cold``: ``interlude train`` with an empty image cache: decodes every file into the cache
   (throughput from its log line), then trains ``--steps`` steps (small CNN, batch 8 + 7 x 8
   unlabeled, device augmentation on the CPU).
3. ``warm``: the same command again (``--overwrite``, ``--repeats`` times): reads the cache.
4. ``small``: the same training on a 2,000-image unlabeled subset (its own cache), the baseline
   whose peak RSS the large run is compared with (``--repeats`` times: RSS varies by tens of MiB
   from run to run).
5. ``load``: a fresh process that only loads the data (``build_data``) from the cache, for each
   pool: how fast a second run starts, and the RSS of the data alone.
6. ``uncached`` (with ``--uncached``): the large run with ``data.cache=false`` (decoded into RAM),
   for contrast.

Peak RSS is each process's own ``VmHWM`` (``/proc/self/status``, printed at exit), which counts
the resident pages the process maps; the cache is read with ``pread``, so its pages stay in the
kernel's page cache and are not part of it. Prints a Markdown table. Linux only.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10
LABELED_PER_CLASS = 20
SHARDS = 200


def _image(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth random colour field: a 4x4 random image upsampled (JPEG-friendly, like photos)."""
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def generate(root: Path, unlabeled: int, size: int) -> None:
    marker = root / f".complete-{unlabeled}-{size}"
    if marker.is_file():
        print(f"reusing {root} ({unlabeled} unlabeled images of {size} px)", flush=True)
        return
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        folder = root / "labeled" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(LABELED_PER_CLASS):
            _image(rng, size).save(folder / f"{i}.jpg", quality=90)
    for shard in range(SHARDS):
        (root / "unlabeled" / f"{shard:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(unlabeled):
        _image(rng, size).save(root / "unlabeled" / f"{i % SHARDS:03d}" / f"{i:07d}.jpg",
                               quality=90)
        if i % 20000 == 0:
            print(f"  generated {i} / {unlabeled}", flush=True)
    small = root / "unlabeled-small"
    if not small.is_dir():
        small.mkdir()
        for i in range(2000):  # the baseline's pool: the first 2,000 files, hard-linked
            source = root / "unlabeled" / f"{i % SHARDS:03d}" / f"{i:07d}.jpg"
            os.link(source, small / source.name)
    marker.write_text("done\n")
    print(f"generated {unlabeled} images in {time.perf_counter() - started:.0f} s", flush=True)


def train_command(root: Path, pool: str, out: Path, steps: int, size: int,
                  *extra: str) -> list[str]:
    return [
        sys.executable, "-c", CLI, "train", "--overwrite",
        "data.name=imagefolder", f"data.labeled_dir={root / 'labeled'}",
        f"data.unlabeled_dir={root / pool}", f"data.resolution={size}",
        "model.arch=small_cnn", "model.width=16", "train.batch_size=8", "train.mu=7",
        f"train.steps={steps}", f"train.eval_interval={steps}", f"train.log_interval={steps}",
        f"train.checkpoint_interval={steps}", "train.progress=false", "train.device=cpu",
        "train.threads=2", f"train.out_dir={out}", f"train.run_name=big-{pool}", *extra,
    ]


PEAK = ("import atexit\natexit.register(lambda: print('VMHWM', open('/proc/self/status').read()"
        ".split('VmHWM:')[1].split()[0], flush=True))\n")
"""Prints the process's own peak RSS at exit. ``ru_maxrss`` from ``wait4`` would not do: Linux
carries the parent's peak over an exec, so a child could never report less than its parent."""
CLI = PEAK + ("import runpy, sys\nsys.argv[0] = 'interlude'\n"
              "runpy.run_module('interlude', run_name='__main__')\n")


def measured(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, output) of one process (``PEAK`` in its code)."""
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{output[-3000:]}")
    peak = next(line for line in output.splitlines() if line.startswith("VMHWM"))
    return wall, int(peak.split()[1]) / 1024, output


LOAD = PEAK + """
import sys, time
started = time.perf_counter()
from interlude.config import load_config
from interlude.data import build_data
data = build_data(load_config(None, sys.argv[1:]).data)
print(f"LOADED {len(data.unlabeled)} unlabeled in {time.perf_counter() - started:.2f} s")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/interlude-big"))
    parser.add_argument("--unlabeled", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="warm runs of each pool size")
    parser.add_argument("--uncached", action="store_true", help="also run with data.cache=false")
    args = parser.parse_args()
    root, size = args.root, args.size
    generate(root, args.unlabeled, size)
    cache, out = root / "cache", root / "runs"
    env = {**os.environ, "INTERLUDE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "2"}
    for entry in (cache / "images").glob("*") if (cache / "images").is_dir() else []:
        entry.unlink()  # a cold start
    decoded_mb = args.unlabeled * 3 * size * size / 2**20

    def train(pool: str, *extra: str) -> tuple[float, float, str]:
        return measured(train_command(root, pool, out, args.steps, size, *extra), env)

    def load(pool: str) -> tuple[float, float]:
        command = train_command(root, pool, out, args.steps, size)[5:9]
        _, rss, output = measured([sys.executable, "-c", LOAD, *command], env)
        line = next(line for line in output.splitlines() if line.startswith("LOADED"))
        return float(line.split()[-2]), rss

    rows = []
    wall, rss, log = train("unlabeled")
    match = re.search(r"cached (\d+) imagefolder-unlabeled images \((\d+) MB\) in ([\d.]+) s "
                      r"\((\d+) images/s\)", log)
    build = f"cache built in {match.group(3)} s: {match.group(4)} images/s" if match else "?"
    rows.append(("200k, cold: build the cache, then train", wall, rss, build))
    big, small = [], []
    for repeat in range(args.repeats):
        wall, rss, _ = train("unlabeled")
        big.append(rss)
        rows.append((f"200k, warm: train from the cache (#{repeat + 1})", wall, rss, ""))
    train("unlabeled-small")  # builds the small pool's cache
    for repeat in range(args.repeats):
        wall, rss, _ = train("unlabeled-small")
        small.append(rss)
        rows.append((f"2k baseline, warm (#{repeat + 1})", wall, rss, ""))
    for pool, name in (("unlabeled", "200k"), ("unlabeled-small", "2k")):
        seconds, rss = load(pool)
        rows.append((f"{name}: new process, `build_data` only", seconds, rss,
                     "wall = process start to data ready, imports included"))
    if args.uncached:
        wall, rss, _ = train("unlabeled", "data.cache=false")
        rows.append(("200k, `data.cache=false`: decode into RAM, then train", wall, rss, ""))

    print(f"\n{args.unlabeled} unlabeled images of {size} px: decoded size {decoded_mb:.0f} MiB; "
          f"{args.steps} training steps; {os.cpu_count()} CPU cores\n")
    print("| run | wall (s) | peak RSS (MiB) | note |")
    print("|---|---|---|---|")
    for name, wall, rss, note in rows:
        print(f"| {name} | {wall:.1f} | {rss:.0f} | {note} |")
    low, high = min(big) - max(small), max(big) - min(small)
    print(f"\nRSS growth of training, 200k vs 2k unlabeled: {low:.0f} to {high:.0f} MiB "
          f"({100 * low / decoded_mb:.1f} % to {100 * high / decoded_mb:.1f} % of the decoded "
          "size)")


if __name__ == "__main__":
    main()
