"""Train on your own images: a runnable end-to-end example with a made-up image folder dataset.

It draws coloured shapes (circle / square / triangle) of assorted sizes into the layout
``interlude`` reads, then trains briefly through the command line, exactly as you would on your
own folders::

    python examples/own_images.py                 # temporary folder, deleted afterwards
    python examples/own_images.py --out shapes    # keep the images and the run in ./shapes

The equivalent command for your data is printed before training starts.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "imagefolder_example.yaml"


def draw_shape(shape: str, rng: np.random.Generator) -> Image.Image:
    """One RGB picture of ``shape`` with a random size, colour, position and noisy background."""
    size = int(rng.integers(24, 64))  # mixed sizes: interlude resizes them on load
    background = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    pen = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(120, 256, 3))
    r = size * rng.uniform(0.2, 0.35)
    cx, cy = rng.uniform(r, size - r, 2)
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def write_dataset(root: Path, labeled: int, unlabeled: int, test: int, seed: int = 0) -> None:
    """``labeled/<class>/``, ``unlabeled/`` (no class folders) and ``test/<class>/``."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        for split, count in (("labeled", labeled), ("test", test)):
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_shape(shape, rng).save(folder / f"{shape}_{i}.png")
    (root / "unlabeled").mkdir(parents=True, exist_ok=True)
    for i in range(unlabeled):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        draw_shape(shape, rng).save(root / "unlabeled" / f"img_{i:04d}.jpg", quality=90)


def train_command(root: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "interlude", "train", str(CONFIG),
        f"data.labeled_dir={root / 'labeled'}",
        f"data.unlabeled_dir={root / 'unlabeled'}",
        f"data.test_dir={root / 'test'}",
        "data.resolution=16",
        f"train.steps={steps}",
        "train.batch_size=8",
        "train.mu=2",
        "train.ema_decay=0.9",  # a short run: the default 0.999 average would still be near init
        f"train.eval_interval={steps}",
        f"train.checkpoint_interval={steps}",
        f"train.log_interval={max(1, steps // 5)}",
        "train.device=cpu",
        "train.progress=false",
        f"train.out_dir={root / 'runs'}",
        "train.run_name=shapes",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the images and the run (default: a temporary folder)")
    parser.add_argument("--steps", type=int, default=120, help="training steps (default 120)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.out or Path(tmp)).resolve()
        write_dataset(root, labeled=6, unlabeled=60, test=10)
        command = train_command(root, args.steps)
        print("images written to", root)
        print("running:", " ".join(command[1:]), flush=True)
        result = subprocess.run(command, cwd=REPO, check=False)
        if result.returncode == 0:
            kept = "" if args.out else " (temporary: pass --out DIR to keep it)"
            print(f"run folder: {root / 'runs' / 'shapes'}{kept}")
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
