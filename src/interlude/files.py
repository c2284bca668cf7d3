"""Files written for a user: atomically, with names escaped and CSV cells neutralised.

Every file interlude writes (checkpoints, configs, metrics trims, predictions, reports, plots,
exports, cache entries) goes through :func:`write_atomic`: a temporary file in the same folder,
fsync, ``os.replace``, so a kill or a full disk leaves the previous file, never half of a new one,
and a full disk is one line naming the file (:class:`WriteError`), whatever the library writing
the bytes made of the ``OSError``.

Every CSV goes through :func:`csv_row`: a cell that a spreadsheet would run as a formula (it
begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a leading ``'``, and a
file name that is not valid UTF-8 is written with its undecodable bytes as ``\\xNN`` escapes (as
Python's ``backslashreplace``), so no name crashes a writer or is lost.

Lock files are opened by :func:`open_lock_file`, which refuses a symbolic link: a link planted
where a lock is expected would otherwise make interlude create or write a file elsewhere.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from interlude.errors import InterludeError, shown

TMP_SUFFIX = ".tmp"


class WriteError(InterludeError):
    """A file could not be written (disk full, permissions); the previous version is kept."""



# ----------------------------------------------------------------------------- atomic writes
def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None] | bytes | str) -> None:
    """Write ``path`` through a temporary file in its folder and ``os.replace``.

    ``write`` is the content (bytes or text) or a function writing to a binary handle. On any
    failure the temporary file is removed and the old ``path`` (if any) is left untouched; an
    ``OSError`` (disk full, read-only folder) becomes a one-line :class:`WriteError`, also when
    the writer turns it into an error of its own (``torch.save``'s zip writer raises a
    ``RuntimeError`` after a failed write): the handle remembers the ``OSError`` it raised.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a device, FIFO or folder: a rename would replace it
        raise WriteError(f"{shown(str(path))} exists and is not a regular file; write to a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:  # read-only or full file system, no permission: name the target
        raise WriteError(f"could not write {shown(str(path))}: {_reason(exc)}; {_kept(path)}") from None
    recorder: _RecordingHandle | None = None
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the mode open() would (umask)
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            if callable(write):
                recorder = _RecordingHandle(handle)
                write(recorder)  # type: ignore[arg-type]
            else:
                handle.write(write.encode() if isinstance(write, str) else write)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_behind(exc, recorder)
        if cause is None:
            raise
        raise WriteError(f"could not write {path}: {_reason(cause)}; {_kept(path)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    return error.strerror or type(error).__name__


def _kept(path: Path) -> str:
    return f"the previous {path.name} is kept" if path.exists() else "nothing was written"


class _RecordingHandle:
    """A binary file handle that remembers the first ``OSError`` its writes raised, so a writer
    that wraps it in another exception cannot hide a full disk."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _os_error_behind(exc: BaseException, recorder: _RecordingHandle | None) -> OSError | None:
    """The ``OSError`` behind ``exc``: itself, or one the handle raised while being written
    (whatever the writer made of it), else None (a bug, which keeps its traceback)."""
    if isinstance(exc, OSError):
        return exc
    return recorder.error if recorder is not None else None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_orphan_temporaries(folder: Path) -> list[Path]:
    """Delete ``.*.tmp`` files an interrupted :func:`write_atomic` left in ``folder`` (recursive)."""
    removed = []
    if folder.is_dir():
        for path in folder.rglob(f".*{TMP_SUFFIX}"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed




# ----------------------------------------------------------------------------- CSV
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A cell beginning with one of these is a formula to a spreadsheet (CSV injection)."""


def text_cell(value: str | os.PathLike) -> str:
    """Text safe to write: a file name's undecodable bytes as ``\\xNN``, never a crash."""
    text = os.fspath(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes os.fsdecode could not decode
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # any other surrogate
    return text


def csv_cell(value: Any) -> Any:
    """A value as one CSV cell: numbers as they are; text escaped (:func:`text_cell`) and, when
    a spreadsheet would read it as a formula, prefixed with ``'`` so it shows as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = text_cell(value if isinstance(value, (str, os.PathLike)) else str(value))
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def read_csv_cell(text: str) -> str:
    """A cell as :func:`csv_cell` wrote it, without its neutralising ``'`` (a file name survives
    the round trip write -> edit in a spreadsheet -> read)."""
    if text.startswith("'") and text[1:].startswith(FORMULA_STARTS):
        return text[1:]
    return text


def write_csv(path: str | Path, header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> None:
    """A CSV for a user, written atomically (a kill leaves the previous file), cells neutralised."""
    write_atomic(path, csv_text(header, rows))


def csv_row(values: Iterable[Any]) -> list[Any]:
    """Every cell of a row through :func:`csv_cell`: what each CSV writer of interlude writes."""
    return [csv_cell(v) for v in values]


def csv_text(header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> str:
    """A whole CSV (header first) as text, every cell neutralised."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(csv_row(header))
    writer.writerows(csv_row(row) for row in rows)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- lock files
def open_lock_file(path: Path) -> IO[bytes]:
    """Open (creating) a lock file for reading and writing, never through a symbolic link.

    ``O_NOFOLLOW`` makes the kernel refuse a link in the last component (``ELOOP``); that is
    raised as :class:`SymlinkRefused`, an ``OSError`` the callers already turn into one line.
    """
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise SymlinkRefused(errno.ELOOP, f"{path} is a symbolic link; a lock file must be a "
                                 "plain file: delete the link", str(path)) from None
        raise
    return os.fdopen(fd, "r+b")


class SymlinkRefused(OSError):
    """A lock file path is a symbolic link (planted to redirect a write)."""


# ----------------------------------------------------------------------------- reading JSON
def parse_json(text: str) -> Any:
    """``json.loads`` for files a user or an attacker may have written: nesting deeper than the
    interpreter's recursion limit (``[[[[...]]]]``) is a ``ValueError`` like any malformed JSON,
    which every reader already turns into one line, not a ``RecursionError`` traceback."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply (not a file interlude wrote)") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice: plain ``json`` keeps the last one silently, so
    an edited sidecar or split file could say two things and be read as either."""
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"key {key!r} is given twice (not a file interlude wrote)")
        mapping[key] = value
    return mapping
