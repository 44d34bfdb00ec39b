"""Start-up refuses a route that names a model absent from Triton's repository, against a real tritonserver:
the frontend exits with one line naming the route, the model and the Triton instance, instead of starting
and answering every query UNAVAILABLE. A model in the repository that Triton does not serve (not loaded,
failed to load) is Triton's state, not a configuration error: that route is down until Triton serves it
(tests/integration/test_route_isolation.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.stack import REPO_ROOT
from tests.integration import linear_models
from triton_local.server import TritonConfig, TritonServer, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = linear_models.DEPLOYED


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """A Triton over a repository holding the linear model and its k = 2 parity model, loading only
    the linear model (explicit model control)."""
    repo = tmp_path_factory.mktemp("repo")
    linear_models.write_repository(repo)
    grpc_port, http_port, metrics_port = free_ports(3)
    config = TritonConfig(
        repo,
        models=(MODEL,),
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        log_path=tmp_path_factory.mktemp("logs") / "tritonserver.log",
    )
    with TritonServer(config) as server:
        yield server


def _frontend(triton: TritonServer, route: str) -> subprocess.CompletedProcess[str]:
    """``python -m frontend`` with one route; it must exit on its own within the timeout."""
    (port,) = free_ports(1)
    argv = [sys.executable, "-mfrontend", "--address", f"127.0.0.1:{port}", "--triton-url", triton.grpc_url]
    return subprocess.run(
        [*argv, "--coding", "local", "--route", route], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("route", "model", "problem"),
    [
        (f"{MODEL}=parm:k=2,encoder=add,parity_model=linear_parm_add_k9", "linear_parm_add_k9", "is not in the model"),
        ("absent_model=none", "absent_model", "is not in the model"),
    ],
    ids=["parity-absent", "deployed-absent"],
)
def test_a_route_whose_model_triton_will_not_serve_stops_the_frontend_naming_it(triton, route, model, problem):
    done = _frontend(triton, route)
    assert done.returncode != 0, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("frontend: route ") and f"{model!r}" in last and problem in last, done.stderr[-2000:]
    assert triton.grpc_url in last and route.split(":")[0] in last
    assert "Traceback" not in done.stderr
