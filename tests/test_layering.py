"""The package's layers, read from the source: every ``ltc`` module imports only modules of its own
layer or below, at module level, without cycles.

A function-level import between ``ltc`` modules is a cycle in hiding (it only works because the
import runs late), so none is allowed; optional third-party imports inside functions (triton,
matplotlib, safetensors, ...) are fine.  Layers, bottom first (the pipeline: schedule -> sampler ->
plan -> policy -> ops -> executor -> api -> embeddings -> demo):
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    ("ltc._version", "ltc.ops.contract", "ltc.schedule", "ltc.models", "ltc.io"),
    ("ltc.samplers",),
    ("ltc.plan",),
    ("ltc.policies",),
    ("ltc.ops", "ltc.kernels"),
    ("ltc.executor",),
    ("ltc.api",),
    ("ltc.stepper", "ltc.calibration", "ltc.plan_search", "ltc.adapters", "ltc.distributed", "ltc.zoo"),
    ("ltc.demo", "ltc.cli", "ltc.__main__", "ltc"),
]


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for ``ltc/`` and ``kernels/`` (installed as ``ltc.kernels``)."""
    found = {}
    for top, prefix in ((ROOT / "ltc", "ltc"), (ROOT / "kernels", "ltc.kernels")):
        for path in top.rglob("*.py"):
            parts = list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The ``ltc`` modules an import statement in ``module`` loads (a name imported from a package
    counts as its submodule when one exists)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:
        base = module.split(".") if is_package(module) else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target not in MODULES:
        return []
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return subs if len(subs) == len(node.names) else [target, *subs]


def imports(module: str) -> tuple[set[str], list[str]]:
    """``(module-level ltc imports, descriptions of function-level ltc imports)``."""
    tree = ast.parse(MODULES[module].read_text())
    top, nested = set(), []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update(resolve(module, node))
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and resolve(module, node):
                    nested.append(f"{module} line {node.lineno} ({fn.name}): {resolve(module, node)}")
    top.discard(module)
    return top, nested


def layer_of(module: str) -> int:
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > len(best[1]):
                    best = (index, name)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_function_level_imports_between_ltc_modules():
    nested = [line for m in MODULES for line in imports(m)[1]]
    assert not nested, "function-level imports of ltc modules (cycles in hiding):\n" + "\n".join(nested)


def test_modules_import_only_their_layer_or_below():
    upward = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
              for m in MODULES for d in sorted(imports(m)[0]) if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = {m: imports(m)[0] for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_a_nested_import(tmp_path):
    """The checks above are not vacuous: the resolver finds both kinds of import in real modules."""
    top, _ = imports("ltc.api")
    assert {"ltc.plan", "ltc.ops.contract", "ltc.executor.graph"} <= top
    assert ast.parse("def f():\n    from .plan import Plan\n").body[0].body[0].level == 1


def test_top_level_stays_small():
    """The top level holds the small concepts; families live in packages."""
    top = [p.name for p in (ROOT / "ltc").glob("*.py")]
    assert len(top) <= 12, sorted(top)
