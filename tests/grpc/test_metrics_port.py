"""A service whose ``--metrics-port`` another process holds exits at once with one line naming the address
and the flag, as it does when its gRPC port is taken; never with a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service_common.metrics import serve_metrics
from service_common.server import BindError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def held() -> Iterator[int]:
    """A loopback port another process (this one) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_metrics_on_a_port_in_use_raises_bind_error_naming_it(held):
    with pytest.raises(BindError, match=rf"^could not bind 127\.0\.0\.1:{held} \(--metrics-port\): in use by"):
        serve_metrics(held)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("service", ["encoder_service", "decoder_service", "frontend"])
def test_a_service_on_a_metrics_port_in_use_exits_with_one_line(service, held):
    argv = [sys.executable, "-m", service, "--address", "127.0.0.1:0", "--metrics-port", str(held)]
    if service == "frontend":  # it has no default route
        argv += ["--route", "mnist_cnn=none"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    expected = f"{service}: could not bind 127.0.0.1:{held} (--metrics-port): in use by another process"
    assert done.stderr.strip().splitlines()[-1] == expected
