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
# the one exception between the two bases: the key store's records need the same atomic and
# exclusive publish on every fsspec backend (link(2) locally, a conditional PUT on S3) that
# snapshot.json does, so gateway/ uses that one leaf of snapshots/ instead of a second copy
ALLOWED = {"gateway": {"snapshots.fsutil"}}
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


def _allowed(package: str, name: str) -> bool:
    return any(name == leaf or name.startswith(leaf + ".") for leaf in ALLOWED.get(package, ()))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_go_one_way(package):
    bad = []
    for path in _py_files(package):
        rel = str(path.relative_to(ROOT))
        forbidden = FORBIDDEN[package] - ({"testkit"} if rel in TESTKIT_USERS else set())
        for name in _imports(path, top_level_only=False):
            if name.split(".")[0] in forbidden and not _allowed(package, name):
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


# -- one owner per cross-process contract ---------------------------------------------------------
# Each contract's names are written as literals in its owner only; every other side imports them.
# A second literal definition (a phase name, a state compared or listed, a handle request or an
# LLM-app error body built by hand, the cache dir resolved again, the loader's log line parsed)
# fails here. Docstrings and comments may name them: only exact literals count. (testkit's fake
# providers answer in other vendors' error shapes: not the LLM app's.)

PHASES_OWNER, STATES_OWNER = "gateway/cold_start_phases.py", "gateway/readiness.py"
PROTOCOL_OWNER = "gateway/llm_protocol.py"
CACHE_OWNER, LOADER = "snapshots/cache.py", "snapshots/vllm_engine/loader.py"
# distinctive phase and mark names (the generic ones, imports/first_token/request/total, count in
# collections only)
PHASE_NAMES = {"serve_scheduling", "worker_start", "engine_prepare", "engine_start_with_weights",
               "process_start", "init_start", "imports_done", "engine_prepared", "engine_ready"}
PHASE_ALL = PHASE_NAMES | {"imports", "first_token", "request"}
STATES = {"starting", "warm", "stopped", "cold", "warming"}


def _strs(nodes) -> list[str]:
    return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _keys(node: ast.Dict) -> set[str]:
    return set(_strs(k for k in node.keys if k is not None))


def contract_violations(source: str, rel: str) -> list[str]:
    """What in `source` (the file `rel`) re-defines a contract its owner holds."""
    out = []
    tree = ast.parse(source)
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            v = node.value
            if v in PHASE_NAMES and rel != PHASES_OWNER:
                out.append(f"{rel}:{node.lineno}: cold-start phase/mark {v!r} (import it from {PHASES_OWNER})")
            if v == "max_wait_s" and rel != PROTOCOL_OWNER:
                out.append(f"{rel}:{node.lineno}: handle request key {v!r} (build/read it with HandleRequest)")
            if v in ("THAWLINE_CACHE_DIR", "XDG_CACHE_HOME") and rel != CACHE_OWNER:
                out.append(f"{rel}:{node.lineno}: cache dir resolved again ({v}; use {CACHE_OWNER} default_cache_dir)")
            if ("loaded weights" in v or "peak_device_mib=" in v) and rel != LOADER:
                out.append(f"{rel}:{node.lineno}: the loader's log line read back (read_rank_loads reads its event)")
        elts = (list(node.elts) if isinstance(node, (ast.Tuple, ast.List, ast.Set))
                else list(node.keys) if isinstance(node, ast.Dict) else [])
        named = set(_strs(elts))
        if len(named & PHASE_ALL) >= 2 and rel != PHASES_OWNER:
            out.append(f"{rel}:{node.lineno}: cold-start phases listed again {sorted(named & PHASE_ALL)}")
        if len(named & STATES) >= 2 and rel != STATES_OWNER:
            out.append(f"{rel}:{node.lineno}: readiness states listed again {sorted(named & STATES)}")
        if isinstance(node, ast.Compare) and rel != STATES_OWNER:
            for v in _strs([node.left, *node.comparators]):
                if v in STATES:
                    out.append(f"{rel}:{node.lineno}: readiness state {v!r} compared as a literal")
        if isinstance(node, ast.Dict):
            keys = _keys(node)
            if {"endpoint", "body"} <= keys and rel != PROTOCOL_OWNER:
                out.append(f"{rel}:{node.lineno}: handle request built by hand (use HandleRequest.to_wire)")
            inner = [v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant) and k.value == "error"]
            if (any(isinstance(v, ast.Dict) and {"message", "type", "code"} <= _keys(v) for v in inner)
                    and rel not in (PROTOCOL_OWNER, "gateway/errors.py") and not rel.startswith("testkit/")):
                out.append(f"{rel}:{node.lineno}: error body built by hand (llm_protocol.error_body / gateway.errors)")
    return out


