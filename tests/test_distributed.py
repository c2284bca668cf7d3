"""DDP on CPU: two gloo processes launched by ``torchrun`` through the real CLI.

One launch runs two phases (``python -m torch.distributed.run ... tests/test_distributed.py``):

- ``exact``: InterLUDE with GroupNorm, ``augment_on: workers`` (augmentation seeded per global
  row, so each rank augments its rows exactly as one process would) and fusion off (fusion is
  per rank by design: the one cyclic wrap-around row of each shard differs). Trained to step 3,
  stopped, then resumed to step 6 under DDP. It must match a single-process run of the same
  global batch, which checks the gradient averaging, the resume and the sharded evaluation.
- ``bn``: the default small CNN (BatchNorm) with fusion and device augmentation: the ranks must
  end with identical weights, EMA included (buffers are broadcast from rank 0 before evaluation).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from interlude.train.distributed import DistContext, shard_range

BASE = [
    "data.name=digits", "model.width=8", "train.batch_size=8", "train.mu=2", "train.steps=6",
    "train.eval_interval=3", "train.log_interval=3", "train.checkpoint_interval=3",
    "train.progress=false", "train.device=cpu", "train.threads=1", "algorithm.name=interlude",
]
EXACT = [*BASE, "train.augment_on=workers", "train.num_workers=0",
         "algorithm.fusion_strength=0.0", "train.run_name=exact"]
BN = [*BASE, "train.steps=4", "train.run_name=bn"]
# stateful algorithms: a low FlexMatch threshold fills its per-image memory within 3 steps
FLEX = [*BASE, "train.steps=3", "algorithm.name=flexmatch", "algorithm.threshold=0.2",
        "train.run_name=flex"]
PLUS = [*BASE, "train.steps=3", "algorithm.name=interlude_plus", "train.run_name=plus"]


def _conv_gn(in_ch: int, out_ch: int, stride: int, bn_momentum: float) -> list[nn.Module]:
    """small_cnn's conv block with GroupNorm: no batch statistics, so DDP == one process."""
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
        nn.GroupNorm(4, out_ch),
        nn.LeakyReLU(0.1, inplace=True),
    ]


@contextmanager
def group_norm():
    from interlude.nets import small_cnn

    original = small_cnn._conv_bn
    small_cnn._conv_bn = _conv_gn
    try:
        yield
    finally:
        small_cnn._conv_bn = original


# ---------------------------------------------------------------------- torchrun entry point
def _rank_main(out_dir: Path) -> None:
    """Each rank: train both phases through ``interlude train`` and dump its final state."""
    from interlude.cli import main
    from interlude.train.ema import unwrap
    from interlude.train.loop import Trainer

    original_fit = Trainer.fit

    def fit_and_dump(self, stop_after=None):
        summary = original_fit(self, stop_after=stop_after)
        state = {"model": unwrap(self.model).state_dict(), "ema": self.ema.state_dict(),
                 "algorithm": self.algorithm.state_dict()}
        name = f"{self.cfg.train.run_name}-rank{self.dist.rank}-step{self.step}.pt"
        torch.save(state, out_dir / name)
        return summary

    Trainer.fit = fit_and_dump  # type: ignore[method-assign]
    runs = f"train.out_dir={out_dir / 'runs'}"
    with group_norm():
        assert main(["train", *EXACT, runs, "--stop-after", "3"]) == 0
        assert main(["train", *EXACT, runs, "--resume"]) == 0
    assert main(["train", *BN, runs]) == 0
    assert main(["train", *FLEX, runs]) == 0
    assert main(["train", *PLUS, runs]) == 0


# ---------------------------------------------------------------------- tests
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}", __file__, str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=150, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_states(a: dict, b: dict, exact: bool, atol: float = 0.0) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            other = b[part][key]
            if exact or not value.is_floating_point():
                assert torch.equal(value, other), f"{part}.{key} differs"
            else:
                assert torch.allclose(value, other, atol=atol, rtol=1e-4), (
                    f"{part}.{key}: max diff {(value - other).abs().max():.2e}"
                )


def test_ranks_end_with_identical_weights(ddp_run):
    for name, step in (("exact", 6), ("bn", 4)):
        rank0 = _load(ddp_run / f"{name}-rank0-step{step}.pt")
        rank1 = _load(ddp_run / f"{name}-rank1-step{step}.pt")
        _assert_states(rank0, rank1, exact=True)


