"""Two "nodes" on localhost: ``torchrun --nnodes 2 --node_rank 0/1 --nproc_per_node 1`` with the
static rendezvous on a local port, gloo, through the real CLI (the command docs/distributed.md
gives for two machines, with 127.0.0.1 as the master address).

Each node trains on an image folder decoded into its own image cache (as on machines with local
disks); the run folder is shared, as ``--resume`` on several nodes requires. Both nodes must
finish, with identical weights and EMA on both ranks, and only global rank 0 writes the run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

OVERRIDES = [
    "data.name=imagefolder", "data.resolution=16", "model.width=8", "train.batch_size=8",
    "train.mu=2", "train.steps=4", "train.eval_interval=2", "train.log_interval=2",
    "train.checkpoint_interval=2", "train.progress=false", "train.device=cpu", "train.threads=1",
    "algorithm.name=interlude", "train.run_name=two-nodes",
]


def _node_main(data: Path, out: Path) -> None:
    """One rank: ``interlude train`` with the final state of each rank dumped for comparison."""
    from interlude.cli import main
    from interlude.train.ema import unwrap
    from interlude.train.loop import Trainer

    original_fit = Trainer.fit

    def fit_and_dump(self, stop_after=None):
        summary = original_fit(self, stop_after=stop_after)
        state = {"model": unwrap(self.model).state_dict(), "ema": self.ema.state_dict(),
                 "world": torch.tensor([self.dist.rank, self.dist.world_size,
                                        self.dist.local_rank])}
        torch.save(state, out / f"rank{self.dist.rank}.pt")
        return summary

    Trainer.fit = fit_and_dump  # type: ignore[method-assign]
    folders = [f"data.labeled_dir={data / 'labeled'}", f"data.unlabeled_dir={data / 'unlabeled'}",
               f"data.test_dir={data / 'test'}", f"train.out_dir={out / 'runs'}"]
    raise SystemExit(main(["train", *OVERRIDES, *folders]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_finish_with_identical_weights(tmp_path):
    from test_datasets_folder import make_folders

    make_folders(tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    out.mkdir()
    port = _free_port()
    procs = []
    for node in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
            "--nproc_per_node=1", "--rdzv_backend=static", "--master_addr=127.0.0.1",
            f"--master_port={port}", __file__, str(tmp_path / "data"), str(out),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "INTERLUDE_CACHE_DIR": str(tmp_path / f"cache-node{node}")}
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    assert rank0["world"].tolist() == [0, 2, 0] and rank1["world"].tolist() == [1, 2, 0]
    for part in ("model", "ema"):
        for key, value in rank0[part].items():
            assert torch.equal(value, rank1[part][key]), f"{part}.{key} differs across nodes"
    for node in (0, 1):  # each node decoded the folders into its own cache
        assert len(list((tmp_path / f"cache-node{node}" / "images").glob("*.u8"))) == 3
    run = out / "runs" / "two-nodes"
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps == sorted(steps) and steps[-1] == 4  # one writer: global rank 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    _node_main(Path(sys.argv[1]), Path(sys.argv[2]))
