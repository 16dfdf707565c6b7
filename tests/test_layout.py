"""The house rules of docs/architecture.md, checked on the source: which layer may import which,
no import cycles between modules, and no Python file over 500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500

# layer -> the layers it may import (clexrt.errors is open to every layer)
ALLOWED = {
    "gguf": {"rope"},                  # the schema checks the clex.* tables
    "rope": set(),
    "engine": {"gguf", "rope"},
    "text": {"engine", "gguf"},
    "api": {"engine", "gguf", "rope", "text"},
    "server": {"engine", "gguf", "rope", "text", "api"},   # the HTTP face of the api layer
    "cli": {"engine", "gguf", "rope", "text", "api", "server", "convert"},
    "convert": {"engine", "gguf", "rope", "text"},
}


def _modules():
    """module name -> file, for clexrt/ and convert/ (installed as clexrt.convert)."""
    mods = {}
    for base, pkg in ((ROOT / "clexrt", "clexrt"), (ROOT / "convert", "clexrt.convert")):
        for f in base.rglob("*.py"):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg] + parts)] = f
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every clexrt module `name` imports, at module level or inside functions."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import module` names a module; `from module import name` does not
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] == "clexrt")
    return out


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    if len(parts) < 2 or parts[1] in ("errors", "_native"):
        return None
    return "api" if parts[1] == "api" else parts[1]


def test_layers_import_only_what_they_may():
    bad = []
    for name, path in MODULES.items():
        src = _layer(name)
        if src is None or src not in ALLOWED:
            continue
        for target in _imports(name, path):
            dst = _layer(target)
            if dst is not None and dst != src and dst not in ALLOWED[src]:
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_only_the_cli_imports_the_converter():
    users = sorted(name for name, path in MODULES.items()
                   if _layer(name) not in ("convert", "cli")
                   and any(_layer(t) == "convert" for t in _imports(name, path)))
    assert users == []


def test_no_import_cycles():
    graph = {name: {t for t in _imports(name, path) if t in MODULES and t != name}
             for name, path in MODULES.items()}
    # a package's __init__ re-exporting its modules is not a cycle with them
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_python_files_are_at_most_500_lines():
    files = [p for d in ("clexrt", "convert", "tests", "tools", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