def test_algorithm_state_identical_across_ranks(ddp_run):
    """FreeMatch statistics are averaged and FlexMatch updates gathered over ranks."""
    flex0 = _load(ddp_run / "flex-rank0-step3.pt")["algorithm"]
    flex1 = _load(ddp_run / "flex-rank1-step3.pt")["algorithm"]
    assert (flex0["selected_label"] >= 0).sum() > 8  # both shards' images were remembered
    assert torch.equal(flex0["selected_label"], flex1["selected_label"])
    plus0 = _load(ddp_run / "plus-rank0-step3.pt")["algorithm"]
    plus1 = _load(ddp_run / "plus-rank1-step3.pt")["algorithm"]
    for key in ("global_confidence", "class_confidence", "label_histogram"):
        assert torch.allclose(plus0[key], plus1[key], atol=1e-6), key


def test_ddp_resume_equals_single_process_global_batch(ddp_run, tmp_path):
    from interlude.config import load_config
    from interlude.nets.small_cnn import SmallCNN
    from interlude.train import run

    single_dir = tmp_path / "runs"
    with group_norm():
        cfg = load_config(None, [*EXACT, f"train.out_dir={single_dir}"])
        run(cfg)
        torch.manual_seed(cfg.train.seed)
        initial = SmallCNN(10, 1, 8).state_dict()
    single = torch.load(single_dir / "exact" / "checkpoints" / "last.pt", weights_only=True)
    ddp = _load(ddp_run / "exact-rank0-step6.pt")
    _assert_states(ddp, single, exact=False, atol=1e-5)
    moved = max((single["model"][k] - initial[k]).abs().max() for k in initial)
    assert moved > 1e-3, "the comparison is vacuous: training did not change the weights"

    ddp_dir = ddp_run / "runs" / "exact"
    ddp_summary = json.loads((ddp_dir / "summary.json").read_text())
    single_summary = json.loads((single_dir / "exact" / "summary.json").read_text())
    for key, value in single_summary["last"].items():
        if key.startswith("test/") and isinstance(value, float):
            assert ddp_summary["last"][key] == pytest.approx(value), key
    steps = [json.loads(line)["step"] for line in (ddp_dir / "metrics.jsonl").open()]
    assert steps == sorted(steps), "only rank 0 logs, and the resumed log continues"
    checkpoint = torch.load(ddp_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 6


@pytest.mark.parametrize("n,batch,world", [(10, 3, 2), (7, 8, 2), (100, 7, 3), (0, 4, 2)])
def test_eval_shards_are_whole_batches_covering_the_set(n, batch, world):
    ranges = [shard_range(n, batch, rank, world) for rank in range(world)]
    rows = [i for start, stop in ranges for i in range(start, stop)]
    assert rows == list(range(n))
    for start, stop in ranges:
        assert start % batch == 0 or start == n
        assert (stop - start) % batch == 0 or stop == n


def test_single_process_context_is_a_no_op():
    ctx = DistContext()
    model = nn.Linear(2, 2)
    assert ctx.wrap(model) is model
    assert ctx.all_gather_object(3) == [3]
    assert ctx.any_rank(True, torch.device("cpu"))
    value = torch.ones(2)
    assert ctx.all_reduce_mean(value) is value


def test_one_process_under_torchrun_runs_ddp(monkeypatch):
    """``torchrun --nproc_per_node=1`` joins a process group and DDP-wraps the model: the one-GPU
    check of a DDP job runs the same code path as eight GPUs."""
    import torch.distributed as torch_dist

    from interlude.train.distributed import init_from_env, launched_by_torchrun

    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    assert launched_by_torchrun()
    ctx = init_from_env("cpu")
    try:
        assert ctx.enabled and ctx.world_size == 1 and torch_dist.get_backend() == "gloo"
        wrapped = ctx.wrap(nn.Linear(2, 2))
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel)
        assert ctx.all_reduce_mean(torch.ones(2)).tolist() == [1.0, 1.0]
        assert ctx.any_rank(True, torch.device("cpu"))
    finally:
        torch_dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    _rank_main(Path(sys.argv[1]))
