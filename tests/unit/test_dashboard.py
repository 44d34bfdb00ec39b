"""The Grafana dashboard (k8s/components/monitoring/dashboard.json) parses, and every metric its queries
name is one the services export: ours as the modules define them (a renamed metric fails here, not on a
blank panel), Triton's from the set its /metrics serves."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "components" / "monitoring" / "dashboard.json"
# Every module that defines a metric the services export.
MODULES = (
    "frontend.dataplane.metrics",
    "frontend.app.health",
    "frontend.transport.discovery",
    "service_common.metrics",
    "service_common.loop_lag",
)
# Triton's own (port 8002), per model: the ones the dashboard and the prometheus-adapter use.
TRITON = {"nv_inference_queue_duration_us", "nv_inference_request_success", "nv_inference_compute_infer_duration_us"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _exported() -> set[str]:
    for module in MODULES:
        importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("codedserve_"):
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def _queried() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs and all(panel["title"] for panel in dashboard["panels"])
    return {m for e in exprs for m in re.findall(r"\b((?:codedserve|nv)_[a-z0-9_]+)\b", e)}


def test_every_metric_the_dashboard_queries_is_exported():
    queried, exported = _queried(), _exported()
    assert not queried - exported - TRITON, sorted(queried - exported - TRITON)
    for needed in ("codedserve_answers_total", "codedserve_query_seconds_bucket", "codedserve_rpcs_total"):
        assert needed in queried  # answers and the reconstructed share, the tail, admission refusals
    assert "nv_inference_queue_duration_us" in queried and "codedserve_dependency_up" in queried
