"""The frontend's channels spread their calls over every address behind one name: three encoder service
processes behind one target (gRPC's ``ipv4:`` list, what a headless Service's name resolves to), and the
frontend's coding client (its own channel options, unary transport) reaches all three, about evenly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from bench.stack import REPO_ROOT
from frontend.core.routes import parse_route
from frontend.transport.coding_clients import CodingClients
from triton_local.server import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROUTE = parse_route("m=parm:k=2,encoder=add")
CALLS = 60


@pytest.fixture
def encoders(tmp_path) -> Iterator[list[tuple[int, int]]]:
    """Three ``python -m encoder_service`` processes: (gRPC port, metrics port) each, once all answer."""
    ports = free_ports(6)
    pairs = [(ports[i], ports[i + 3]) for i in range(3)]
    processes = []
    for grpc_port, metrics_port in pairs:
        argv = [sys.executable, "-mencoder_service", "--address", f"127.0.0.1:{grpc_port}"]
        with open(tmp_path / f"encoder-{grpc_port}.log", "w") as log:
            argv += ["--metrics-port", str(metrics_port)]
            processes.append(subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=log))
    try:
        for _, metrics_port in pairs:
            _wait_for(lambda port=metrics_port: _encodes(port) is not None, 60)
        yield pairs
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def _wait_for(predicate, seconds: float) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, "an encoder did not start"
        time.sleep(0.1)


def _encodes(metrics_port: int) -> float | None:
    """The Encoder RPCs one process answered OK (None while its metrics do not answer)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    lines = [ln for ln in text.splitlines() if ln.startswith("codedserve_rpcs_total{") and 'method="Encode' in ln]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if 'code="OK"' in ln)


def test_spread_calls_reach_every_encoder_behind_one_name(encoders):
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in encoders)

    async def run() -> None:
        clients = CodingClients(target, target, 1 << 20, transport="unary")
        await clients.start()
        try:
            for i in range(CALLS):  # one at a time: each its own call
                await clients.encode(ROUTE, np.full((2, 3), i, np.float32), 5.0)
        finally:
            await clients.close()

    asyncio.run(run())
    counts = [_encodes(metrics_port) for _, metrics_port in encoders]
    assert sum(counts) == CALLS, counts
    assert min(counts) >= CALLS / 3 - 2, counts  # round_robin: each pod its turn (pick_first: one gets all)
