"""Regenerate the README's config reference table from the config dataclasses.

    python tools/sync_readme.py        # rewrite README.md in place
    python tools/sync_readme.py --check  # exit 1 if README.md is stale (what the test checks)
"""

from __future__ import annotations

import sys
from pathlib import Path

from interlude.config import config_reference_markdown

START, END = "<!-- CONFIG-REFERENCE:START -->", "<!-- CONFIG-REFERENCE:END -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def synced(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{config_reference_markdown()}\n{END}{tail}"


def main() -> int:
    text = README.read_text()
    new = synced(text)
    if "--check" in sys.argv:
        return 0 if new == text else 1
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
