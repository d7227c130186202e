"""The README's local quickstart still holds what tests/e2e/test_readme.py runs as pasted: a
README edit that drops a block or a command fails here, before any cluster starts."""
from __future__ import annotations

from testkit.readme import quickstart_blocks


def test_quickstart_blocks_are_found():
    kinds = [k for k, _ in quickstart_blocks()]
    assert kinds.count("bash") >= 3 and kinds.count("python") >= 2
    script = "\n".join(b for k, b in quickstart_blocks() if k == "bash")
    assert "thawline chat tiny -m" in script and "ray start --head" in script
