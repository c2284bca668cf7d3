"""CSV files written for users, and read back from them.

Every CSV interlude writes for a person goes through :func:`write_csv`, so there is one place
where cells are neutralised against formula injection: a text cell starting with ``= + - @``, a
tab or a carriage return is prefixed with ``'`` (spreadsheets would otherwise run a file name such
as ``=HYPERLINK(...).png`` as a formula). Numbers are written as they are. :func:`read_cell`
undoes the prefix, so a file name survives the round trip write -> edit -> read.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from interlude.artifact import write_atomic

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def read_cell(text: str) -> str:
    """A cell as written by :func:`safe_cell`, with its neutralising ``'`` removed."""
    if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS):
        return text[1:]
    return text


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV atomically (a kill leaves the previous file), cells neutralised."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([safe_cell(h) for h in header])
    writer.writerows([safe_cell(v) for v in row] for row in rows)
    write_atomic(path, buffer.getvalue())
