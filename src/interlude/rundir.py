"""A run directory: its files, its single owner, and how it is started over.

Layout::

    config.yaml      resolved config (every key)          split.json    labeled / val indices
    metrics.jsonl    one JSON object per train/eval event  metrics.csv   the train rows
    summary.json     final metrics                         checkpoints/last.pt, best.pt
    .lock            held (``flock``) by the process training in this folder

A run directory has one owner at a time. The lock is an advisory ``flock`` on ``.lock``: the
kernel drops it when its process dies, even by ``kill -9``, so a lock left by a killed run is
stale by construction and is taken over (and reported); a live holder is named in the error.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from interlude.errors import CheckpointError, InterludeError
from interlude.files import SymlinkRefused, open_lock_file, parse_json, remove_orphan_temporaries

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock degrades to a pid file
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("interlude")

LOCK_FILE = ".lock"
RUN_MARKERS = ("split.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt")
"""Files only a run writes: a folder holding none of them (but other files) is not a run's."""
OWNED = frozenset({"config.yaml", "split.json", "metrics.jsonl", "metrics.csv", "summary.json",
                   "checkpoints", "tensorboard", "export", LOCK_FILE})
"""What a run writes in its directory, and all that starting over removes. Anything else (an image
cache or data folder placed inside it, the user's notes) is not the run's: it is neither counted
as a run nor deleted by ``--overwrite``."""


class RunDirBusy(InterludeError):
    """Another process owns this run directory."""


class RunDir:
    """Paths of one run directory and its ownership."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_handle: Any = None

    # ------------------------------------------------------------------ paths
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/{last,best}.pt`` of a trained run, with an error that says what to do."""
        if name not in ("last", "best"):
            raise CheckpointError(f"unknown checkpoint '{name}': use last or best")
        if not self.path.is_dir():
            raise CheckpointError(f"run directory not found: {self.path}")
        path = self.checkpoints / f"{name}.pt"
        if not path.is_file():
            hint = (
                "best.pt is written only when the run has a validation set "
                "(data.val_per_class > 0); use --checkpoint last" if name == "best"
                else "has this run been trained (interlude train ...)?"
            )
            raise CheckpointError(f"no checkpoint {path}: {hint}")
        return path

    def holds_run(self) -> bool:
        """Whether anything of a run (config, split, logs, checkpoints, summary) is here."""
        return bool(self._owned())

    def _owned(self) -> list[Path]:
        """The entries here that a run writes (:data:`OWNED`), the lock excepted."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name in OWNED and p.name != LOCK_FILE)

    def looks_like_run(self) -> bool:
        """Whether files only interlude writes (split, metrics, checkpoints) are here."""
        return any((self.path / name).is_file() for name in RUN_MARKERS)

    def check_clearable(self) -> None:
        """Refuse to start over in a folder that holds files with a run's names but no run (a
        user's own ``config.yaml``): starting over would replace them. Files a run never writes
        are not its business: they are kept, whatever the flags."""
        if not self.path.is_dir() or self.looks_like_run():
            return
        foreign = [p.name for p in self._owned()]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5
                                              else "")
            raise RunDirBusy(
                f"{self.path} holds {shown} but no interlude run (no split.json, metrics or "
                "checkpoint), so it is not emptied; choose another train.run_name / "
                "train.out_dir, or move those files away"
            )

    # ------------------------------------------------------------------ ownership
    def acquire(self) -> None:
        """Become the one owner, or raise :class:`RunDirBusy` naming the live holder."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_FILE
        try:
            handle = io.TextIOWrapper(open_lock_file(lock_path))  # no symlink; held until release()
        except SymlinkRefused as exc:
            raise RunDirBusy(f"{exc.strerror}, in {self.path}") from None
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(lock_path)
                handle.close()
                raise RunDirBusy(
                    f"{self.path} is in use by {holder}; wait for it to finish, stop it, or "
                    "choose another train.run_name"
                ) from None
        previous = _read_holder(lock_path, default="")
        if previous:
            log.warning("%s: took over a stale lock left by %s (it is no longer running)",
                        self.path, previous)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300],
        }))
        handle.flush()
        self._lock_handle = handle
        removed = remove_orphan_temporaries(self.path)
        if removed:
            log.info("removed %d unfinished temporary file(s) of an interrupted write in %s",
                     len(removed), self.path)

    def release(self) -> None:
        """Give up ownership; the lock file is emptied so the next owner sees no stale holder."""
        handle, self._lock_handle = self._lock_handle, None
        if handle is None:
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.flush()
        except OSError:
            pass
        handle.close()  # closing drops the flock

    def __enter__(self) -> RunDir:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ starting over
    def clear(self) -> None:
        """Remove every file of the old run (:data:`OWNED`; the lock stays with its owner) and
        nothing else; a folder that is not a run's is refused (:meth:`check_clearable`)."""
        if not self.path.is_dir():
            return
        self.check_clearable()
        for entry in self._owned():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _read_holder(lock_path: Path, default: str = "another process") -> str:
    try:
        info = parse_json(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return default
    if not isinstance(info, dict) or "pid" not in info:
        return default
    return (f"process {info.get('pid')} on {info.get('host', '?')} since "
            f"{info.get('started', '?')} ({info.get('command', '')})")
