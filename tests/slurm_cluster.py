"""A single-node Slurm cluster for tests, started as root without systemd.

Everything it needs lives in one temporary folder (configs, spool, state, logs, sockets, the
MariaDB data), every daemon is a child process started in the foreground and stopped by its PID,
and every port is picked free at start, so it touches nothing of the machine's own Slurm or munge
and two test sessions on one machine do not collide.

Why each piece (learned getting it to run):

- accounting (``slurmdbd`` backed by MariaDB) runs because submitit reads job states through
  ``sacct``; without it a cancelled or finished job never reads as done;
- ``NodeName``/``SlurmctldHost`` are ``hostname -s``, decided when the cluster starts;
- ``proctrack/linuxproc`` and ``task/none``: no cgroups (containers rarely delegate them);
- ``DefMemPerCPU``: without it one job takes the whole node's memory and the array runs serially;
- ``AccountingStoragePass`` names the munge socket for talking to slurmdbd (``AuthInfo`` is not used
  there);
- ``cred_expire=10``: a requeued job may only start once its old credential expired (default 120 s);
- ``sched_interval=2,bf_interval=2``: a requeued job waits for a scheduler pass once its begin time
  has come (30 s by default);
- the time-limit warning comes up to 30 s early (slurmctld checks every 30 s), so with a 1-minute
  limit ``signal_delay_s`` must stay under 30 s, or every attempt is signalled as it starts;
- ``KillWait=30``: SIGTERM, then SIGKILL 30 s later (a requeue waits for the old job to end); an
  interrupted run saves its checkpoint in between, which takes longer on a loaded machine.

Install (Debian/Ubuntu, as root)::

    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd \\
        mariadb-server
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REQUIRED = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "sbatch",
            "sacct", "scontrol", "sacctmgr")
INSTALL = ("apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd "
           "mariadb-server")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing_reason() -> str | None:
    """Why a live cluster cannot start here (None when it can)."""
    missing = [name for name in REQUIRED if _which(name) is None]
    if missing:
        return f"Slurm not installed ({', '.join(missing)} missing); as root: {INSTALL}"
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root; run the tests as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """``start()`` brings up munged, MariaDB, slurmdbd, slurmctld and slurmd; ``stop()`` ends them.

    ``env`` holds ``SLURM_CONF``: a process that has it talks to this cluster (``sbatch``,
    ``sacct``, submitit).
    """

    def __init__(self, root: Path | None = None, cpus: int | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="slurm-test-"))
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ start
    def start(self, timeout: float = 60.0) -> SlurmCluster:
        started = time.monotonic()
        r = self.root
        r.chmod(0o755)  # munged wants its socket's folders searchable by all
        for sub in ("etc", "log", "run", "spool/ctld", "spool/d", "munge", "db"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge()
            self._start_mariadb(timeout)
            ports = {name: _free_port() for name in ("ctld", "d", "dbd")}
            self._write_configs(ports)
            self.env = {"SLURM_CONF": str(r / "etc" / "slurm.conf")}
            self._spawn("slurmdbd", [_which("slurmdbd"), "-D", "-v"])
            self._wait(lambda: self._ok(["sacctmgr", "-n", "list", "cluster"]), timeout, "slurmdbd")
            self._run(["sacctmgr", "-i", "add", "cluster", "interludetest"], check=False)
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-v", "-i"])
            self._wait(lambda: self._ok(["scontrol", "ping"]), timeout, "slurmctld")
            self._spawn("slurmd", [_which("slurmd"), "-D", "-v", "-N", self.host])
            self._wait(self._node_idle, timeout, "slurmd")
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - started
        return self

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.munge_socket = self.root / "munge" / "munge.sock"
        self._spawn("munged", [
            _which("munged"), "--foreground", "--force", f"--key-file={key}",
            f"--socket={self.munge_socket}", f"--pid-file={self.root / 'run' / 'munged.pid'}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
        ])
        self._wait(self.munge_socket.exists, 10, "munged")

    def _start_mariadb(self, timeout: float) -> None:
        data = self.root / "db"
        self._run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
                   "--auth-root-authentication-method=normal", "--skip-test-db"])
        self.db_port = _free_port()
        self._spawn("mariadbd", [
            _which("mariadbd"), "--no-defaults", f"--datadir={data}", "--user=root",
            f"--socket={self.root / 'run' / 'mysql.sock'}", f"--port={self.db_port}",
            "--bind-address=127.0.0.1", "--skip-grant-tables", "--skip-name-resolve",
            f"--pid-file={self.root / 'run' / 'mariadbd.pid'}",
            f"--log-error={self.root / 'log' / 'mariadb.log'}", "--innodb-buffer-pool-size=32M",
        ])
        self._wait(lambda: _port_open(self.db_port), timeout, "mariadbd")

    def _write_configs(self, ports: dict[str, int]) -> None:
        r = self.root
        auth = f"socket={self.munge_socket},cred_expire=10"
        memory_mb = _memory_mb()
        (r / "etc" / "slurm.conf").write_text(f"""\
