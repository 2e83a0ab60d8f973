"""The dependency rules of docs/design.md ("Layers"), checked on every module of the package.

Static checks read the source (every `import` statement, also those inside functions and under
`if TYPE_CHECKING`, since a lazy import is a dependency all the same): the module graph has no
cycle, and no package imports one above it in `LAYERS`. The run-time checks import a module in a
fresh interpreter and look at what came with it (torch, flwr, the CLI).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# Lowest first: a package may import itself and the packages before it, never one after it. The
# same table is in docs/design.md; a new package must be placed here before its first import.
LAYERS = (
    "errors",       # FedquadError: the one-line user error
    "plan",         # ClientPlan / TrainOptions: what one device is told to do
    "costmodel",    # profile format, memory and time of a plan, fitting (numpy, no torch)
    "devices",      # device record, catalog, scenario files, seeded sampling (budgets via the cost model)
    "planner",      # the FedQuad planner over devices and costs
    "aggregation",  # per-key merging of client updates (pure functions over tensors)
    "strategies",   # one object per federated algorithm: plans, costs, aggregation
    "quant",        # quantizers for saved activations (reference + fast paths)
    "datasets",     # data types, file formats, generated tasks, partitions, token containers, batches
    "tasks",        # one kind per task (classification, causal LM): tokens, metrics, head
    "models",       # transformers + PEFT LoRA on every block; holds its task kind
    "client",       # local training under a plan, saved-activation hooks
    "evaluation",   # central evaluation entry point
    "diagnostics",  # memory probes and profile measurement
    "sim",          # the simulator: workload, round, runs, comparisons
    "flower",       # Flower ServerApp / ClientApp over the same strategies and round
    "cli",          # the command line
    "fedquad",      # the top-level package itself: re-exports only, imported by nobody inside
)
NO_TORCH = ("plan", "errors", "costmodel", "devices", "planner", "strategies")  # planning runs without torch
FLOWER_OK = ("flower", "cli")  # the only packages that may name flwr


def _modules(root: str) -> dict[str, str]:
    """Dotted module name -> file, for every .py file of the fedquad package under `root`."""
    out = {}
    for folder, _, files in os.walk(os.path.join(root, "fedquad")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(module: str, path: str, modules: dict[str, str]) -> tuple[set[str], set[str]]:
    """(fedquad modules, top-level third-party names) `module` imports anywhere in its file.

    `from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg`
    (whose __init__ defines the name); relative imports are resolved against `module`."""
    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    inner, outer = set(), set()
    is_package = path.endswith("__init__.py")
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[:len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "fedquad":
                target = owner(name)
                if target is not None and target != module:
                    inner.add(target)
            else:
                outer.add(name.split(".")[0])
    return inner, outer


def import_graph(root: str = SRC) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> fedquad modules it imports, module -> third-party packages it imports)."""
    modules = _modules(root)
    inner, outer = {}, {}
    for name, path in modules.items():
        inner[name], outer[name] = _imports(name, path, modules)
    return inner, outer


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fedquad"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted(f"{a} -> {b} ({layer_of(a)} is below {layer_of(b)})" for a, targets in graph.items()
                  for b in targets if rank[layer_of(b)] > rank[layer_of(a)])


GRAPH, THIRD_PARTY = import_graph()


def test_graph_sees_every_module_and_lazy_imports():
    """The parser finds what the rules are about: function-level imports and relative ones."""
    assert len(GRAPH) > 80
    assert "fedquad.aggregation" in GRAPH["fedquad.strategies.base"]  # imported inside a method only
    assert "fedquad.diagnostics.profile" in GRAPH["fedquad.sim.workload"]  # inside resolve_profile
    assert "torch" in THIRD_PARTY["fedquad.aggregation.checks"]


def test_no_import_cycle_between_modules():
    """Module granularity: also a lazy import that closes a loop is a cycle (docs/design.md)."""
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_every_package_has_a_layer():
    missing = sorted({layer_of(m) for m in GRAPH} - set(LAYERS))
    assert not missing, f"place {missing} in LAYERS (and in docs/design.md)"


def test_no_upward_imports():
    assert upward_imports(GRAPH) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    """The two checks above can fail: a lazy import back up is both a cycle and an upward import."""
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["fedquad.datasets.batching"].add("fedquad.tasks.causal_lm_tokens")  # the cycle of issue 14
    assert find_cycle(graph) is not None
    assert upward_imports(graph) == ["fedquad.datasets.batching -> fedquad.tasks.causal_lm_tokens "
                                     "(datasets is below tasks)"]


def test_design_doc_lists_the_same_layers():
    text = open(os.path.join(os.path.dirname(SRC), "docs", "design.md"), encoding="utf-8").read()
    line = next((x for x in text.splitlines() if x.startswith("Layers, lowest first:")), "")
    assert line.removeprefix("Layers, lowest first:").strip().rstrip(".").split(" < ") == list(LAYERS)


@pytest.mark.parametrize("package", NO_TORCH)
def test_planning_layers_never_name_torch(package):
    """Not even lazily: the planner and its inputs run where torch is not installed."""
    named = sorted(m for m, names in THIRD_PARTY.items() if layer_of(m) == package and "torch" in names)
    assert named == []


def test_only_flower_and_cli_name_flwr():
    named = sorted(m for m, names in THIRD_PARTY.items() if "flwr" in names and layer_of(m) not in FLOWER_OK)
    assert named == []


def imported_after(modules: list[str]) -> set[str]:
    """Every module loaded by importing `modules` together in a fresh interpreter. One process
    serves a whole group: what importing the group loads is a superset of what importing any one
    of them loads, so "none of them pulls in X" is checked by one import of the group."""
    code = f"import sys, {', '.join(modules)}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


PLANNING = ["fedquad.plan", "fedquad.costmodel", "fedquad.planner", "fedquad.devices", "fedquad.strategies"]
CORE = ["fedquad.sim", "fedquad.sim.compare", "fedquad.client", "fedquad.aggregation", "fedquad.strategies",
        "fedquad.evaluation", "fedquad.tasks"]


def test_planning_layers_do_not_import_torch():
    found = imported_after(PLANNING)
    assert set(PLANNING) <= found
    assert not {m for m in found if m.split(".")[0] == "torch"}


def test_core_does_not_import_flower_or_cli():
    found = imported_after(CORE)
    assert set(CORE) <= found and "torch" in found  # the import really ran
    assert not {m for m in found if m.split(".")[0] == "flwr" or m.split(".")[:2] == ["fedquad", "cli"]}
