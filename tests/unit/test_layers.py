"""frontend/ in layers: the core imports no transport (gRPC, tritonclient, Prometheus)."""

from __future__ import annotations

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
