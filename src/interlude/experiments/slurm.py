"""Sweeps on a Slurm cluster: one job-array task per run, submitted through submitit.

``interlude sweep CONFIG ... --launcher slurm`` plans the sweep exactly as a local sweep does
(every config validated first, finished runs skipped), then submits the runs left as one Slurm job
array (:func:`submit`). Each array task is a :class:`SweepTask`: it runs
``python -m interlude train ... --resume`` in a child process (``torchrun`` for a run over
several GPUs), so a task that starts again continues from the run's ``checkpoints/last.pt``.

Why a child process: the training loop saves a checkpoint and exits when it gets SIGTERM
(``train/loop.py``), at a step boundary. submitit's own handler for the pre-kill signal (SIGUSR2,
``signal_delay_s`` before a time limit or on preemption) runs inside a signal handler and exits
the process right after; in-process training would be cut mid-step. With a child, the handler
(:meth:`SweepTask.checkpoint`) sends the child SIGTERM, waits for its checkpoint, and only then lets
submitit requeue the task. Requeued (by submitit, by Slurm's preemption, or by
``scontrol requeue``), the task resumes at the saved step with the same data order and RNG state,
so its final weights equal those of an uninterrupted run.

Bounded retries: a run that fails (any exit other than an interruption) raises, the task ends
FAILED and is not requeued; the child's output, error included, is appended to the run's log
(``<variant>/seed<k>.log``) across attempts. Requeues after interruptions are bounded by
``max_requeues`` (Slurm's ``SLURM_RESTART_COUNT``), so a run that can never finish within its time
limit stops being requeued.

Bookkeeping: ``<sweep>/.slurm/`` holds submitit's files (pickles, sbatch scripts, task logs) and
``jobs.json`` (run -> Slurm job id), which ``--status``, ``--cancel`` and resubmission read.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from interlude.errors import ConfigError, InterludeError

log = logging.getLogger("interlude")

BOOKKEEPING_DIR = ".slurm"
JOBS_FILE = "jobs.json"
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                 "SUSPENDED", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "PREEMPTED"}
"""Slurm states of a task that may still train: such a run is not submitted a second time."""
INTERRUPTED_EXIT = {128 + signal.SIGTERM, 128 + signal.SIGINT}
"""Exit codes of ``interlude train`` stopped by a signal after saving a checkpoint."""
SLURM_CHECK_S = 30
"""slurmctld checks time limits every 30 s and sends the pre-kill signal at the first check within
``signal_delay_s + 30`` s of the limit: the signal comes up to 30 s early."""


class SlurmError(InterludeError):
    """Slurm is missing, refused a submission, or a run failed on it."""


@dataclass
class SlurmOptions:
    """Scheduler options of a sweep, from the sweep file's ``slurm:`` mapping and the command line.

    Per run: ``gpus`` (several: one run over several GPUs by DDP), ``cpus``, ``mem_gb``;
    per task: ``time`` (minutes, ``H:MM:SS`` or ``D-HH:MM:SS``); per array: ``max_running``.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    gpus: int = 0
    cpus: int | None = None
    mem_gb: float | None = None
    max_running: int | None = None
    sbatch: list[str] = field(default_factory=list)
    """Extra ``sbatch`` flags, e.g. ``--constraint=a100`` or ``--exclusive``."""
    signal_delay_s: int = 120
    """How long before the time limit the task is told to checkpoint (SIGUSR2)."""
    max_requeues: int = 10
    """Requeues after preemptions and time limits before a run is given up."""

    @classmethod
    def from_mapping(cls, mapping: Any, where: str) -> SlurmOptions:
        """Validate a ``slurm:`` mapping (one-line ConfigError per problem)."""
        if mapping is None:
            return cls()
        names = [f.name for f in fields(cls)]
        if not isinstance(mapping, dict) or set(mapping) - set(names):
            unknown = sorted(set(mapping) - set(names)) if isinstance(mapping, dict) else mapping
            raise ConfigError(f"{where}: unknown slurm option(s) {unknown}; valid: {', '.join(names)}")
        options = cls(**{k: v for k, v in mapping.items() if v is not None})
        if isinstance(options.sbatch, str):
            options.sbatch = options.sbatch.split()
        options.check(where)
        return options

    def updated(self, **values: Any) -> SlurmOptions:
        """A copy with the values given (not None) replacing these (the command line wins)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        extra = values.pop("sbatch", None) or []
        current.update({k: v for k, v in values.items() if v is not None})
        current["sbatch"] = [*self.sbatch, *extra]
        return SlurmOptions(**current)

    def check(self, where: str = "slurm options") -> None:
        for name in ("gpus", "cpus", "max_running", "signal_delay_s", "max_requeues"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < (0 if name in ("gpus", "max_requeues") else 1)):
                raise ConfigError(f"{where}: {name} must be a whole number >= "
                                  f"{0 if name in ('gpus', 'max_requeues') else 1}, got {value!r}")
        if self.mem_gb is not None and not (isinstance(self.mem_gb, (int, float)) and self.mem_gb > 0):
            raise ConfigError(f"{where}: mem_gb must be > 0, got {self.mem_gb!r}")
        if self.time is not None and (self.signal_delay_s + SLURM_CHECK_S) >= time_minutes(self.time) * 60:
            raise ConfigError(
                f"{where}: signal_delay_s={self.signal_delay_s} is too close to the time limit "
                f"({self.time}): Slurm checks limits every {SLURM_CHECK_S} s and would signal "
                f"every attempt as soon as it starts; use a signal_delay_s below "
                f"{time_minutes(self.time) * 60 - SLURM_CHECK_S} or a longer --time"
            )
        if not isinstance(self.sbatch, list) or not all(str(a).startswith("--") for a in self.sbatch):
            raise ConfigError(f"{where}: sbatch must be a list of flags such as --constraint=a100, "
                              f"got {self.sbatch!r}")

    def executor_parameters(self) -> dict[str, Any]:
        """``SlurmExecutor.update_parameters`` arguments (one task per run, on one node)."""
        params: dict[str, Any] = {
            "nodes": 1, "ntasks_per_node": 1, "signal_delay_s": self.signal_delay_s,
            "additional_parameters": sbatch_flags(self.sbatch),
        }
        optional = {"partition": self.partition, "account": self.account, "qos": self.qos,
                    "cpus_per_task": self.cpus, "mem": self.mem_gb,
                    "array_parallelism": self.max_running,
                    "time": time_minutes(self.time) if self.time is not None else None,
                    "gpus_per_node": self.gpus or None}
        params.update({k: v for k, v in optional.items() if v is not None})
        return params


def time_minutes(text: str | int) -> int:
    """A Slurm time limit (``90``, ``1:30:00``, ``2-00:00:00``) in whole minutes (rounded up)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if match is None:
        raise ConfigError(f"time limit {text!r}: expected minutes, H:MM:SS or D-HH:MM:SS, "
                          "e.g. --time 2-00:00:00")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if second is None:  # minutes (or D-HH)
        seconds = (first * 3600 if days is not None else first * 60)
    elif third is None:  # MM:SS (or D-HH:MM)
        seconds = first * 3600 + second * 60 if days is not None else first * 60 + second
    else:
        seconds = first * 3600 + second * 60 + third
    seconds += (days or 0) * 86400
    if seconds <= 0:
        raise ConfigError(f"time limit {text!r} must be positive")
    return -(-seconds // 60)


def sbatch_flags(args: list[str]) -> dict[str, Any]:
    """``["--constraint=a100", "--exclusive"]`` -> submitit's ``additional_parameters``."""
    flags: dict[str, Any] = {}
    for arg in args:
        key, sep, value = str(arg)[2:].partition("=")
        flags[key.replace("-", "_")] = value if sep else True
    return flags


def require_sbatch() -> None:
    """Fail fast, in one line, on a machine without Slurm (instead of a hang or a traceback)."""
    if shutil.which("sbatch") is None:
        raise SlurmError("--launcher slurm: `sbatch` not found on PATH; run the sweep on a Slurm "
                         "login node (or install the Slurm client, e.g. apt-get install slurm-client)")


def _submitit() -> Any:
    """submitit, or a one-line error naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise SlurmError('Slurm sweeps need submitit: pip install "interlude[slurm]"') from None
    return submitit


# ---------------------------------------------------------------------- the array task
class SweepTask:
    """One run of a sweep as a Slurm array task (picklable; submitit calls it in the job)."""

    def __init__(self, command: list[str], run_dir: Path, log_path: Path, max_requeues: int,
                 stop_timeout_s: float) -> None:
        self.command = command
        self.run_dir = Path(run_dir)
        self.log_path = Path(log_path)
        self.max_requeues = max_requeues
        self.stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_process"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _process=None)

    def __call__(self) -> str:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts > self.max_requeues:
            raise SlurmError(f"{self.run_dir} was requeued {restarts} times without finishing; "
                             f"given up (raise slurm.max_requeues, or a longer --time); see "
                             f"{self.log_path}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as handle:
            handle.write(f"=== attempt {restarts + 1}: Slurm job {_job_id()} on "
                         f"{socket.gethostname()} at {_dt.datetime.now().isoformat(timespec='seconds')}"
                         "\n")
            handle.flush()
            with _ignoring(signal.SIGUSR2):  # only this process handles the pre-kill signal
                self._process = subprocess.Popen(self.command, stdout=handle,
                                                 stderr=subprocess.STDOUT)
            previous = signal.signal(signal.SIGTERM, self._forward)
            try:
                while self._process.poll() is None:  # not wait(): a signal handler may reap it
                    time.sleep(0.5)
            finally:
                signal.signal(signal.SIGTERM, previous)
        code = self._process.returncode
        if code == 0:
            return str(self.run_dir)
        if code in INTERRUPTED_EXIT:
            raise SlurmError(f"{self.run_dir}: interrupted ({signal.Signals(code - 128).name}) "
                             "with a checkpoint saved; it continues when requeued or resubmitted")
        raise SlurmError(f"{self.run_dir}: failed (exit {code}): {last_error(self.log_path)}; "
                         f"see {self.log_path}")

    def _forward(self, signum: int, frame: Any) -> None:
        """SIGTERM (scancel, requeue, preemption, time limit) -> the child, which checkpoints.

        Slurm usually signals every process of the step itself; a repeated SIGTERM is harmless
        (the training loop stops once).
        """
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)

    def checkpoint(self) -> Any:
        """submitit's pre-kill hook: stop the child at a step boundary with a checkpoint, then
        requeue this task unchanged (it resumes from the checkpoint). None: do not requeue."""
        import submitit

        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            _wait_exit(process, self.stop_timeout_s)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeues:
            return None
        return submitit.helpers.DelayedSubmission(self)


@contextlib.contextmanager
def _ignoring(signum: int) -> Iterator[None]:
    """Ignore ``signum`` while a child is started: the child inherits SIG_IGN across exec."""
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _wait_exit(process: subprocess.Popen, timeout: float) -> None:
    """Wait for a child without ``Popen.wait``: the code this signal handler interrupted may hold
    its lock. The exit status is put back on ``process`` (Popen would read 0 for a reaped pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.returncode is None:
        try:
            pid, status = os.waitpid(process.pid, os.WNOHANG)
        except ChildProcessError:
            return  # reaped by the interrupted poll(), which set returncode
        if pid != 0:
            process.returncode = os.waitstatus_to_exitcode(status)
            return
        time.sleep(0.2)


def _job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "?")


def last_error(log_path: Path) -> str:
    """The last ``error: ...`` line of a run's log (or its last line)."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["empty log"])[-1][:300]


def train_command(base: Path, overrides: list[str], gpus: int) -> list[str]:
    """``interlude train`` of one run; with several GPUs under ``torchrun`` on the task's node."""
    from interlude.config import merged_overrides

    interlude = ["-m", "interlude", "train", str(base),
                 *merged_overrides([*overrides, "train.progress=false"]), "--resume"]
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={gpus}", *interlude]
    return [sys.executable, *interlude]


# ---------------------------------------------------------------------- submission
def jobs_path(sweep_root: Path) -> Path:
    return sweep_root / BOOKKEEPING_DIR / JOBS_FILE


def read_jobs(sweep_root: Path) -> dict[str, dict[str, Any]]:
    path = jobs_path(sweep_root)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise SlurmError(f"{path} is corrupt; remove it (the runs keep their files)") from None
    return data if isinstance(data, dict) else {}


def write_jobs(sweep_root: Path, jobs: dict[str, dict[str, Any]]) -> None:
    from interlude.artifact import write_atomic

    path = jobs_path(sweep_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(jobs, indent=1, sort_keys=True))


def slurm_states(sweep_root: Path, job_ids: list[str]) -> dict[str, str]:
    """Slurm state of each job id (``sacct`` through submitit), e.g. RUNNING, COMPLETED."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    submitit = _submitit()

    folder = sweep_root / BOOKKEEPING_DIR
    jobs = [submitit.SlurmJob(folder=folder, job_id=job_id) for job_id in job_ids]
    watcher = jobs[0].watcher
    watcher.clear()  # submitit caches finished states; a requeued task is not finished
    watcher.update()  # one sacct call for all of them
    return {job.job_id: watcher.get_state(job.job_id, mode="cache").split()[0] for job in jobs}


@dataclass
class Submission:
    """What :func:`submit` did."""

    job_ids: dict[str, str]
    """run key (``variant/seed<k>``) -> Slurm job id, for the runs submitted now."""
    finished: list[str]
    active: list[str]
    """Runs skipped because Slurm still holds a task of them."""


def submit(sweep_root: Path, base: Path, runs: list[Any], options: SlurmOptions,
           name: str) -> Submission:
    """Submit every run of ``runs`` (``sweep.PlannedRun``) that is neither finished nor queued."""
    require_sbatch()
    submitit = _submitit()

    jobs = read_jobs(sweep_root)
    keys = {run.run_dir: run_key(sweep_root, run.run_dir) for run in runs}
    finished = [keys[r.run_dir] for r in runs if (r.run_dir / "summary.json").exists()]
    recorded = {keys[r.run_dir]: jobs[keys[r.run_dir]]["job_id"] for r in runs
                if keys[r.run_dir] in jobs and keys[r.run_dir] not in finished}
    states = slurm_states(sweep_root, list(recorded.values()))
    recent = _dt.datetime.now() - _dt.timedelta(minutes=2)  # sacct may not list it yet
    active = [key for key, job_id in recorded.items() if states.get(job_id) in ACTIVE_STATES
              or (states.get(job_id) == "UNKNOWN"
                  and _dt.datetime.fromisoformat(jobs[key]["submitted"]) > recent)]
    todo = [r for r in runs if keys[r.run_dir] not in finished and keys[r.run_dir] not in active]
    if not todo:
        return Submission({}, finished, active)
    executor = submitit.SlurmExecutor(folder=sweep_root / BOOKKEEPING_DIR,
                                      max_num_timeout=options.max_requeues)
    executor.update_parameters(job_name=f"interlude-{name}", **options.executor_parameters())
    tasks = []
    for run in todo:
        run.run_dir.parent.mkdir(parents=True, exist_ok=True)
        tasks.append(SweepTask(train_command(base, run.overrides, options.gpus), run.run_dir,
                               run_log(run.run_dir), options.max_requeues,
                               stop_timeout_s=max(5.0, options.signal_delay_s - 5.0)))
    try:
        submitted = executor.submit_array(tasks)
    except (subprocess.CalledProcessError, FileNotFoundError, RuntimeError) as exc:
        detail = getattr(exc, "output", None) or getattr(exc, "stderr", None) or exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise SlurmError(f"sbatch refused the sweep: {' '.join(str(detail).split())}") from None
    now = _dt.datetime.now().isoformat(timespec="seconds")
    job_ids = {keys[run.run_dir]: job.job_id for run, job in zip(todo, submitted, strict=True)}
    for key, job_id in job_ids.items():
        jobs[key] = {"job_id": job_id, "submitted": now}
    write_jobs(sweep_root, jobs)
    return Submission(job_ids, finished, active)


def run_key(sweep_root: Path, run_dir: Path) -> str:
    return run_dir.relative_to(sweep_root).as_posix()


def run_log(run_dir: Path) -> Path:
    """The run's log beside its folder, as local ``--processes`` sweeps write it."""
    return run_dir.parent / f"{run_dir.name}.log"


# ---------------------------------------------------------------------- status and cancel
@dataclass
class RunStatus:
    run: str
    job_id: str
    state: str
    step: int | None
    metric: str
    log: Path
    error: str = ""


def status(sweep_root: Path, run_dirs: list[Path]) -> list[RunStatus]:
    """One row per run: Slurm job and state, step reached, last test metric, log."""
    jobs = read_jobs(sweep_root)
    keys = [run_key(sweep_root, d) for d in run_dirs]
    ids = [jobs[k]["job_id"] for k in keys if k in jobs]
    states = slurm_states(sweep_root, ids)
    rows = []
    for key, run_dir in zip(keys, run_dirs, strict=True):
        job_id = jobs.get(key, {}).get("job_id", "-")
        state = states.get(job_id, "")
        if not state:
            state = "FINISHED" if (run_dir / "summary.json").exists() else "NOT_SUBMITTED"
        step, metric = progress(run_dir)
        error = last_error(run_log(run_dir)) if state in ("FAILED", "OUT_OF_MEMORY") else ""
        rows.append(RunStatus(key, job_id, state, step, metric, run_log(run_dir), error))
    return rows


def progress(run_dir: Path) -> tuple[int | None, str]:
    """Step reached and the last evaluation's primary metric, from ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    step, metric = None, ""
    if not path.is_file():
        return step, metric
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            step = record.get("step", step)
            if record.get("kind") == "eval":
                top1 = {k: v for k, v in record.items() if k.endswith("/top1")}
                key = next((k for k in top1 if "/ema/" in k), next(iter(top1), None))
                if key is not None:
                    metric = f"{key}={top1[key]:.4f}"
    return step, metric


def format_status(rows: list[RunStatus]) -> str:
    header = ("run", "job", "state", "step", "last metric", "log")
    table = [header] + [(r.run, r.job_id, r.state, "-" if r.step is None else str(r.step),
                         r.metric or "-", str(r.log)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]])
             for row in table]
    lines += [f"{r.run}: {r.error}" for r in rows if r.error]
    return "\n".join(lines)


def cancel(sweep_root: Path, run_dirs: list[Path]) -> list[str]:
    """``scancel`` (through submitit) every queued or running task of these runs; returns ids.

    A running task gets SIGTERM and saves a checkpoint: resubmitting the sweep continues it.
    """
    submitit = _submitit()

    jobs = read_jobs(sweep_root)
    ids = [jobs[k]["job_id"] for k in (run_key(sweep_root, d) for d in run_dirs) if k in jobs]
    states = slurm_states(sweep_root, ids)
    cancelled = [job_id for job_id in ids if states.get(job_id) in ACTIVE_STATES]
    if cancelled and shutil.which("scancel") is None:
        raise SlurmError("`scancel` not found on PATH; run --cancel on the Slurm login node")
    for job_id in cancelled:
        submitit.SlurmJob(folder=sweep_root / BOOKKEEPING_DIR, job_id=job_id).cancel(check=False)
    return cancelled
