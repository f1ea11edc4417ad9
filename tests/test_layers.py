"""The three layers stay apart: the domain imports no Kafka, Faust, asyncio or Prometheus; edges never import the
Faust wiring. The import graph of stream_app has no cycle, every import of a stream_app module names one that exists,
and the product (domain, streaming, edges, replay) never imports its tooling (stream_app.tools)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import stream_app
import stream_app.domain
import stream_app.edges

FORBIDDEN_IN_DOMAIN = ("faust", "aiokafka", "asyncio", "prometheus_client", "mode", "confluent_kafka")


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def modules_of(package: object) -> list[str]:
    path = package.__path__  # type: ignore[attr-defined]
    prefix = package.__name__ + "."  # type: ignore[attr-defined]
    return sorted(info.name for info in pkgutil.iter_modules(path, prefix))


def test_domain_modules_exist() -> None:
    assert "stream_app.domain.policy" in modules_of(stream_app.domain)


@pytest.mark.parametrize("module", modules_of(stream_app.domain))
def test_domain_imports_only_pure_python(module: str) -> None:
    loaded = imported_after(module)
    assert not {m for m in loaded if m.split(".")[0] in FORBIDDEN_IN_DOMAIN}
    assert not {m for m in loaded if m.startswith(("stream_app.streaming", "stream_app.edges"))}


@pytest.mark.parametrize("module", modules_of(stream_app.edges))
def test_edges_never_import_the_faust_wiring(module: str) -> None:
    assert not {m for m in imported_after(module) if m.startswith("stream_app.streaming")}


# ---- the import graph (ast: no module is run) ----------------------------------------------------------------------

PRODUCT = ("stream_app.domain", "stream_app.streaming", "stream_app.edges", "stream_app.replay")
TOOLS = "stream_app.tools"


def module_files() -> dict[str, Path]:
    """Every module and package of stream_app, by dotted name."""
    root = Path(stream_app.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _statements(body: list[ast.stmt], *, runtime_top_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of `body`: with `runtime_top_level`, only those run when the module is imported (not
    inside functions or classes' methods, not under `if TYPE_CHECKING:`); otherwise all of them."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif runtime_top_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif runtime_top_level and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _statements(node.orelse, runtime_top_level=True)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from _statements(inner, runtime_top_level=runtime_top_level)


def imported_names(module: str, path: Path, *, runtime_top_level: bool) -> set[str]:
    """The stream_app names `module` imports: a submodule when `from package import name` names one, else the module
    the name is taken from."""
    modules = module_files()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8")).body, runtime_top_level=runtime_top_level):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            names.add(submodule if submodule in modules else base)
    return {name for name in names if name == "stream_app" or name.startswith("stream_app.")}


def import_graph(*, runtime_top_level: bool) -> dict[str, set[str]]:
    return {
        module: imported_names(module, path, runtime_top_level=runtime_top_level) - {module}
        for module, path in module_files().items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_import_of_a_stream_app_module_names_one_that_exists() -> None:
    # mypy's ignore_missing_imports hides a lazy import of a module that moved; this does not
    modules = module_files()
    missing = {
        f"{module} imports {name}"
        for module, names in import_graph(runtime_top_level=False).items()
        for name in names
        if name not in modules
    }
    assert not missing, sorted(missing)


def test_the_import_graph_has_no_cycle() -> None:
    found = cycles(import_graph(runtime_top_level=True))
    assert not found, "import cycles (module-level imports): " + "; ".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_product_never_imports_its_tooling() -> None:
    # every import counts here, lazy ones inside functions too: the worker must run without stream_app.tools
    graph = import_graph(runtime_top_level=False)
    product = {module for module in graph if module.startswith(PRODUCT)}
    assert "stream_app.streaming.app" in product and "stream_app.replay.command" in product
    leaks = {f"{m} imports {name}" for m in product for name in graph[m] if name.startswith(TOOLS)}
    assert not leaks, sorted(leaks)
