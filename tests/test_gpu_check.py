"""``benchmarks/gpu_check.py`` (the one command a GPU user runs) works end to end.

Without a GPU it runs with ``--device cpu --quick``: every section at tiny sizes, through the
same code paths (trainers in each precision/layout/compile configuration, both input pipelines,
the operator counts, two short mnist5k trainings, a two-process gloo DDP run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "# GPU check:", "## CUDA-only tests", "## Training step:", "## ViT step:",
    "## Input pipeline alone:",
    "## Dispatched aten operators per step", "## Short training: mnist5k", "## DDP:",
    "## Verdict",
)


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out",
         str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    markdown = out.read_text()
    positions = [markdown.find(section) for section in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), positions
    step = markdown[markdown.find("## Training step:"):markdown.find("## ViT step:")]
    for config in ("| fp32 |", "| bf16 |", "| bf16 + channels_last |",
                   "| bf16 + channels_last + compile |"):
        assert step.count(config) == 3, config  # FixMatch, InterLUDE, InterLUDE+
    vit = markdown[markdown.find("## ViT step:"):markdown.find("## Input pipeline alone:")]
    assert "timm/vit_tiny_patch16_224" in vit and vit.count("| fp32 |") == vit.count("| bf16 |") == 1
    assert "augment_on: workers" in markdown and "augment_on: device" in markdown
    assert "all checks passed" in markdown
    assert "## Verdict" in done.stdout  # the Markdown is printed too (to paste)
