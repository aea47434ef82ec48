"""The package's import graph, read from the source with ast (function-level imports included):
imports only point down, so no module imports, directly or through others, the module that
dispatches to it."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bilinear_kernels"



def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that `module` imports anywhere in its body. `from pkg import sub`
    counts as importing pkg.sub alone; a package's own ancestors are left out (Python imports
    them first in any case, so they are no edge of the dispatch)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            subs = {f"{target}.{alias.name}" for alias in node.names} & modules.keys()
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(target)
    return {m for m in found if m in modules and m != module and not module.startswith(m + ".")}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_parser_sees_function_level_imports_and_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\nfrom ..a import f\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert cycles(graph) == [{"pkg.a", "pkg.sub.b"}]


def test_backends_imports_no_module_that_dispatches():
    graph = import_graph()
    assert graph["bilinear_kernels.backends"] <= {"bilinear_kernels._env", "bilinear_kernels.extension",
                                                  "bilinear_kernels.fast_path_guard"}
    assert graph["bilinear_kernels.extension"] <= {"bilinear_kernels._env"}
    assert graph["bilinear_kernels.fast_path_guard"] <= {"bilinear_kernels._env"}


@pytest.mark.parametrize("kernel", ["bilinear_kernels.ops.bilinear_forward", "bilinear_kernels.ops.interaction"])
def test_kernels_import_only_below_them(kernel):
    assert import_graph()[kernel] <= {"bilinear_kernels.ops._launch", "bilinear_kernels.backends",
                                      "bilinear_kernels.fast_path_guard"}


# what each subpackage may import besides the top-level (core) modules and itself, as its
# __init__.py says: the subpackages form layers, and none imports one above it
SUBPACKAGE_IMPORTS = {
    "ops": set(),
    "solvers": set(),
    "adapters": set(),
    "primitives": {"solvers"},
    "network": {"solvers", "primitives", "adapters"},
    "io": {"network"},
    "sweep": {"solvers", "network", "io"},
    "demo": {"solvers", "primitives", "adapters", "network", "sweep"},
}
# the core imports only the subpackages it dispatches to; the entry points (the package's
# __init__, cli, __main__) sit above everything
CORE_IMPORTS = {"ops", "solvers", "adapters"}
ENTRY_POINTS = {"bilinear_kernels", "bilinear_kernels.cli", "bilinear_kernels.__main__"}


def subpackage_of(module: str) -> str | None:
    """The subpackage a module lies in (a subpackage's own name for its __init__); None: the core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


def test_every_subpackage_is_placed_in_the_layers():
    found = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert found == SUBPACKAGE_IMPORTS.keys()


@pytest.mark.parametrize("subpackage", sorted(SUBPACKAGE_IMPORTS))
def test_subpackages_import_only_the_core_and_the_layers_below_them(subpackage):
    graph = import_graph()
    upward = {f"{module} -> {target}" for module, targets in graph.items() if subpackage_of(module) == subpackage
              for target in targets
              if subpackage_of(target) not in {None, subpackage, *SUBPACKAGE_IMPORTS[subpackage]}}
    assert not upward, sorted(upward)


def test_the_core_imports_only_what_it_dispatches_to():
    graph = import_graph()
    upward = {f"{module} -> {target}" for module, targets in graph.items()
              if subpackage_of(module) is None and module not in ENTRY_POINTS
              for target in targets if subpackage_of(target) not in {None, *CORE_IMPORTS}}
    assert not upward, sorted(upward)


def test_the_package_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, f"import cycles: {[sorted(c) for c in found]}"
