"""Triton pod discovery against real tritonservers behind one DNS name, the way a headless Service works.

Three tritonservers listen on the same port at 127.0.0.11, .12 and .13 (three "pods"); a small DNS
server on 127.0.0.1 answers the name's A records, and the test changes that answer as a Kubernetes
endpoint controller would. The frontend (in this process, so its pool can be inspected) resolves the
name every 0.1 s. Shown: slots spread over every instance behind the name, a new address is used
once it appears, and a removed one is drained: a call already in flight on it (its Triton SIGSTOPped)
is never cancelled and returns the right answer after the removal, no new call goes there, and its
channel is closed once that call is done.
"""

from __future__ import annotations

import asyncio
import os
import signal

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import numpy as np
import pytest

from export import spec
from frontend.app.assembly import FrontendApp
from frontend.app.config import FrontendConfig
from frontend.core.calls import CallInfo
from frontend.core.deadlines import DeadlinePolicy
from frontend.core.routes import parse_route
from tests.integration import linear_models
from triton_local.server import TritonConfig, TritonServer, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NAME = "triton.serving.svc.cluster.local"
PODS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
ROUTE = f"{linear_models.DEPLOYED}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}"


class Zone(asyncio.DatagramProtocol):
    """A DNS server for one name: A records from ``addresses`` (changed by the test), NXDOMAIN otherwise."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.name.to_text().rstrip(".") == NAME and question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 0, "IN", "A", *self.addresses))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture(scope="module")
def tritons(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    models = linear_models.write_repository(repo)
    logs = tmp_path_factory.mktemp("logs")
    grpc_port, http_port, metrics_port = free_ports(3)  # the same ports on every "pod", as in a cluster
    servers = [
        TritonServer(
            TritonConfig(repo, grpc_port, http_port, metrics_port, models=tuple(models), host=host,
                         log_path=logs / f"triton-{host}.log")
        ).start()
        for host in PODS
    ]  # fmt: skip
    try:
        for server in servers:
            server.wait_ready(120)
        yield grpc_port, dict(zip(PODS, servers, strict=True))
    finally:
        for server in servers:
            if server.is_running():
                os.kill(server.pid, signal.SIGCONT)  # a failed test may leave one stopped
            server.stop()


def _executions(server: TritonServer) -> int:
    """Rows this Triton has inferred, over every model (its own statistics: where calls really went;
    the frontend batches the rows of calls sent together into one request)."""
    return sum(server.inference_counts().values())


async def _settled(servers: dict[str, TritonServer], before: dict[str, int], expected: int) -> dict[str, int]:
    """Rows each Triton ran since ``before``, once ``expected`` have run or 10 s have passed: a query is
    answered by its own outputs while its group's parity call may still be running, and Triton updates
    its statistics only after it has sent a call's answer."""
    for _ in range(100):
        got = {host: _executions(s) - before[host] for host, s in servers.items()}
        if sum(got.values()) >= expected:
            break
        await asyncio.sleep(0.1)
    return got


async def _queries(app: FrontendApp, n: int, seed: int) -> None:
    server = app.servers[linear_models.DEPLOYED]
    xs = np.random.default_rng(seed).random((n, *spec.IMAGE_SHAPE), dtype=np.float32)
    answers = await asyncio.gather(*(server.classify(x, timeout_s=20.0) for x in xs))
    for x, answer in zip(xs, answers, strict=True):
        np.testing.assert_allclose(answer.logits, linear_models.reference(x)[0], rtol=1e-4, atol=1e-4)


async def test_slots_spread_over_the_pods_behind_one_name_and_a_removed_pod_is_drained(tritons):
    port, servers = tritons
    a, b, c = PODS
    loop = asyncio.get_running_loop()
    zone = Zone([a, b])
    transport, _ = await loop.create_datagram_endpoint(lambda: zone, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    config = FrontendConfig(
        "127.0.0.1:0", (), "", "", (parse_route(ROUTE),), DeadlinePolicy(straggler_ms=2000, fill_ms=2000),
        coding="local", triton_dns=f"{NAME}:{port}", dns_server=f"127.0.0.1:{dns_port}", dns_refresh_s=0.1,
    )  # fmt: skip
    app = FrontendApp(config)
    await app.start()
    discovery = app.discovery
    assert discovery is not None
    try:
        await app.load_until_ready(retry_s=0.1, give_up_s=30)
        assert discovery.placed("triton") == (f"{a}:{port}", f"{b}:{port}")

        # A pod appears behind the name: it is used from the next refresh on, level with the others.
        zone.addresses = [a, b, c]
        await discovery.wait_for(lambda: len(discovery.placed("triton")) == 3, timeout_s=10)
        before = {host: _executions(s) for host, s in servers.items()}
        await _queries(app, 30, seed=1)  # 15 groups of 2 queries + 1 parity = 45 calls over 3 instances
        got = await _settled(servers, before, expected=45)
        assert sum(got.values()) == 45 and min(got.values()) >= 10, got

        # Pod b stalls with a call in flight, then leaves the name: that call is awaited, never cancelled.
        b_instance = discovery.instance(f"{b}:{port}")
        assert b_instance is not None
        signature = app.servers[linear_models.DEPLOYED].signature
        assert signature is not None
        b_before = _executions(servers[b])
        os.kill(servers[b].pid, signal.SIGSTOP)
        x = np.random.default_rng(2).random((1, *spec.IMAGE_SHAPE), dtype=np.float32)
        in_flight = asyncio.create_task(app.triton.infer(CallInfo(linear_models.DEPLOYED, b_instance), x, signature))
        zone.addresses = [a, c]
        await discovery.wait_for(lambda: discovery.placed("triton") == (f"{a}:{port}", f"{c}:{port}"), 10)
        await _queries(app, 10, seed=3)  # served by a and c alone while b is stopped
        assert not in_flight.done() and not app.triton.closed(b_instance)

        os.kill(servers[b].pid, signal.SIGCONT)
        np.testing.assert_allclose(await in_flight, linear_models.reference(x), rtol=1e-4, atol=1e-4)
        await discovery.wait_for(lambda: app.triton.closed(b_instance), timeout_s=10)
        # Triton counts a call in its statistics after it has sent the answer: wait for that count.
        drained = await _settled({b: servers[b]}, {b: b_before}, expected=1)
        assert drained == {b: 1}  # the drained call only: nothing new was placed on b
    finally:
        await app.close()
        transport.close()
