"""Worker namespaces and the network faults built on them: real namespaces, veth, tbf, TCP."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from bench.faults import Shuffles
from bench.netns import WorkerNetwork, unavailable

_WHY = unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(_WHY is not None, reason=f"network namespaces: {_WHY}"),
]

_ECHO = """
import socket
server = socket.create_server(("0.0.0.0", 7777))
conn, _ = server.accept()
while data := conn.recv(65536):
    conn.sendall(data)
"""


def _round_trip(conn: socket.socket, payload: bytes) -> tuple[float, bytes]:
    began = time.perf_counter()
    conn.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += conn.recv(65536)
    return time.perf_counter() - began, got


def test_a_held_link_delays_requests_without_losing_them_and_release_restores_it():
    with WorkerNetwork(1) as net:
        echo = subprocess.Popen([*net.exec_prefix(0), sys.executable, "-c", _ECHO])
        try:
            conn = _connect(net.address(0), 7777)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload = bytes(range(256)) * 13  # about one query's size
            before = max(_round_trip(conn, payload)[0] for _ in range(5))
            net.hold(0)
            threading.Timer(0.08, net.release, args=(0,)).start()
            held, echoed = _round_trip(conn, payload)
            after = max(_round_trip(conn, payload)[0] for _ in range(5))
        finally:
            echo.kill()
            echo.wait()
    assert echoed == payload  # held in the queue, not dropped
    assert held >= 0.07 > before  # it waited for the release
    assert held < 0.19  # and was not lost and retransmitted (TCP's minimum RTO is 200 ms)
    assert after < 0.07


def test_shuffles_push_bulk_traffic_through_the_shaped_links():
    with WorkerNetwork(2) as net:
        shuffles = Shuffles([None, None], seed=1, network=net)  # two worker hosts; no Triton needed
        with shuffles:
            deadline = time.monotonic() + 30
            while shuffles.events < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
        moved = net.inbound_bytes(0) + net.inbound_bytes(1)
    assert shuffles.events >= 1
    assert moved >= 128 << 20  # at least one whole 128-256 MB transfer crossed a link


def test_closing_removes_every_namespace_and_link():
    with WorkerNetwork(2) as net:
        names = [net.namespace(0), net.namespace(1)]
        assert set(names) <= set(_namespaces())
    assert not set(names) & set(_namespaces())
    assert subprocess.run(["ip", "link", "show", net.bridge], capture_output=True).returncode != 0


def test_profiles_that_need_namespaces_refuse_to_run_without_them():
    with pytest.raises(ValueError, match="network namespaces"):
        Shuffles([None, None], seed=1)


def _namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def _connect(host: str, port: int, timeout_s: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection((host, port), timeout=5.0)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
