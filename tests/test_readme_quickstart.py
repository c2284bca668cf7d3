"""The Python quick-start snippet of the README runs as written and reaches its accuracy.

The snippet lives between ``<!-- QUICKSTART:START -->`` and ``<!-- QUICKSTART:END -->``, in
README.md when it has been pasted there, else in docs/python_api.md.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- QUICKSTART:START -->", "<!-- QUICKSTART:END -->"


def quickstart_snippet() -> tuple[Path, str]:
    """(source file, Python code) of the first file among README.md and docs/python_api.md."""
    for path in (ROOT / "README.md", ROOT / "docs" / "python_api.md"):
        text = path.read_text() if path.is_file() else ""
        if START in text and END in text:
            block = text[text.index(START) + len(START) : text.index(END)]
            code = re.search(r"```python\n(.*?)```", block, re.DOTALL)
            assert code, f"no ```python block between the quick-start markers of {path}"
            return path, code.group(1)
    pytest.fail("no quick-start snippet in README.md or docs/python_api.md")


def test_snippet_is_short():
    _, code = quickstart_snippet()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 10, f"the quick-start should be 10 lines, it has {len(lines)}"


@pytest.mark.slow
def test_quickstart_runs_and_prints_accuracy():
    source, code = quickstart_snippet()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(source), "exec"), {"__name__": "__quickstart__"})
    match = re.search(r"accuracy: (\d\.\d+)", out.getvalue())
    assert match, f"the snippet printed {out.getvalue()!r}"
    assert float(match.group(1)) > 0.85  # measured 0.933; chance is 0.1
