"""No import cycle among `mechscope` modules and no import against the layering table of ARCHITECTURE.md.

Every import counts, at module level or inside a function (a lazy import runs too); only `if
TYPE_CHECKING` blocks are left out."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mechscope"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, module: str, is_package: bool, lazy: bool = True) -> set[str]:
    """Names imported when the module runs: its body, try/if/with blocks (not TYPE_CHECKING) and,
    with `lazy`, function and class bodies too."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    base = base if is_package else base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                found.add(prefix)
                found.update(f"{prefix}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.With, ast.For, ast.While)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
            elif lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(node.body)

    visit(tree.body)
    return found


def import_graph(lazy: bool = True) -> dict[str, set[str]]:
    """Module -> the mechscope modules it imports (with `lazy`, inside functions too)."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imported = _imports(tree, name, path.name == "__init__.py", lazy)
        edges = set()
        for target in imported:
            # `from a.b import c` names module a.b.c when it exists, else a.b
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return components


# The engine's plain data and its Protocol: what may be imported above the engine without torch.
ENGINE_DATA = (
    "mechscope.engine",  # the package itself: a lazy facade (`from mechscope.engine import Engine`)
    "mechscope.engine.addresses",
    "mechscope.engine.backend_info",
    "mechscope.engine.capabilities",
    "mechscope.engine.errors",
    "mechscope.engine.features",  # the package itself holds only its docstring
    "mechscope.engine.features.results",
    "mechscope.engine.interventions",
    "mechscope.engine.metric",
    "mechscope.engine.prompt_sets",
    "mechscope.engine.protocol",
    "mechscope.engine.results",
    "mechscope.engine.views",
)
SERVE_CLIENT = ("mechscope.serve", "mechscope.serve.client", "mechscope.serve.codec", "mechscope.serve.runtime",
                "mechscope.serve.wire")
SERVE_SERVER = ("mechscope.serve.server", "mechscope.serve.jobs")

# The layering of ARCHITECTURE.md: a module may import its own package, the `mechscope` root and what
# the longest entry naming it (or a package above it) lists: a module exactly, or with ".*" a package
# and everything in it. Adding a package is one line.
LAYERS: dict[str, tuple[str, ...]] = {
    "mechscope.engine": (),
    "mechscope.backends": ("mechscope.engine.*",),
    "mechscope.requests": ENGINE_DATA,
    "mechscope.sessions": (*ENGINE_DATA, "mechscope.requests.*"),
    "mechscope.workbench": (*ENGINE_DATA, "mechscope.requests.*", "mechscope.sessions.*"),
    "mechscope.screens": (*ENGINE_DATA, "mechscope.requests.*", "mechscope.sessions.*", "mechscope.workbench.*",
                          "mechscope.tui.*"),
    # the App loads the engine: in-process through `backends.load_engine`, or attached to a server
    "mechscope.tui": (*ENGINE_DATA, "mechscope.requests.*", "mechscope.sessions.*", "mechscope.workbench.*",
                      "mechscope.screens.*", "mechscope.backends", *SERVE_CLIENT),
    # the client speaks the wire with plain data only (an attached workbench has no torch)
    **dict.fromkeys(SERVE_CLIENT, (*ENGINE_DATA, "mechscope.requests.*", "mechscope.requests.kinds",
                                   *SERVE_CLIENT)),
    # the server runs requests on an engine
    **dict.fromkeys(SERVE_SERVER, ("mechscope.engine.*", "mechscope.requests.*", "mechscope.requests.kinds",
                                   "mechscope.requests.registry", "mechscope.serve.*")),
    "mechscope.cli": ("mechscope.*",),
    "mechscope.__main__": ("mechscope.cli",),
}


def _rule(module: str) -> str:
    """The LAYERS entry governing `module` (the longest that names it or a package above it)."""
    named = [key for key in LAYERS if module == key or module.startswith(key + ".")]
    assert named, f"{module} is in no package of the layering table: add its package to LAYERS"
    return max(named, key=len)


def _allowed(module: str, target: str) -> bool:
    package = ".".join(module.split(".")[:2])
    if target in ("mechscope", package) or target.startswith(package + ".") and package != "mechscope.serve":
        return True
    for allowed in LAYERS[_rule(module)]:
        if allowed.endswith(".*"):
            if target == allowed[:-2] or target.startswith(allowed[:-1]):
                return True
        elif target == allowed:
            return True
    return False


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if not _allowed(module, target))


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "mechscope.engine.passes" in graph["mechscope.engine.core"]
    assert "mechscope.engine.core" not in graph["mechscope.engine.sweeps"]
    # an import inside a function is an edge too
    assert "mechscope.engine.set_runs" in graph["mechscope.engine.core"]
    assert "mechscope.engine.set_runs" not in import_graph(lazy=False)["mechscope.engine.core"]


def test_the_engine_has_no_import_cycle():
    graph = import_graph()
    engine = {name: {t for t in edges if t.startswith("mechscope.engine")}
              for name, edges in graph.items() if name.startswith("mechscope.engine")}
    assert find_cycles(engine) == []


def test_no_import_cycle_in_mechscope():
    assert find_cycles(import_graph()) == []


def test_a_cycle_is_found():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_follow_the_layering_table():
    assert layering_violations(import_graph()) == []


def test_a_layering_violation_is_found():
    graph = {"mechscope.sessions.store": {"mechscope.engine.core", "mechscope.engine.results"},
             "mechscope.serve.client": {"mechscope.serve.server", "mechscope.serve.codec"},
             "mechscope.tui.app": {"mechscope.cli.common", "mechscope.screens.workbench"},
             "mechscope.engine.core": {"mechscope.serve.client", "mechscope.engine.passes"}}
    assert layering_violations(graph) == [
        "mechscope.engine.core -> mechscope.serve.client",
        "mechscope.serve.client -> mechscope.serve.server",
        "mechscope.sessions.store -> mechscope.engine.core",
        "mechscope.tui.app -> mechscope.cli.common",
    ]
