"""The shape of the package, checked on its source: no import cycles (module-level or inside functions), no file
over 400 lines, and the math packages (edit/, merge/, eval/) import neither the runner, the checkpoint store nor
the config, and do no file I/O of their own."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mkejax"
MAX_LINES = 400
MATH = ("edit", "merge", "eval")
FORBIDDEN = ("mkejax.runner", "mkejax.checkpoint", "mkejax.config")


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The mkejax modules ``name`` imports anywhere in its file (a ``from P import x`` names the submodule P.x
    when there is one, else P itself)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _is_package_face(name: str) -> bool:
    """A package ``__init__`` re-exports its submodules: an import of the package from inside it is not a cycle."""
    return MODULES[name].name == "__init__.py"


def test_no_import_cycles():
    # A package's __init__ importing its own submodules (to re-export them) is the one allowed back edge: drop the
    # edges from a submodule to its own package's face.
    graph = {name: {m for m in deps if not (_is_package_face(m) and name.startswith(m + "."))}
             for name, deps in GRAPH.items()}  # fmt: skip
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_stay_short(name):
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, (
        f"{MODULES[name].relative_to(PACKAGE.parent)} has {lines} lines (> {MAX_LINES})"
    )


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.split(".")[1:2] and n.split(".")[1] in MATH))
def test_math_packages_stay_pure(name):
    bad = sorted(m for m in GRAPH[name] | _imports(name, MODULES[name]) if m.startswith(FORBIDDEN))
    assert not bad, f"{name} imports {bad}"
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    writes = [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("write_text", "write_bytes", "mkdir", "savez", "savefig")
    ]  # fmt: skip
    opens = [node.lineno for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"]  # fmt: skip
    assert not writes and not opens, f"{name} does file I/O at lines {writes + opens}"


def test_the_checks_can_fail():
    """The cycle finder finds a planted cycle, so the structural checks are not vacuous."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
