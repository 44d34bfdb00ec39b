"""The frontend starts from a configuration file alone (``--config FILE``, no other flag, no CODEDSERVE_*
variable) against the real tritonserver: instances, coding, a coded route with its own deadlines, an uncoded
route, JSON logs, all from the file; each route answers the linear model's exact output; and without any
route anywhere the process exits at once naming the missing setting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from bench.stack import REPO_ROOT, ServiceProcess
from service_common.tensors import from_numpy
from tests.integration import linear_models
from triton_local.server import TritonConfig, TritonServer, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = linear_models.DEPLOYED
DIRECT = f"{MODEL}_direct"
CONFIG = """
address = "127.0.0.1:{port}"
triton-url = ["{triton}"]
coding = "local"
log-format = "json"
straggler-timeout-ms = 40

[[route]]
model = "{model}"
scheme = "parm"
k = 2
options = {{ encoder = "add", parity_model = "{parity}" }}
fill-timeout-ms = 1

[[route]]
model = "{model}_direct"
scheme = "none"
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CODEDSERVE_")}


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    models = linear_models.write_repository(repo)
    shutil.copytree(repo / MODEL, repo / DIRECT)  # the same model under a second name, for an uncoded route
    (repo / DIRECT / "config.pbtxt").write_text(linear_models.config_text(DIRECT))
    grpc_port, http_port, metrics_port = free_ports(3)
    config = TritonConfig(
        repo,
        models=(*models, DIRECT),
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        log_path=tmp_path_factory.mktemp("logs") / "tritonserver.log",
    )
    with TritonServer(config) as server:
        server.wait_ready(120)
        yield server


def test_the_frontend_serves_the_routes_of_its_file_alone(triton, tmp_path):
    (port,) = free_ports(1)
    path = tmp_path / "frontend.toml"
    parity = linear_models.parity_name(2)
    path.write_text(CONFIG.format(port=port, triton=triton.grpc_url, model=MODEL, parity=parity))
    log = tmp_path / "frontend.log"
    argv = [sys.executable, "-mfrontend", "--config", str(path)]  # the one flag; no CODEDSERVE_* variable
    with open(log, "wb") as out:
        popen = subprocess.Popen(argv, cwd=REPO_ROOT, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT)
    process = ServiceProcess("frontend", argv, port, log, proc=popen)
    try:
        process.wait_serving(120)
        x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
        with grpc.insecure_channel(process.address) as channel:
            stub = pb_grpc.FrontendStub(channel)
            replies = [
                stub.Classify(pb.ClassifyRequest(model=m, input=from_numpy(x)), timeout=10) for m in (MODEL, DIRECT)
            ]
    finally:
        process.stop()
    for reply, scheme in zip(replies, ("parm", "none"), strict=True):
        assert reply.scheme == scheme
        np.testing.assert_allclose(reply.logits, linear_models.reference(x)[0], rtol=1e-4, atol=1e-4)
    first = json.loads(log.read_text().splitlines()[0])  # log-format from the file: JSON lines
    assert first["logger"] == "frontend" and f"{MODEL}=parm(k=2)" in first["message"]


def test_without_a_route_anywhere_the_frontend_exits_naming_the_setting(triton, tmp_path):
    path = tmp_path / "frontend.toml"
    path.write_text(f'triton-url = ["{triton.grpc_url}"]\n')
    done = subprocess.run(
        [sys.executable, "-mfrontend", "--config", str(path)],
        cwd=REPO_ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("frontend: bad configuration: no route: give --route"), done.stderr[-2000:]
    assert "CODEDSERVE_FRONTEND_ROUTES" in last and "--config" in last and "Traceback" not in done.stderr
