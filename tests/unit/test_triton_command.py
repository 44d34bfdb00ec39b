"""How tritonserver is launched: loopback by default, or a worker namespace's address and launcher."""

from __future__ import annotations

from pathlib import Path

from triton_local.server import TritonConfig, TritonInstall, TritonServer

INSTALL = TritonInstall(Path("/opt/tritonserver"), Path("/opt/libs"), Path("/opt/python"), Path("/opt/stub"))


def _argv(tmp_path: Path, **config: object) -> tuple[list[str], TritonServer]:
    server = TritonServer(TritonConfig(tmp_path, grpc_port=8001, http_port=8000, metrics_port=8002, **config))
    return server.command(INSTALL, tmp_path / "backends"), server


def test_default_binds_loopback_only(tmp_path):
    argv, server = _argv(tmp_path)
    assert argv[0] == "/opt/tritonserver"
    for flag in ("--grpc-address", "--http-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in argv
    assert server.grpc_url == "127.0.0.1:8001"
    assert server.metrics_url == "http://127.0.0.1:8002/metrics"


def test_a_namespaced_worker_runs_under_its_launcher_and_binds_its_own_address(tmp_path):
    launcher = ("ip", "netns", "exec", "csw0")
    argv, server = _argv(tmp_path, host="10.213.7.2", launcher=launcher)
    assert tuple(argv[:4]) == launcher and argv[4] == "/opt/tritonserver"
    for flag in ("--grpc-address", "--http-address", "--metrics-address"):
        assert f"{flag}=10.213.7.2" in argv
    assert server.grpc_url == "10.213.7.2:8001" and server.http_url == "10.213.7.2:8000"
