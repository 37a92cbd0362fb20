"""Package layering: no entry point imports another, and the modules import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.paths import REPO

SRC = REPO / "src" / "calib_seg"
#: modules run as ``python -m calib_seg.<name>``; shared code lives in the modules they import
ENTRY_POINTS = {"calib_seg.train", "calib_seg.evaluate", "calib_seg.predict", "calib_seg.report",
                "calib_seg.synth", "calib_seg.export", "calib_seg.study"}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(top_level_only: bool) -> dict[str, set[str]]:
    """calib_seg module -> the calib_seg modules it imports (all imports, or only those run at import time)."""
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        found: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("calib_seg"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("calib_seg"))
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_entry_point_imports_another():
    graph = imports(top_level_only=False)
    offenders = {m: sorted(graph[m] & ENTRY_POINTS) for m in ENTRY_POINTS if graph.get(m, set()) & ENTRY_POINTS}
    assert offenders == {}


def test_modules_import_each_other_without_cycles():
    graph = imports(top_level_only=False)  # function-level imports too: deferring one must not hide a cycle
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    cycles = [c for m in sorted(graph) if m not in state and (c := visit(m, []))]
    assert cycles == []
