"""The modules of tl_clt import each other without a circle, and no private name crosses a module.

Every import counts, also one inside a function (it runs when the function does); only imports under
`if TYPE_CHECKING:` are left out (they never run). `from tl_clt import x` counts as importing the
module `tl_clt.x` when there is one, else the package `tl_clt` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import tl_clt

PACKAGE = Path(tl_clt.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST):
    """Import nodes that can run: everything but the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(node: ast.ImportFrom, importer: str) -> str:
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def edges():
    """(importer, imported module, imported names) for every runtime import of a tl_clt module."""
    for name, path in MODULES.items():
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES:
                        yield name, alias.name, []
                continue
            base = _absolute(node, name)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    yield name, sub, []
                elif base in MODULES:
                    yield name, base, [alias.name]


def test_every_module_is_seen():
    assert {"tl_clt", "tl_clt.graph", "tl_clt.sites", "tl_clt.frozen", "tl_clt.cli"} <= set(MODULES)
    found = {(a, b) for a, b, _ in edges()}
    assert ("tl_clt.graph", "tl_clt.influence") in found  # a plain import
    assert ("tl_clt.graph", "tl_clt.export") in found  # a function-level import counts


def test_module_imports_form_no_circle():
    G = nx.DiGraph()
    G.add_nodes_from(MODULES)
    G.add_edges_from((a, b) for a, b, _ in edges() if a != b)
    cycles = list(nx.simple_cycles(G))
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def test_nothing_inside_imports_the_package_root():
    """tl_clt/__init__.py re-exports the API; the library's own modules never import from it."""
    library = [m for m in MODULES if not m.startswith(("tl_clt.cli", "tl_clt.toyworld")) and m != "tl_clt"]
    offenders = sorted({a for a, b, _ in edges() if b == "tl_clt" and a in library})
    assert not offenders


def test_no_private_name_crosses_a_module():
    crossing = sorted({(a, b, n) for a, b, names in edges() if a != b for n in names if n.startswith("_")})
    crossing = [c for c in crossing if c[2] != "__version__"]
    assert not crossing, f"private names imported across modules: {crossing}"
