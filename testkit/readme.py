"""The README's "## Quickstart: local" section as its fenced code blocks.

tests/e2e/test_readme.py runs them as pasted; tests/unit/test_readme_blocks.py checks, without
starting anything, that the section still has the blocks that test depends on.
"""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart_blocks(readme: Path = README) -> list[tuple[str, str]]:
    """(language, body) of every ```bash / ```python block of the local quickstart, in order."""
    text = readme.read_text()
    start = text.index("## Quickstart: local")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```(bash|python)\n(.*?)```", text[start:end], flags=re.S)
