"""Servers refuse to share a port: grpcio turns SO_REUSEPORT on by default, and a second encoder on a
port in use then bound it silently and took half the traffic. Now the second one exits at once with an
error naming the address, and the first keeps serving."""

from __future__ import annotations

import sys

import pytest

from bench.stack import ServiceProcess
from encoder_service.server import create_server as create_encoder
from frontend.app.config import FrontendConfig
from frontend.app.server import create_server as create_frontend
from frontend.core.routes import parse_route
from service_common.cli import ServiceConfig
from triton_local.server import free_ports


def _encoder(port: int, log_dir, name: str) -> ServiceProcess:
    argv = [sys.executable, "-m", "encoder_service", "--address", f"127.0.0.1:{port}"]
    return ServiceProcess(name, argv, port, log_dir / f"{name}.log")


@pytest.mark.timeout(120)
def test_a_second_encoder_process_on_a_port_in_use_exits_naming_the_address(tmp_path):
    (port,) = free_ports(1)
    first, second = _encoder(port, tmp_path, "first"), _encoder(port, tmp_path, "second")
    try:
        first.start().wait_serving(60)
        second.start()
        assert second.proc is not None
        returncode = second.proc.wait(timeout=30)  # before the fix: it bound the port and kept running
        assert returncode != 0
        assert f"could not bind 127.0.0.1:{port}" in second.log_tail(), second.log_tail()
        assert "Traceback" not in second.log_tail()
        first.wait_serving(5)  # the first still owns the port
    finally:
        second.stop()
        first.stop()


async def test_an_in_process_server_on_a_port_in_use_raises_naming_it():
    """The frontend (and the KServe port) binds through the same helper."""
    encoder = await create_encoder(ServiceConfig("127.0.0.1:0", None, 1 << 20, "INFO"))
    address = f"127.0.0.1:{encoder.port}"
    config = FrontendConfig(address, ("127.0.0.1:1",), "e", "d", (parse_route("m=none"),), coding="local")
    try:
        with pytest.raises(OSError, match=f"could not bind {address}"):
            await create_frontend(config)
    finally:
        await encoder.stop(0)
