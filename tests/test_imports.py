"""No import loop inside the package: every module's imports (at the top and inside functions)
form a graph without cycles, and the engine and the analyses name no task module."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gen", "train", "analyze")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports}, read from the source with ast."""
    files = [ROOT / "cli.py"] + [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from train import tasks` imports the module train.tasks; `from gen import QuadlabError`, the package
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module for alias in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_planted_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_loop_in_the_package():
    graph = import_graph()
    assert {"cli", "train.engine", "analyze.heads", "analyze.maps", "train.quadratic"} <= set(graph)
    assert "train.tasks" in graph["cli"]  # `from train import tasks` is seen
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_engine_and_analyses_name_no_task():
    """The engine and the analyses reach a task only through train/tasks.py and train/runs.py."""
    from train.tasks import TASKS

    task_modules = {registration.module for registration in TASKS.values()}
    graph = import_graph()
    for name, imports in graph.items():
        if name == "train.engine" or name.startswith("analyze."):
            assert not imports & task_modules, f"{name} imports {imports & task_modules}"
