"""``data.labels_file``: labels a person added, as a CSV, joined to a run's labeled set.

The format is the one ``interlude suggest`` writes (``rank,file,index,predicted,confidence,
score,label``) with the ``label`` column filled in, or any CSV with a ``label`` (or ``class``)
column and a ``file`` or ``index`` column:

- ``file``: an image file (a path relative to the CSV's folder, or absolute); it is decoded like
  the dataset's images and added to the labeled set;
- ``index`` (used when ``file`` is empty): a row of the dataset's training pool, numbered as
  ``split.json`` numbers it; the row moves from the unlabeled pool to the labeled set with the
  label given (the person's label wins over any the dataset carries).

Rows with an empty label are ignored, so a partly labeled suggestions file can be passed as is.
The file is hostile input: unknown classes, bad indices, contradicting duplicates and unreadable
images are one-line errors that name the row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from interlude.errors import DataError
from interlude.files import read_csv_cell

LABEL_COLUMNS = ("label", "class")


@dataclass
class AddedLabels:
    """What a labels file adds: training-pool rows and image files, each with a class index."""

    by_index: dict[int, int] = field(default_factory=dict)
    files: dict[Path, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_index) + len(self.files)


def read_labels_file(path: str | Path, class_names: list[str]) -> AddedLabels:
    """Parse ``path`` (see the module docstring) against the dataset's ``class_names``."""
    path = Path(path)
    where = f"data.labels_file={path}"
    if not path.is_file():
        raise DataError(f"{where} not found; point it at a CSV of file/index and label columns")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            table = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{where} is not a UTF-8 CSV file ({exc}); save it as CSV UTF-8") from None
    if not table:
        raise DataError(f"{where} is empty; it needs a header with a label column")
    header = [read_csv_cell(h).strip().lower() for h in table[0]]
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    file_col = header.index("file") if "file" in header else None
    index_col = header.index("index") if "index" in header else None
    if label_col is None or (file_col is None and index_col is None):
        raise DataError(f"{where} needs a 'label' column and a 'file' or 'index' column "
                        f"(found: {', '.join(header) or 'nothing'})")
    classes = {str(name): k for k, name in enumerate(class_names)}
    added = AddedLabels()
    for line, row in enumerate(table[1:], start=2):

        def cell(col: int | None, row: list[str] = row) -> str:
            return read_csv_cell(row[col]).strip() if col is not None and col < len(row) else ""

        label = cell(label_col)
        if not label:
            continue
        if label not in classes:
            known = ", ".join(list(classes)[:10]) + (" ..." if len(classes) > 10 else "")
            raise DataError(f"{where} line {line}: unknown class {label!r}; use one of {known}")
        target = classes[label]
        file, index = cell(file_col), cell(index_col)
        if file:
            image = Path(file).expanduser()
            key = image if image.is_absolute() else path.parent / image
            _add(added.files, key, target, f"{where} line {line}: {file}")
        elif index:
            if not index.isdigit():
                raise DataError(f"{where} line {line}: index {index!r} is not a non-negative "
                                "integer (a row of the training pool)")
            _add(added.by_index, int(index), target, f"{where} line {line}: index {index}")
        else:
            raise DataError(f"{where} line {line}: the label {label!r} has neither a file nor "
                            "an index")
    return added


def _add(table: dict, key, target: int, what: str) -> None:
    if table.get(key, target) != target:
        raise DataError(f"{what} is labeled twice with different classes; keep one row")
    table[key] = target
