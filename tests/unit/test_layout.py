"""The layout rules of docs/ARCHITECTURE.md, checked on the source (ast only, nothing imported).

- dependencies go one way: snapshots and gateway are two bases that import neither each other
  nor anything above them; serve_apps joins them; cluster imports anything. Product code never
  imports tests/ or testkit/ (the demo, repo tooling left out of the wheel, and benches may use
  testkit), and testkit imports nothing from cluster;
- no import cycle between the project's modules, counting imports inside functions too (a
  function-level import is for a lazy heavy dependency, never to dodge a cycle);
- no Python file over 400 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("snapshots", "gateway", "serve_apps", "cluster")
PACKAGES = (*PRODUCT, "testkit", "bench", "tests")
MAX_LINES = 400

# package -> top-level packages it must never import (anywhere in the file)
FORBIDDEN = {
    "snapshots": {"gateway", "serve_apps", "cluster", "testkit", "tests", "bench"},
    "gateway": {"snapshots", "serve_apps", "cluster", "testkit", "tests", "bench"},
    "serve_apps": {"cluster", "testkit", "tests", "bench"},
    "cluster": {"testkit", "tests", "bench"},
    "testkit": {"cluster", "tests", "bench"},
}
# the demo (repo tooling, excluded from the wheel in pyproject.toml) drives testkit's loopback
# fake providers; every other file under cluster/ ships and must not import testkit
TESTKIT_USERS = {"cluster/demo/__main__.py", "cluster/demo/stack.py", "cluster/demo/session.py",
                 "cluster/demo/snapshot.py", "cluster/demo/ui.py"}


def _py_files(*tops: str) -> list[Path]:
    out = []
    for top in tops:
        out += [p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(out)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Dotted names imported by the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = _module_name(path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.If) and top_level_only and not _is_type_checking(node):
            for sub in node.body + node.orelse:
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    out |= _imports_of_node(sub, pkg)
    return out


def _imports_of_node(node, pkg: list[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if node.level:
        base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
        mod = ".".join([*base, node.module] if node.module else base)
    else:
        mod = node.module or ""
    return {mod} | {f"{mod}.{a.name}" for a in node.names}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_go_one_way(package):
    bad = []
    for path in _py_files(package):
        rel = str(path.relative_to(ROOT))
        forbidden = FORBIDDEN[package] - ({"testkit"} if rel in TESTKIT_USERS else set())
        for name in _imports(path, top_level_only=False):
            if name.split(".")[0] in forbidden:
                bad.append(f"{rel} imports {name}")
    assert not bad, "layout rule broken:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycle_between_modules():
    files = _py_files(*PRODUCT, "testkit")
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imp in _imports(path, top_level_only=False):
            # `from pkg import mod` names the module pkg.mod; `from mod import func` names mod
            while imp and imp not in modules:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    # a package's __init__ importing its own submodules is how packages re-export: not a cycle
    # for load order unless the submodule imports the package back, which the walk still sees
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if seen.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_file_over_the_line_limit():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _py_files(*PACKAGES)
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines:\n" + "\n".join(long)


def test_the_import_reader_sees_every_form(tmp_path, monkeypatch):
    """The checks above are only as good as the import reader: absolute, relative, nested and
    function-level imports are all seen (a rule that cannot fail checks nothing)."""
    pkg = tmp_path / "snapshots" / "sub"
    pkg.mkdir(parents=True)
    f = pkg / "mod.py"
    f.write_text("from ..errors import X\nfrom . import sibling\nimport gateway.app\n"
                 "def later():\n    from serve_apps.llm import server\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    top = _imports(f, top_level_only=True)
    assert {"snapshots.errors", "snapshots.errors.X", "snapshots.sub.sibling", "gateway.app"} <= top
    assert "serve_apps.llm.server" not in top
    assert "serve_apps.llm.server" in _imports(f, top_level_only=False)


# --- product vs support: function length, testkit both ways, the demo's exemption -------------
import sys  # noqa: E402
import tomllib  # noqa: E402

MAX_FUNCTION_LINES = 60  # def line to last line, docstring included; nested defs count in both


def _long_functions(paths: list[Path], root: Path) -> list[str]:
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = node.end_lineno - node.lineno + 1
                if span > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {span} lines")
    return out


def test_no_product_function_over_the_line_limit():
    long = _long_functions(_py_files(*PRODUCT), ROOT)
    assert not long, f"product functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_function_limit_can_fail(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    f = tmp_path / "m.py"
    f.write_text(f"def fits():\n    return 1\n\n\nclass C:\n    async def too_long(self):\n{body}\n")
    assert _long_functions([f], tmp_path) == [f"m.py:6 too_long: {MAX_FUNCTION_LINES + 1} lines"]


def test_the_import_rules_catch_testkit_both_ways(tmp_path, monkeypatch):
    files = {"testkit/helper.py": "def later():\n    from cluster.config import deep_merge\n",
             "cluster/cli/model.py": "from testkit.net import free_port\n",
             "cluster/demo/stack.py": "from testkit.net import free_port\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="testkit/helper.py imports cluster.config"):
        test_dependencies_go_one_way("testkit")
    with pytest.raises(AssertionError) as broken:
        test_dependencies_go_one_way("cluster")
    assert "cluster/cli/model.py imports testkit.net" in str(broken.value)
    assert "cluster/demo" not in str(broken.value)  # the exempt demo file is not reported


def test_only_files_left_out_of_the_wheel_may_use_testkit():
    """The demo's exemption stands only because the wheel excludes it (pyproject.toml)."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not any(pat.startswith("testkit") for pat in find["include"])
    excluded = set(find.get("exclude", ()))
    for rel in TESTKIT_USERS:
        package = str(Path(rel).parent).replace("/", ".")
        assert package in excluded, f"{rel} may import testkit but its package {package} ships in the wheel"
