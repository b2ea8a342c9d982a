"""The README's examples, for the tests that run them as written.

An example a test runs cannot silently drift from the code: each README
section's first ```python block is read from README.md itself.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def example(heading: str, index: int = 0) -> str:
    """The ``index``-th python block of the README section titled ``heading``.

    The section ends at the next heading of its level or above; a ``#`` line
    inside a code block is a comment, not a heading.
    """
    level = 0
    fence = python = False
    blocks: list[list[str]] = []
    for line in README.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            fence = not fence
            python = fence and level > 0 and line.strip() == "```python"
            if python:
                blocks.append([])
            continue
        if not fence and (match := re.match(r"^(#+) (.*?)\s*$", line)):
            if level and len(match[1]) <= level:
                break
            if not level and match[2] == heading:
                level = len(match[1])
        elif python:
            blocks[-1].append(line)
    assert level, f"README.md has no section {heading!r}"
    assert len(blocks) > index, f"README section {heading!r} has no python block {index}"
    return "".join(blocks[index])
