"""The package's shape: no import cycle (imports inside functions included), small modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "poke_rl"
MAX_MODULE_LINES = 520
MAX_CLASS_LINES = 260


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its body (functions included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    assert "poke_rl.errors" in graph["poke_rl.cli"]
    assert all(name.startswith("poke_rl") for name in graph)


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " → ".join(cycle or [])


def test_modules_and_classes_stay_small() -> None:
    too_long = []
    for name, path in _modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"
PARTS = ("prep", "loader", "train", "algos", "showdown")


def _part(module: str) -> str:
    """``poke_rl.loader.stream`` → ``loader``; ``poke_rl.manifest`` → ``manifest``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "poke_rl"
    return parts[1]


def test_architecture_names_every_part_and_who_uses_it() -> None:
    """docs/ARCHITECTURE.md's module table lists every module or package of poke_rl once, and
    its "used by" column is the import graph: exactly the parts that import it."""
    used_by: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        for target in targets:
            if _part(module) != _part(target):
                used_by.setdefault(_part(target), set()).add(_part(module))
    rows = {}
    for line in ARCHITECTURE.read_text().splitlines():
        if line.startswith("| `poke_rl/"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            name = cells[0].strip("`").removeprefix("poke_rl/").removesuffix("/").removesuffix(".py")
            users = cells[-1].strip()  # "none yet": a module only pipelines and tests use so far
            rows[name] = set() if users == "none yet" else {u.strip() for u in users.split(",")}
    parts = {_part(module) for module in import_graph()} - {"poke_rl"}
    assert sorted(rows) == sorted(parts)
    for name, users in rows.items():
        expected = used_by.get(name, set()) - {"poke_rl"}
        if name == "cli":
            expected = {"users"}
        assert users == expected, name


def test_test_files_have_unique_names() -> None:
    # the test folders are not packages: pytest imports each file by its basename, so two files
    # of one name in different folders stop the whole collection ("import file mismatch")
    tests = Path(__file__).resolve().parent
    seen: dict[str, Path] = {}
    for path in sorted(tests.rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path
    assert len(seen) > 50  # the walk found the suite
