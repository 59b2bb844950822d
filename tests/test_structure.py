"""The shape of the code base: no import circle inside golong/, no over-long function.

Imports are read from the source with `ast` (nothing is imported). An edge A -> B is an `import` or
`from ... import` statement in module A that names golong module B; importing `golong.x.y` also runs
the package `golong.x`, so it counts as an edge to `golong.x` too. Statements count as:
  module-level    anywhere that runs when A is imported: the top level, class bodies, top-level
                  `if` / `try` blocks (except `if TYPE_CHECKING:`, which never runs);
  function-level  inside a function body: runs only when the function is called (a lazy import).
Module-level edges must form no circle at all: such a circle makes the import order matter and
half-initialised modules visible. A circle that needs a function-level edge works at run time but
still ties the modules into one knot, so all edges together must form none beyond the known ones
listed in FUNCTION_LEVEL_CIRCLES, which may only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
KERNELS = {"ksa/triton_attention.py"}  # Triton kernels: one launch's code reads best in one piece
# over-long functions that are there to be split (none left); the set may only shrink: a function
# brought under the limit must leave it
LONG_FUNCTIONS: set[str] = set()
# circles that need a function-level edge, which may only shrink (none left: the engine factory moved
# out of the engines' interface module into the registry, golong/rollout/__init__.py)
FUNCTION_LEVEL_CIRCLES: set[frozenset[str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / "golong").rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, here: str, known: dict[str, Path]) -> list[str]:
    """golong modules (and the packages on their way) that an import statement loads. A module's own
    parent packages are left out: Python loads them before the module whatever it imports."""
    assert not getattr(node, "level", 0), f"{here}: relative import (resolve it here before using one)"
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
    mine = here.split(".")
    parents = {".".join(mine[:i]) for i in range(1, len(mine))}
    out = []
    for name in names:
        parts = name.split(".")
        for i in range(2, len(parts) + 1):  # golong.x, golong.x.y, ... (the bare `golong` package is empty)
            mod = ".".join(parts[:i])
            if mod in known and mod != here and mod not in parents and mod not in out:
                out.append(mod)
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_edges() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, function-level edges) between golong modules."""
    known = _modules()
    top: dict[str, set[str]] = {m: set() for m in known}
    lazy: dict[str, set[str]] = {m: set() for m in known}

    def visit(node: ast.AST, here: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                (lazy if in_function else top)[here].update(_targets(child, here, known))
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, here, inner)

    for mod, path in known.items():
        visit(ast.parse(path.read_text()), mod, False)
    return top, lazy


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1 or v in edges.get(v, ()):
                found.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_import_edges_are_read():
    top, lazy = import_edges()
    assert "golong.learner" in top["golong.trainer"]
    assert "golong.distributed" in top["golong.learner"]
    assert "golong.learner" in lazy["golong.roles"]  # build_learner imports the learner when called


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_circle_in_golong():
    top, _ = import_edges()
    assert circles(top) == []


def test_no_new_import_circle_through_lazy_imports():
    top, lazy = import_edges()
    both = {m: top[m] | lazy[m] for m in top}
    found = {frozenset(c) for c in circles(both)}
    assert found <= FUNCTION_LEVEL_CIRCLES, sorted(sorted(c) for c in found - FUNCTION_LEVEL_CIRCLES)
    assert found == FUNCTION_LEVEL_CIRCLES, f"circles gone, drop them from the list: {FUNCTION_LEVEL_CIRCLES - found}"


def long_functions() -> dict[str, int]:
    """'path::Qualified.name' -> lines (def line to last line) of every function over MAX_LINES."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, path: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = child.end_lineno - child.lineno + 1
                if lines > MAX_LINES:
                    out[f"{path}::{prefix}{child.name}"] = lines
                visit(child, path, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, path, f"{prefix}{child.name}.")
            else:
                visit(child, path, prefix)

    for package in ("golong", "ksa", "tasks", "rewards"):
        for file in sorted((ROOT / package).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            if rel not in KERNELS:
                visit(ast.parse(file.read_text()), rel, "")
    return out


def test_no_new_function_over_80_lines():
    new = {k: v for k, v in long_functions().items() if k not in LONG_FUNCTIONS}
    assert not new, f"functions over {MAX_LINES} lines (split them): {new}"


def test_known_long_functions_are_still_long():
    shrunk = LONG_FUNCTIONS - set(long_functions())
    assert not shrunk, f"now within {MAX_LINES} lines, drop them from LONG_FUNCTIONS: {sorted(shrunk)}"
