"""``benchmarks/gpu_check.py`` (the one command a GPU user runs) works end to end, and keeps
going when a section fails or runs out of time.

Without a GPU it runs with ``--device cpu --quick``: every section at tiny sizes, through the
same code paths (trainers in each precision/layout/compile configuration, both input pipelines,
the operator counts, the profiler, digits trainings, a two-process gloo DDP run and its resume).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

TITLES = (
    "# GPU check:", "## Environment", "## CUDA-only tests", "## Training step",
    "## ViT step", "## Input pipeline alone", "## Dispatched aten operators per step",
    "## Profile of a step", "## Short training: digits", "## DDP", "## torch.compile",
    "## Verdict",
)


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out",
         str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    markdown = out.read_text()
    positions = [markdown.find(title) for title in TITLES]
    assert -1 not in positions and positions == sorted(positions), positions
    step = markdown[markdown.find("## Training step"):markdown.find("## ViT step")]
    for config in ("| fp32 |", "| bf16 |", "| bf16 + channels_last |"):
        assert step.count(config) == len(gpu_check.ALGORITHMS), config
    vit = markdown[markdown.find("## ViT step"):markdown.find("## Input pipeline alone")]
    assert "timm/vit_tiny_patch16_224" in vit and vit.count("| fp32 |") == vit.count("| bf16 |") == 1
    assert "augment_on: workers" in markdown and "augment_on: device" in markdown
    ddp = markdown[markdown.find("## DDP"):markdown.find("## torch.compile")]
    assert ddp.count("| ok") == 2 and "resume in 1 process" in ddp
    compiled = markdown[markdown.find("## torch.compile"):markdown.find("## Verdict")]
    assert compiled.count("| interlude |") == 2 and "| reduce-overhead |" in compiled
    assert "all checks passed" in markdown
    assert "## Verdict" in done.stdout  # the Markdown is printed too (to paste)


def _args(**kw):
    return SimpleNamespace(section_budget=lambda name: kw.get("budget", 60.0), **kw)


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    def broken(args, report, clock):
        report.add("half a table")
        raise RuntimeError("CUDA error: an illegal memory access")

    def fine(args, report, clock):
        report.add("measured")

    monkeypatch.setitem(gpu_check.SECTION_FUNCTIONS, "step", ("Training step", broken))
    monkeypatch.setitem(gpu_check.SECTION_FUNCTIONS, "vit", ("ViT step", fine))
    report = gpu_check.Report(tmp_path / "out.md")
    clock = gpu_check.Clock(100.0)
    gpu_check.run_section("step", _args(), report, clock)
    assert "half a table" in (tmp_path / "out.md").read_text()  # written after each section
    gpu_check.run_section("vit", _args(), report, clock)
    text = (tmp_path / "out.md").read_text()
    assert "FAILED: RuntimeError: CUDA error" in text and "measured" in text
    assert report.failures == ["step: RuntimeError"]


def test_a_section_past_its_budget_is_stopped(tmp_path, monkeypatch):
    def slow(args, report, clock):
        report.add("first row")
        time.sleep(30)

    monkeypatch.setitem(gpu_check.SECTION_FUNCTIONS, "step", ("Training step", slow))
    report = gpu_check.Report(tmp_path / "out.md")
    started = time.perf_counter()
    gpu_check.run_section("step", _args(budget=6.0), report, gpu_check.Clock(100.0))
    assert time.perf_counter() - started < 10
    assert "first row" in report.lines and "Stopped: ran past its 6 s budget" in "\n".join(
        report.lines)
    assert report.failures == ["step: timed out"]


def test_the_total_budget_skips_what_no_longer_fits(tmp_path):
    report = gpu_check.Report(tmp_path / "out.md")
    clock = gpu_check.Clock(3.0)
    gpu_check.run_section("env", _args(), report, clock)
    assert "Skipped: the run's budget" in (tmp_path / "out.md").read_text()
    assert report.failures == ["env: not run (budget)"]


def test_agreement_tolerance_is_three_standard_errors():
    device, cpu = [95.0, 96.0, 97.0], [96.0, 96.5, 97.5]
    se = (statistics.variance(device) / 3 + statistics.variance(cpu) / 3) ** 0.5
    assert gpu_check.agreement_tolerance(device, cpu, floor=0.1) == pytest.approx(3 * se)
    assert gpu_check.agreement_tolerance([96.0] * 3, [96.0] * 3, floor=0.28) == 0.28
