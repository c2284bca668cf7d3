"""SVHN ``extra``: streaming it into the image cache vs ``scipy.io.loadmat`` (peak RSS, time).

    python benchmarks/svhn_extra.py [--root /tmp/svhn-big] [--images 100000]

Writes (once) SVHN-format ``.mat`` files with scipy (``extra_32x32.mat`` compressed, as the
official one, holding ``--images`` 32x32 images made of 8x8-pixel blocks, so it compresses like
photos), then measures in separate processes, both with torch imported: ``load_raw`` of ``svhn``
with ``data.svhn_extra=true`` and an empty cache (the streaming conversion), and ``loadmat`` of
the same file (what reading it whole costs). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PEAK = ("import atexit\natexit.register(lambda: print('VMHWM', open('/proc/self/status').read()"
        ".split('VmHWM:')[1].split()[0], flush=True))\n")
"""The process's own peak RSS, printed at exit (``wait4``'s ``ru_maxrss`` includes the parent's
peak carried over the exec)."""
STREAM = PEAK + """
import logging, sys, torch
logging.basicConfig(level=logging.INFO, format="%(message)s")
from interlude.config import load_config
from interlude.data import load_raw
raw = load_raw(load_config(None, ["data.name=svhn", f"data.data_dir={sys.argv[1]}",
                                  "data.svhn_extra=true"]).data)
print("ROWS", len(raw.extra_unlabeled))
"""
LOADMAT = PEAK + """
import sys, torch
from scipy.io import loadmat
print("ROWS", loadmat(sys.argv[1] + "/extra_32x32.mat")["X"].shape[3])
"""


def write(root: Path, images: int) -> None:
    from scipy.io import savemat

    if (root / f".complete-{images}").is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 1000), ("test", 200), ("extra", images)):
        blocks = rng.integers(0, 256, (4, 4, 3, n), dtype=np.uint8)
        x = np.repeat(np.repeat(blocks, 8, 0), 8, 1)  # (32, 32, 3, N), as the official files
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(-1, 1)
        savemat(root / f"{name}_32x32.mat", {"X": x, "y": y}, do_compression=True)
    (root / f".complete-{images}").write_text("done\n")


def measured(code: str, root: Path, env: dict[str, str]) -> tuple[float, float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, str(root)], env=env,
                            capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(output[-3000:])
    peak = next(line for line in output.splitlines() if line.startswith("VMHWM"))
    return time.perf_counter() - started, int(peak.split()[1]) / 1024, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/svhn-big"))
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    write(args.root, args.images)
    cache = args.root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "INTERLUDE_CACHE_DIR": str(cache)}
    size = (args.root / "extra_32x32.mat").stat().st_size / 2**20
    print(f"\nextra_32x32.mat: {args.images} images, {size:.0f} MiB compressed, "
          f"{args.images * 3072 / 2**20:.0f} MiB decoded\n")
    print("| reader | wall (s) | peak RSS (MiB) | note |")
    print("|---|---|---|---|")
    wall, rss, out = measured(STREAM, args.root, env)
    rate = re.search(r"in ([\d.]+) s \((\d+) images/s\)", out)
    note = f"conversion {rate.group(1)} s, {rate.group(2)} images/s" if rate else ""
    print(f"| streamed into the cache (`data.svhn_extra=true`) | {wall:.1f} | {rss:.0f} | {note} |")
    wall, rss, _ = measured(LOADMAT, args.root, env)
    print(f"| `scipy.io.loadmat` | {wall:.1f} | {rss:.0f} | whole array in RAM |")


if __name__ == "__main__":
    main()
