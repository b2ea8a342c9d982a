"""The README's examples, for the tests that run them as written.

An example a test runs cannot silently drift from the code: each README
section's first ```python block is read from README.md itself.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def example(heading: str, index: int = 0) -> str:
    """The ``index``-th python block of the README section titled ``heading``."""
    text = README.read_text()
    start = re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert start, f"README.md has no section {heading!r}"
    level = text[start.start():].split(" ", 1)[0]
    after = text[start.end():]
    end = re.search(rf"^#{{1,{len(level)}}} ", after, re.MULTILINE)
    section = after[:end.start()] if end else after
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) > index, f"README section {heading!r} has no python block {index}"
    return str(blocks[index])