ClusterName=interludetest
SlurmctldHost={self.host}
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['d']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo={auth}
StateSaveLocation={r / 'spool' / 'ctld'}
SlurmdSpoolDir={r / 'spool' / 'd'}
SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}
SlurmdPidFile={r / 'run' / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=256
KillWait=30
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={ports['dbd']}
AccountingStoragePass={self.munge_socket}
JobCompType=jobcomp/none
NodeName={self.host} CPUs={self.cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        dbd = r / "etc" / "slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo={auth}
DbdHost=localhost
DbdPort={ports['dbd']}
SlurmUser=root
PidFile={r / 'run' / 'slurmdbd.pid'}
LogFile={r / 'log' / 'slurmdbd.log'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=root
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Cancel every job, SIGTERM every daemon by PID (in reverse start order), SIGKILL what is
        left after 10 s, then kill the job processes that outlived their daemons."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            subprocess.run([_which("scancel"), "--full", "--signal=KILL", "--user=root"],
                           env={**os.environ, **self.env}, capture_output=True, timeout=20)
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            self.processes.pop(name)
        for handle in getattr(self, "_logs", []):
            handle.close()
        self._kill_job_processes()

    def _kill_job_processes(self) -> None:
        """slurmstepd and the job it runs are reparented to init when slurmd stops, and a job of a
        test (a training with a million steps, waiting for its requeue) would go on using the CPU
        for the rest of the test session: kill every process that has this cluster's SLURM_CONF
        in its environment (the daemons' and the jobs' children all inherit it)."""
        marker = f"SLURM_CONF={self.root / 'etc' / 'slurm.conf'}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:  # gone meanwhile, or not ours to read
                continue

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def _spawn(self, name: str, command: list) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 (closed in stop())
        self._logs = [*getattr(self, "_logs", []), log]
        self.processes[name] = subprocess.Popen(
            [str(c) for c in command], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env, "SLURM_CONF": str(self.root / "etc" / "slurm.conf")},
            start_new_session=True,  # a Ctrl-C of the test run reaches pytest, which stops us
        )

    def _run(self, command: list, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(c) for c in command], capture_output=True, text=True,
                              env={**os.environ, **self.env}, check=check, timeout=60)

    def _ok(self, command: list) -> bool:
        try:
            return self._run(command, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _node_idle(self) -> bool:
        out = self._run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip()
        return out.startswith("idle")

    def _wait(self, ready, timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not ready after {timeout:.0f} s"
                raise RuntimeError(f"test Slurm cluster: {name}: {why}; logs in {self.root / 'log'}")
            time.sleep(0.2)

    # ------------------------------------------------------------------ for tests
    def sacct(self, job_id: str, fields: str = "JobID,State,ExitCode") -> list[dict]:
        """Accounting rows of a job (what submitit reads); ``[]`` while sacct is not answering."""
        done = self._run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields], check=False)
        keys = fields.split(",")
        return [dict(zip(keys, line.split("|"), strict=True)) for line in done.stdout.splitlines()
                if line] if done.returncode == 0 else []

    def restarts(self, job_id: str) -> int:
        """How many times Slurm requeued the job (``scontrol show job``; sacct has no field)."""
        out = self._run(["scontrol", "-o", "show", "job", job_id]).stdout
        return int(re.search(r"\bRestarts=(\d+)", out).group(1))


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512
    return 4096


def signal_name(code: int) -> str:
    return signal.Signals(code).name
