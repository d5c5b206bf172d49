"""The library's shape: no module-level import cycles, no module far over ~400 lines, and the data flowing one way
(model and rope code never import evaluation, search, training or the pipeline)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "longrope_jax"
# Rooms in the order data flows; a room may import the ones before it, never the ones after.
LOWER_ROOMS = ("rope", "model")
HIGHER_ROOMS = ("eval", "search", "train", "pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """longrope_jax modules imported at module level (imports inside functions run later and cannot cycle)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("longrope_jax"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("longrope_jax"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in top_level_imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_module_level_import_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):  # a package's own __init__ is no cycle
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [node, nxt])
                                     if nxt in stack else f"import cycle through {node} -> {nxt}")
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [])


def test_model_and_rope_never_import_the_rooms_that_use_them():
    for name, imports in graph().items():
        room = name.split(".")[1] if "." in name else ""
        if room in LOWER_ROOMS:
            upward = sorted(m for m in imports if m.split(".")[1] in HIGHER_ROOMS)
            assert not upward, f"{name} imports {upward}"


def test_no_module_far_over_400_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long
