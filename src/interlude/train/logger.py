"""Metric logs of a run: JSONL (every event), CSV (train rows), optional TensorBoard, progress bar."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from interlude.files import csv_row, parse_json, write_atomic

log = logging.getLogger("interlude")

TRAIN_COLUMNS = [
    "step", "loss", "loss_sup", "loss_unsup", "loss_dc", "loss_fair", "mask_rate", "lr",
    "img_per_s", "data_img_per_s",
]


class RunLogger:
    """Writes ``metrics.jsonl`` and ``metrics.csv`` in the run dir; only rank 0 should own one."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int = 0) -> None:
        self.run_dir = run_dir
        jsonl_path, csv_path = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
        if resume_step > 0:
            # drop what an interrupted run logged after its last checkpoint: it is redone
            _truncate_jsonl(jsonl_path, resume_step)
            _truncate_csv(csv_path, resume_step)
        mode = "a" if resume_step > 0 else "w"
        write_header = mode == "w" or not csv_path.exists()
        self._jsonl = open(jsonl_path, mode)  # noqa: SIM115 - closed in close()
        self._csv_file = open(csv_path, mode, newline="")  # noqa: SIM115
        self._csv = csv.writer(self._csv_file)  # rows through files.csv_row, as every CSV
        if write_header:
            self._csv.writerow(csv_row(TRAIN_COLUMNS))
        self._tb = _tensorboard_writer(run_dir) if tensorboard else None

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        record = {"step": step, "kind": kind, **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if kind == "train":
            self._csv.writerow(csv_row(record.get(column, "") for column in TRAIN_COLUMNS))
            self._csv_file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}" if kind == "train" else key, value, step)

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a torn or damaged line is dropped with a warning.

    A kill while a line is being appended leaves half a line at the end; that must cost the
    line, never the run's history (or a ``JSONDecodeError`` in ``interlude report``).
    """
    if not path.exists():
        return []
    records, damaged = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError:
            damaged += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step", 0), int):
            records.append(record)
        else:
            damaged += 1
    if damaged:
        log.warning("%s: dropped %d damaged line(s) (a write interrupted by a kill?)", path, damaged)
    return records


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records up to ``last_step``; the file is replaced atomically."""
    if not path.exists():
        return
    kept = [json.dumps(r) + "\n" for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    write_atomic(path, "".join(kept))


def _truncate_csv(path: Path, last_step: int) -> None:
    """Keep the header and the rows up to ``last_step`` (torn rows dropped); atomic."""
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    kept = [line for line in lines[1:] if (step := _csv_step(line)) is not None
            and step <= last_step and len(line.split(",")) == len(TRAIN_COLUMNS)]
    header = lines[:1] if lines and lines[0].startswith("step,") else [",".join(TRAIN_COLUMNS)]
    write_atomic(path, "".join(line + "\n" for line in header + kept))


def _csv_step(line: str) -> int | None:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return None


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("train.tensorboard=true needs: pip install 'interlude[tensorboard]'; skipped")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


class Progress:
    """A tqdm bar showing loss, mask rate, lr and images/s; silent when disabled or not a TTY."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True,
                disable=not sys.stderr.isatty() and not enabled, file=sys.stderr,
            )

    def update(self, steps: int, values: dict[str, float]) -> None:
        if self._bar is None:
            return
        self._bar.update(steps)
        shown = {k: values[k] for k in ("loss", "mask_rate", "lr", "img_per_s") if k in values}
        self._bar.set_postfix(
            {k.replace("_rate", ""): f"{v:.3g}" for k, v in shown.items()}, refresh=False
        )

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
