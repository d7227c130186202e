"""The wheel built from pyproject.toml is the product: no test support (testkit/), no repo tooling
that uses it (cluster/demo/), and nothing in it imports testkit; and the product CLI verb that
generates a model (`thawline model tiny`) runs from the installed wheel alone.

Built for real (pip wheel, the venv's setuptools, no network) from a copy of the checkout, so the
build leaves nothing in the working tree; installed by unpacking (a pure wheel is a zip of its
site-packages tree) and run with only that tree on the path, from a directory outside the repo.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("pyproject.toml", "README.md", "snapshots", "gateway", "serve_apps", "cluster", "testkit")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in COPIED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (whl,) = out.glob("thawline-*.whl")
    return whl


def _names(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        return z.namelist()


def _imports_testkit(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "testkit" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "testkit":
            return True
    return False


def test_the_wheel_holds_the_product_and_no_test_support(wheel):
    names = _names(wheel)
    tops = {n.split("/")[0] for n in names if not n.startswith("thawline-")}
    assert tops == {"snapshots", "gateway", "serve_apps", "cluster"}, tops
    assert "cluster/cli/model.py" in names and "cluster/models/tinyllama.py" in names
    assert not [n for n in names if n.startswith(("testkit/", "cluster/demo/"))]


def test_nothing_in_the_wheel_imports_testkit(wheel):
    with zipfile.ZipFile(wheel) as z:
        users = [n for n in z.namelist() if n.endswith(".py") and _imports_testkit(z.read(n).decode())]
    assert not users, users
    # the reader itself sees both import forms (a check that cannot fail checks nothing)
    assert _imports_testkit("import testkit.net") and _imports_testkit("def f():\n from testkit import x\n")


def test_thawline_model_tiny_runs_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    out = tmp_path / "tiny"
    script = ("import sys, cluster; assert cluster.__file__.startswith(sys.argv[1]), cluster.__file__; "
              "from cluster.cli.main import main; sys.argv = ['thawline', 'model', 'tiny', sys.argv[2]]; main()")
    ran = subprocess.run([sys.executable, "-c", script, str(site), str(out)], cwd=tmp_path, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)},
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"wrote {out}" in ran.stdout
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
