"""``interlude sweep --launcher slurm``: options and commands, then tests on a live Slurm cluster.

The live tests start a single-node Slurm (``tests/slurm_cluster.py``) once per session. Without
the Slurm packages they are skipped with the command that installs them; CI installs them and
sets ``INTERLUDE_REQUIRE_SLURM=1``, which turns that skip into a failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from interlude.cli import main
from interlude.errors import ConfigError
from interlude.experiments import slurm
from interlude.experiments.slurm import time_minutes
from interlude.experiments.sweep import load_sweep_file

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import SlurmCluster, missing_reason  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.yaml"
TINY = ["model.width=8", "train.batch_size=8", "train.mu=2", "train.threads=1", "train.device=cpu"]


# ---------------------------------------------------------------------- without a cluster
@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30:00", 90), ("0:45", 1),
                                           ("2-00:00:00", 2880), ("1-12", 2160)])
def test_time_limits_in_slurm_formats(text, minutes):
    assert time_minutes(text) == minutes


def test_bad_time_limit_is_one_line():
    with pytest.raises(ConfigError, match="expected minutes, H:MM:SS"):
        time_minutes("two days")


def test_sweep_file_slurm_options_and_command_line_override(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"base: {DIGITS}\nslurm: {{partition: gpu, time: '1:00:00', gpus: 1, "
                    "sbatch: ['--constraint=a100']}\n")
    options = load_sweep_file(path).slurm.updated(partition="debug", sbatch=["--exclusive"])
    params = options.executor_parameters()
    assert params["partition"] == "debug" and params["time"] == 60
    assert params["gpus_per_node"] == 1 and params["ntasks_per_node"] == 1
    assert params["additional_parameters"] == {"constraint": "a100", "exclusive": True}
    path.write_text(f"base: {DIGITS}\nslurm: {{time: 1, signal_delay_s: 45}}\n")
    with pytest.raises(ConfigError, match="signal_delay_s=45 is too close to the time limit"):
        load_sweep_file(path)
    path.write_text(f"base: {DIGITS}\nslurm: {{partitoin: gpu}}\n")
    with pytest.raises(ConfigError, match="unknown slurm option.*partitoin"):
        load_sweep_file(path)


def test_several_gpus_run_under_torchrun():
    command = slurm.train_command(DIGITS, ["train.seed=1"], gpus=4)
    assert command[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=4"]
    assert command[5:9] == ["-m", "interlude", "train", str(DIGITS)] and command[-1] == "--resume"
    assert slurm.train_command(DIGITS, [], gpus=1)[:3] == [sys.executable, "-m", "interlude"]


def test_without_slurm_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code = main(["sweep", str(DIGITS), "--launcher", "slurm", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "`sbatch` not found" in err


def test_pre_kill_signal_stops_the_child_and_requeues_a_bounded_number_of_times(tmp_path,
                                                                             monkeypatch):
    """submitit calls checkpoint() on SIGUSR2: the child gets SIGTERM and is waited for; the
    task is requeued unchanged until max_requeues, then given up."""
    import submitit

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    task = slurm.SweepTask(["true"], tmp_path / "run", tmp_path / "run.log", max_requeues=2,
                           stop_timeout_s=20)
    task._process = child
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    delayed = task.checkpoint()
    assert child.poll() == -signal.SIGTERM
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.function is task
    assert "_process" not in task.__getstate__()  # what submitit pickles for the requeue
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert task.checkpoint() is None  # submitit then ends the task instead of requeueing it
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    with pytest.raises(slurm.SlurmError, match="requeued 3 times without finishing"):
        task()


def test_failed_child_raises_with_its_error(tmp_path):
    command = [sys.executable, "-m", "interlude", "train", str(DIGITS), "train.nope=1"]
    task = slurm.SweepTask(command, tmp_path / "run", tmp_path / "run.log", 2, 20)
    with pytest.raises(slurm.SlurmError, match=r"failed \(exit 2\): error: .*train.nope"):
        task()
    assert "=== attempt 1" in (tmp_path / "run.log").read_text()


def test_without_submitit_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(slurm.SlurmError, match=r'pip install "interlude\[slurm\]"'):
        slurm._submitit()


def test_repeated_sigterm_still_saves_a_checkpoint(tmp_path):
    """Slurm signals every process of a task and the task forwards SIGTERM too: the training
    child gets it twice and must still stop at a step boundary with a checkpoint."""
    out = tmp_path / "runs"
    process = subprocess.Popen(
        [sys.executable, "-m", "interlude", "train", str(DIGITS), *TINY, "train.steps=100000",
         "train.log_interval=1", "train.progress=false", f"train.out_dir={out}",
         "train.run_name=r"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "r" / "metrics.jsonl"
    _wait(lambda: metrics.is_file() and metrics.stat().st_size > 0, 60, "training to start")
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 143, output
    assert (out / "r" / "checkpoints" / "last.pt").is_file()


# ---------------------------------------------------------------------- the live cluster
@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("INTERLUDE_REQUIRE_SLURM") == "1":
            pytest.fail(f"INTERLUDE_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    started = time.monotonic()
    live = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    print(f"\nSlurm test cluster up in {time.monotonic() - started:.1f} s ({live.root})")
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(live.env)
    try:
        yield live
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        live.stop()


def _wait(ready, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _jobs(sweep_root: Path) -> dict[str, str]:
    return {k: v["job_id"] for k, v in slurm.read_jobs(sweep_root).items()}


def _wait_states(cluster: SlurmCluster, job_ids: list[str], states: set[str], timeout: float):
    def reached():
        rows = [row for job in job_ids for row in cluster.sacct(job)]
        by_id = {row["JobID"]: row for row in rows}
        return by_id if all(by_id.get(j, {}).get("State", "").split()[0:1] and
                            by_id[j]["State"].split()[0] in states for j in job_ids) else None
    try:
        return _wait(reached, timeout, f"{job_ids} to reach {sorted(states)}", interval=1.0)
    except AssertionError:
        rows = [row for job in job_ids for row in cluster.sacct(job)]
        raise AssertionError(f"jobs did not reach {sorted(states)} in {timeout:.0f} s: {rows}; "
                             f"slurmctld log: {cluster.root / 'log'}") from None


def _sweep(args: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(["sweep", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.fixture(scope="module")
def finished_sweep(cluster, tmp_path_factory):
    """A 2 x 2 digits sweep (two algorithms x two seeds) submitted as one array, run to the end."""
    out = tmp_path_factory.mktemp("sweeps")
    args = [str(DIGITS), "--grid", "algorithm.name=fixmatch,interlude", "--seeds", "0,1",
            *TINY, "train.steps=6", "train.eval_interval=6", "train.log_interval=3",
            "--out", str(out)]
    started = time.monotonic()
    code = main(["sweep", *args, "--launcher", "slurm", "--cpus-per-run", "1", "--time", "5"])
    assert code == 0
    root = out / "digits"
    jobs = _jobs(root)
    assert len(jobs) == 4 and len({j.split("_")[0] for j in jobs.values()}) == 1  # one array
    _wait_states(cluster, list(jobs.values()), {"COMPLETED", "FAILED", "CANCELLED"}, 110)
    print(f"\n2 x 2 sweep ran in {time.monotonic() - started:.1f} s")
    return args, root, jobs


def test_array_sweep_runs_to_completion_and_reports(finished_sweep, cluster, tmp_path, capsys):
    args, root, jobs = finished_sweep
    states = {row["JobID"]: row["State"] for j in jobs.values() for row in cluster.sacct(j)}
    assert set(states.values()) == {"COMPLETED"}, states
    run_dirs = sorted(root.glob("name=*/seed*/summary.json"))
    assert len(run_dirs) == 4
    assert main(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "fixmatch" in report and "interlude" in report
    table = _sweep([*args, "--status"], capsys)
    assert table.count("COMPLETED") == 4 and "test/ema/top1=" in table
    assert re.search(r"name=fixmatch/seed0\s+\d+_\d\s+COMPLETED\s+6\s", table), table


def test_resubmitting_a_finished_sweep_submits_nothing(finished_sweep, capsys):
    args, root, jobs = finished_sweep
    out = _sweep([*args, "--launcher", "slurm"], capsys)
    assert "4 finished" in out and "0 submitted" in out
    assert _jobs(root) == jobs


def _submitit_log(root: Path, job_id: str) -> str:
    """submitit's log of an array task (its messages go to the task's stdout and stderr)."""
    return "".join((root / ".slurm" / f"{job_id}_0_log.{ext}").read_text() for ext in ("out", "err"))


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from interlude.artifact import Checkpoint

    checkpoint = Checkpoint.load(run_dir / "checkpoints" / "last.pt")
    return {**{f"model.{k}": v for k, v in checkpoint.model.items()},
            **{f"ema.{k}": v for k, v in (checkpoint.ema or {}).items()}}


def _last_step(run_dir: Path) -> int:
    return slurm.progress(run_dir)[0] or 0


STEPS = 150
LONG = [*TINY, f"train.steps={STEPS}", "train.log_interval=1", f"train.eval_interval={STEPS}",
        "train.checkpoint_interval=1000"]
"""A run long enough to be interrupted mid-way; its only mid-run checkpoint is the one the
interruption saves."""


def test_interrupted_runs_resume_exactly(cluster, tmp_path, capsys):
    """Seed 0 is requeued by ``scontrol requeue`` (SIGTERM, as on preemption); seed 1 gets the
    pre-kill signal a time limit sends (SIGUSR2, through submitit's handler). Both continue with
    --resume and end with the weights of an uninterrupted run."""
    out = tmp_path / "sweeps"
    started = time.monotonic()
    _sweep([str(DIGITS), "--seeds", "0,1", *LONG, "--launcher", "slurm", "--out", str(out),
            "--cpus-per-run", "1", "--time", "10"], capsys)
    root = out / "digits"
    jobs = _jobs(root)
    requeued, signalled = jobs["base/seed0"], jobs["base/seed1"]
    for key, command in (("base/seed0", ["scontrol", "requeue", requeued]),
                         ("base/seed1", ["scancel", "--signal=USR2", signalled])):
        _wait(lambda key=key: _last_step(root / key) >= 3, 90, f"{key} to train a few steps", 0.1)
        subprocess.run(command, check=True, env={**os.environ, **cluster.env})
    rows = _wait_states(cluster, [requeued, signalled], {"COMPLETED", "FAILED", "CANCELLED"}, 110)
    assert {rows[j]["State"] for j in (requeued, signalled)} == {"COMPLETED"}, rows
    print(f"\nrequeued sweep finished in {time.monotonic() - started:.1f} s")
    for key, job in jobs.items():
        log = (root / f"{key}.log").read_text()
        resumed = [int(m) for m in re.findall(r"resumed .* at step (\d+)", log)]
        assert len(resumed) == 1 and 0 < resumed[0] < STEPS, log  # interrupted once, mid-way
        assert cluster.restarts(job) == 1
        assert "interrupted: checkpoint saved at step" in log
    # seed 1 went through submitit's pre-kill handler: our checkpoint(), then its requeue
    assert "Calling checkpoint method" in _submitit_log(root, signalled)
    # the same runs, uninterrupted, here
    from interlude.config import load_config
    from interlude.train import run

    for seed in (0, 1):
        cfg = load_config(DIGITS, [*LONG, f"train.seed={seed}", f"train.out_dir={tmp_path / 'ref'}",
                                   f"train.run_name=s{seed}", "train.progress=false"])
        run(cfg)
        expected = _final_weights(tmp_path / "ref" / f"s{seed}")
        got = _final_weights(root / "base" / f"seed{seed}")
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), f"seed {seed} differs"


def test_status_and_cancel(cluster, tmp_path, capsys):
    out = tmp_path / "sweeps"
    args = [str(DIGITS), *TINY, "train.steps=100000", "train.log_interval=1",
            "--out", str(out)]
    _sweep([*args, "--launcher", "slurm", "--cpus-per-run", "1", "--time", "10"], capsys)
    root = out / "digits"
    job = _jobs(root)["base/seed0"]
    _wait(lambda: _last_step(root / "base" / "seed0") >= 2, 90, "the run to train")
    table = _sweep([*args, "--status"], capsys)
    assert re.search(rf"base/seed0\s+{re.escape(job)}\s+RUNNING\s+\d+", table), table
    assert str(root / "base" / "seed0.log") in table
    assert f"cancelled 1 Slurm task(s): {job}" in _sweep([*args, "--cancel"], capsys)
    _wait_states(cluster, [job], {"CANCELLED"}, 60)
    # nothing lost: the cancelled task saved a checkpoint at the step it reached
    _wait(lambda: (root / "base" / "seed0" / "checkpoints" / "last.pt").is_file(), 30, "checkpoint")
    assert "interrupted: checkpoint saved at step" in (root / "base" / "seed0.log").read_text()
    assert re.search(r"base/seed0\s+\S+\s+CANCELLED", _sweep([*args, "--status"], capsys))
    assert "nothing to cancel" in _sweep([*args, "--cancel"], capsys)


def test_failing_run_fails_once_and_is_reported(cluster, tmp_path, capsys):
    """A config that is valid but cannot run (more labels per class than digits has) fails in
    the task: FAILED, not requeued, its error in its log and in --status."""
    out = tmp_path / "sweeps"
    args = [str(DIGITS), *TINY, "train.steps=5", "data.labels_per_class=500", "--out", str(out)]
    _sweep([*args, "--launcher", "slurm", "--cpus-per-run", "1", "--time", "5"], capsys)
    root = out / "digits"
    job = _jobs(root)["base/seed0"]
    rows = _wait_states(cluster, [job], {"COMPLETED", "FAILED", "CANCELLED"}, 90)
    time.sleep(3)  # were it requeued, it would be pending again by now
    row = cluster.sacct(job)[0]
    assert row["State"] == "FAILED" and cluster.restarts(job) == 0, (rows, row)
    log = (root / "base" / "seed0.log").read_text()
    assert log.count("=== attempt") == 1 and "error:" in log
    table = _sweep([*args, "--status"], capsys)
    assert re.search(r"base/seed0\s+\S+\s+FAILED", table) and "base/seed0: error:" in table


def test_time_limit_checkpoints_and_requeues(cluster, tmp_path, capsys):
    """A run longer than its 1-minute limit gets SIGUSR2 ``signal_delay_s`` before the limit,
    saves a checkpoint, is requeued, and the new attempt resumes at that step."""
    sweep_file = tmp_path / "limit.yaml"
    sweep_file.write_text(f"base: {DIGITS}\nslurm: {{time: 1, signal_delay_s: 20, cpus: 1}}\n")
    out = tmp_path / "sweeps"
    args = [str(sweep_file), *TINY, "train.steps=1000000", "train.log_interval=10",
            "train.checkpoint_interval=1000000", "--out", str(out)]
    started = time.monotonic()
    _sweep([*args, "--launcher", "slurm"], capsys)
    root = out / "limit"
    job = _jobs(root)["base/seed0"]
    log = root / "base" / "seed0.log"

    def resumed():
        found = re.findall(r"resumed .* at step (\d+)", log.read_text()) if log.is_file() else []
        return int(found[0]) if found else None

    step = _wait(resumed, 110, "the run to be signalled, requeued and resumed", interval=1.0)
    print(f"\ntime-limit requeue resumed at step {step} after {time.monotonic() - started:.1f} s")
    assert step > 0
    submitit_log = _submitit_log(root, job)
    assert "this job is timed-out" in submitit_log and "Calling checkpoint method" in submitit_log
    assert cluster.restarts(job) >= 1
    assert "cancelled 1" in _sweep([*args, "--cancel"], capsys)
    _wait_states(cluster, [job], {"CANCELLED"}, 60)
