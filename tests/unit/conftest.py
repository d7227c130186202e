"""Unit tier: pure logic only. Importing Ray or vLLM here is a test-layout bug, so it fails."""
from __future__ import annotations

import importlib.abc
import sys

_FORBIDDEN = ("ray", "vllm")


class _ForbidHeavyImports(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in _FORBIDDEN:
            raise ImportError(f"unit tests must not import {fullname!r}; move the test to integration/ or e2e/")
        return None


sys.meta_path.insert(0, _ForbidHeavyImports())
