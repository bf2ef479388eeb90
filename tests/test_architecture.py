"""The layers, checked on the source: every import of every module of the repository (imports
inside functions included) must leave the module graph without a cycle, and the installable
runtime (orthoad_runtime) must import nothing of the repository above it (pipeline, models,
datasets, the scripts, utils, schema, ...) anywhere, nor Paddle when it is imported."""
import ast
import os

import pytest

from conftest import ROOT

SKIP = {".venv", ".venv-gpu", ".venv-deploy", ".git", "tests", "build", "output", "demo_data",
        "test_tipc", "bench"}


def _modules():
    """{dotted module name: path} of the repository's Python files."""
    out = {}
    for folder, dirs, files in os.walk(ROOT):
        rel = os.path.relpath(folder, ROOT)
        if rel != "." and rel.split(os.sep)[0] in SKIP or "egg-info" in rel:
            dirs[:] = []
            continue
        for f in files:
            if f.endswith(".py"):
                parts = ([] if rel == "." else rel.split(os.sep)) + [f[:-3]]
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = os.path.join(folder, f)
    return out


def _resolve(name, modules):
    """The repository module ``name`` refers to (the longest known prefix), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def _imports(module, path, modules):
    """[(target module or external name, at module level?)] of one file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                    if package else []
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            out.append((target or name, id(node) in top))
    return out


def _graph():
    modules = _modules()
    graph = {m: set() for m in modules}
    external = {m: set() for m in modules}
    for m, path in modules.items():
        for target, at_top in _imports(m, path, modules):
            if target in modules:
                if target != m:
                    graph[m].add(target)
            elif at_top:
                external[m].add(target.split(".")[0])
    return graph, external


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    import sys
    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_module_graph_has_no_cycle():
    graph, _ = _graph()
    assert len(graph) > 60
    assert _cycles(graph) == []


def test_the_runtime_imports_nothing_above_it_and_no_paddle_at_import():
    graph, external = _graph()
    runtime = [m for m in graph if m == "orthoad_runtime" or m.startswith("orthoad_runtime.")]
    assert len(runtime) >= 15
    for m in runtime:
        above = sorted(t for t in graph[m] if not t.startswith("orthoad_runtime"))
        assert above == [], f"{m} imports {above}"
        assert "paddle" not in external[m], f"{m} imports paddle when it is imported"


@pytest.mark.parametrize("edit, expected", [
    ("runtime_up", "imports"), ("cycle", "cycle")])
def test_the_checks_fail_when_the_rule_is_broken(edit, expected, monkeypatch):
    """Break each rule in the graph read from the sources (a runtime module importing
    pipeline; pipeline.fit imported back by a module it imports): the checks see it."""
    graph, external = _graph()
    if edit == "runtime_up":
        graph["orthoad_runtime.detector"].add("pipeline.model")
        bad = [m for m in graph if m.startswith("orthoad_runtime")
               and any(not t.startswith("orthoad_runtime") for t in graph[m])]
        assert bad == ["orthoad_runtime.detector"]
    else:
        graph["pipeline.graphs"].add("pipeline.fit")
        assert any("pipeline.fit" in c and "pipeline.graphs" in c for c in _cycles(graph))
