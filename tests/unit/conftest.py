"""Unit tier: pure logic only. Importing Ray or vLLM here is a test-layout bug, so it fails.

The guard is installed only when pytest runs the unit tier on its own (as `make test` does,
one pytest process per tier): a meta-path finder is process-wide, and in a combined run it
would also block the integration and e2e tiers' legitimate imports.
"""
from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path

_FORBIDDEN = ("ray", "vllm")
_UNIT_DIR = Path(__file__).resolve().parent


class _ForbidHeavyImports(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in _FORBIDDEN:
            raise ImportError(f"unit tests must not import {fullname!r}; move the test to integration/ or e2e/")
        return None


def _only_unit_tier(args: list[str]) -> bool:
    paths = [Path(a.split("::")[0]).resolve() for a in args if not a.startswith("-")]
    return bool(paths) and all(p == _UNIT_DIR or _UNIT_DIR in p.parents for p in paths)


def pytest_configure(config):
    if _only_unit_tier(list(config.args)) and not any(isinstance(f, _ForbidHeavyImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _ForbidHeavyImports())
