"""What the code's layout promises, checked from the source: no import cycle (type-only imports included),
and one owner for the saga's tables (no statement on them outside bus/saga/)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bus", "order_svc", "inventory_svc", "payment_svc", "cli")
SAGA_SQL = re.compile(r"\b(FROM|INTO|UPDATE|TABLE|JOIN)\s+(sagas|saga_steps)\b", re.IGNORECASE)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules `path` imports, wherever the import stands (under TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return found & known.keys()


def test_no_module_imports_itself_through_others_not_even_for_types():
    known = modules()
    graph = {name: imports(path, known) for name, path in known.items()}
    cycles = []
    for start in graph:  # a path from a module back to itself
        seen, todo = set(), [(start, (start,))]
        while todo:
            name, trail = todo.pop()
            for nxt in graph[name]:
                if nxt == start:
                    cycles.append(" -> ".join((*trail, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    todo.append((nxt, (*trail, nxt)))
    assert cycles == []


def test_only_the_saga_engine_writes_sql_on_the_saga_tables():
    outside = [
        f"{path.relative_to(ROOT)}: {node.value.strip()[:60]}"
        for name, path in modules().items()
        if not name.startswith("bus.saga.")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SAGA_SQL.search(node.value)
    ]
    assert outside == []
