"""The demo runs from a checkout (it is not in the wheel): the paths it derives from its own
location must name the repo's files, wherever the package sits in the tree."""
from __future__ import annotations

import importlib
from pathlib import Path

from cluster.demo import stack

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_finds_the_repo_and_the_serve_configs():
    demo = importlib.import_module("cluster.demo.__main__")  # the guard keeps main() from running
    assert demo.REPO_ROOT == ROOT and (demo.REPO_ROOT / "pyproject.toml").is_file()
    assert stack.CONFIGS == ROOT / "serve_apps" / "configs"
    assert (stack.CONFIGS / "local-cpu.yaml").is_file() and (stack.CONFIGS / "gateway-serve.yaml").is_file()