def test_each_contract_is_written_out_in_its_owner_only():
    bad = []
    for path in _py_files(*PRODUCT, "bench", "testkit"):
        rel = str(path.relative_to(ROOT))
        bad += contract_violations(path.read_text(), rel)
    assert not bad, "contract defined outside its owner:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, found", [
    ('PHASES = ("serve_scheduling", "worker_start")', "phase/mark 'serve_scheduling'"),
    ('order = ["imports", "first_token"]', "phases listed again"),
    ('marks["engine_ready"] = 1.0', "phase/mark 'engine_ready'"),
    ('if st.get("state") != "warm": pass', "state 'warm' compared"),
    ('colors = {"warm": 1, "cold": 2}', "states listed again"),
    ('req = {"endpoint": "chat", "body": {}}', "handle request built by hand"),
    ('wait = request.get("max_wait_s")', "handle request key"),
    ('e = {"error": {"message": m, "type": "x", "param": None, "code": 400}}', "error body built by hand"),
    ('d = os.environ.get("XDG_CACHE_HOME")', "cache dir resolved again"),
    ('R = re.compile(r"rank (\\d+) loaded weights in ([0-9.]+) s")', "log line read back"),
])
def test_the_contract_check_can_fail(source, found):
    """Each rule above really fires on a second definition (a rule that cannot fail checks
    nothing), and stays quiet in the owner and on a docstring that merely names the contract."""
    assert any(found in v for v in contract_violations(source, "serve_apps/llm/elsewhere.py")), source
    owner = {"phase": PHASES_OWNER, "phases": PHASES_OWNER, "state": STATES_OWNER, "states": STATES_OWNER,
             "handle": PROTOCOL_OWNER, "error": PROTOCOL_OWNER, "cache": CACHE_OWNER, "log": LOADER}
    assert not contract_violations(source, owner[found.split()[0].split("/")[0]]), source
    assert not contract_violations(f'"""{source.replace(chr(92), "")}"""', "serve_apps/llm/elsewhere.py")


# ---- one owner for the x-thawline-* header names --------------------------------------------
HEADER_PREFIX = "x-thawline-"
HEADER_OWNER = "gateway/response_headers.py"


def _header_literals(path: Path) -> list[str]:
    """`x-thawline-` in a str/bytes literal of the file (f-string parts too), docstrings aside:
    prose may name a header, code must take the name from the owner module."""
    tree = ast.parse(path.read_text(), str(path))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and id(n) not in docs and isinstance(n.value, (str, bytes)):
            text = n.value.decode("latin-1") if isinstance(n.value, bytes) else n.value
            if HEADER_PREFIX in text.lower():
                out.append(f"{path.relative_to(ROOT)}:{n.lineno}: {text!r}")
    return out


def test_thawline_header_names_have_one_owner():
    """Every x-thawline-* header name (and the prefix) is written in gateway/response_headers.py
    only; writers and the client import it, so a second spelling cannot drift."""
    bad = [hit for p in _py_files(*PRODUCT) if str(p.relative_to(ROOT)) != HEADER_OWNER
           for hit in _header_literals(p)]
    assert not bad, f"x-thawline-* header literal outside {HEADER_OWNER}:\n" + "\n".join(bad)
    assert _header_literals(ROOT / HEADER_OWNER), "the owner module defines no header name"


def test_the_header_literal_check_can_fail(tmp_path, monkeypatch):
    """The check sees str, bytes and f-string literals, and not docstrings."""
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    f = tmp_path / "gateway" / "writer.py"
    f.parent.mkdir()
    f.write_text('"""Writes x-thawline-target (prose)."""\n'
                 'A = "X-Thawline-Target"\nB = (b"x-thawline-replica", b"r")\n'
                 'def h(k):\n    """x-thawline-* docs."""\n    return f"x-thawline-{k}"\n')
    hits = _header_literals(f)
    assert [h.split(":")[1] for h in hits] == ["2", "3", "6"], hits


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
