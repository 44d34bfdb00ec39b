"""frontend/ in layers: the core imports no transport (gRPC, tritonclient, Prometheus)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
BLOCKED = ("grpc", "grpc_health", "tritonclient", "prometheus_client", "codedserve")

# Run in a fresh interpreter: a finder ahead of every other one refuses the blocked packages, so importing
# a core module fails naming the first transport module anything on its import path reaches for.
_PROBE = """
import importlib, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"the core imported {{name}}")
        return None

sys.meta_path.insert(0, Blocked())
for module in {modules!r}:
    importlib.import_module(module)
"""


def _modules(package: str) -> list[str]:
    return [f"frontend.{package}.{p.stem}" for p in sorted((FRONTEND / package).glob("*.py")) if p.stem != "__init__"]


def test_core_imports_no_transport():
    modules = _modules("core")
    assert "frontend.core.groups" in modules and "frontend.core.calls" in modules
    probe = _PROBE.format(blocked=BLOCKED, modules=modules)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_probe_catches_a_transport_import():
    """The finder does refuse: a module that imports gRPC fails the same probe."""
    probe = _PROBE.format(blocked=BLOCKED, modules=["frontend.transport.streams"])
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "the core imported grpc" in result.stderr


LAYERS = ("core", "dataplane", "transport", "api", "app")  # from the bottom up; frontend/__main__.py on top


def _imports() -> dict[str, set[str]]:
    """Every frontend module -> the frontend modules it imports (at any depth of its code)."""
    graph: dict[str, set[str]] = {}
    for path in FRONTEND.rglob("*.py"):
        name = ".".join(path.relative_to(FRONTEND.parent).with_suffix("").parts).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("frontend"):
                targets |= {
                    f"{node.module}.{a.name}" if node.module.count(".") == 1 else node.module for a in node.names
                }
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("frontend")}
        graph[name] = {t for t in targets if t != name}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def test_imports_run_down_the_layers_only():
    graph = _imports()
    assert "frontend.core.calls" in graph["frontend.dataplane.coordinator"]  # the graph is read at all
    upward = [(m, t) for m, ts in graph.items() for t in ts if _layer(t) > _layer(m)]
    assert upward == []


def test_no_frontend_module_imports_itself_round_a_cycle():
    imports = _imports()
    graph = {m: ts & imports.keys() for m, ts in imports.items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for target in graph[module]:
            visit(target, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
