"""The plaintext health-only port (``--health-address``): kubelet's native ``grpc:`` probe speaks neither
TLS nor mTLS, so a service whose main port speaks only mTLS is probed on a second port that serves
``grpc.health.v1`` alone, in plaintext, from the main port's own health servicer. Real servers on
127.0.0.1, with the certificates the TLS tests make (tests/tls_certs.py)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from decoder_service.server import SERVICE_NAME as DECODER
from decoder_service.server import create_server as create_decoder
from encoder_service.server import SERVICE_NAME as ENCODER
from encoder_service.server import create_server as create_encoder
from frontend.app.config import FrontendConfig
from frontend.app.health import ROUTE_HEALTH_PREFIX
from frontend.app.server import SERVICE_NAME as FRONTEND
from frontend.app.server import create_server as create_frontend
from frontend.core.routes import parse_route
from service_common.cli import ServiceConfig
from service_common.server import LIVENESS_SERVICE, BindError
from service_common.tensors import from_numpy
from service_common.tls import ServerTLS
from tests.grpc.fake_triton import MODEL, ROW, FakeTriton
from tests.tls_certs import Pki, make_pki
from triton_local.server import free_ports

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
LIMIT = 1 << 20
BOUND_S = 20.0  # every wait on an event here is bounded by this
UNIMPLEMENTED, UNAVAILABLE = grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _mtls(pki: Pki) -> ServerTLS:
    return ServerTLS(pki.server_cert, pki.server_key, pki.ca)


def _client(pki: Pki) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(pki.read("ca"), pki.read("client_key"), pki.read("client_cert"))


async def _status(channel: grpc.aio.Channel, name: str) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
    return reply.status


async def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


def _check(channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


@pytest.mark.parametrize(
    ("create", "service", "method"),
    [(create_encoder, ENCODER, "Encode"), (create_decoder, DECODER, "Decode")],
    ids=["encoder", "decoder"],
)
async def test_an_mtls_service_answers_plaintext_health_on_its_health_port_and_no_query(pki, create, service, method):
    config = ServiceConfig("127.0.0.1:0", None, LIMIT, "INFO", tls=_mtls(pki), health_address="127.0.0.1:0")
    running = await create(config)
    main, health = f"127.0.0.1:{running.port}", f"127.0.0.1:{running.health_port}"
    try:
        async with grpc.aio.insecure_channel(health) as plain:
            assert (await _status(plain, ""), await _status(plain, LIVENESS_SERVICE)) == (SERVING, SERVING)
            await running.set_serving(False)
            assert (await _status(plain, ""), await _status(plain, service)) == (NOT_SERVING, NOT_SERVING)
            assert await _status(plain, LIVENESS_SERVICE) == SERVING
            await running.set_serving(True)
            assert (await _status(plain, ""), await _status(plain, service)) == (SERVING, SERVING)
            stub = getattr(pb_grpc, f"{service.rsplit('.', 1)[1]}Stub")(plain)
            assert await _code(getattr(stub, method)(getattr(pb, f"{method}Request")(), timeout=5)) == UNIMPLEMENTED
        async with grpc.aio.insecure_channel(main) as plain:  # the main port still speaks only mTLS
            assert await _code(_check(plain)) == UNAVAILABLE
        async with grpc.aio.secure_channel(main, _client(pki)) as secure:
            assert await _status(secure, "") == SERVING
    finally:
        await running.stop(0)
    async with grpc.aio.insecure_channel(health) as plain:  # stop stopped both ports
        assert await _code(_check(plain)) == UNAVAILABLE


async def test_a_health_address_in_use_fails_with_bind_error_naming_it_and_frees_the_main_port():
    taken = await create_encoder(ServiceConfig("127.0.0.1:0", None, LIMIT, "INFO"))
    (port,) = free_ports(1)
    address, in_use = f"127.0.0.1:{port}", f"127.0.0.1:{taken.port}"
    try:
        with pytest.raises(BindError, match=f"could not bind {in_use}"):
            await create_encoder(ServiceConfig(address, None, LIMIT, "INFO", health_address=in_use))
        again = await create_encoder(ServiceConfig(address, None, LIMIT, "INFO"))  # the failed one let its port go
        await again.stop(0)
    finally:
        await taken.stop(0)


async def test_the_frontends_health_port_follows_the_frontend_ports_health_and_answers_no_query(pki):
    """NOT_SERVING while warm-up queries are held at the stand-in Triton's gate, then SERVING, with the
    per-route name of frontend.app.health: on the plaintext health port exactly as on the mTLS Frontend port."""
    triton = await FakeTriton().start()
    triton.gate.clear()  # warm-up (before SERVING) waits here
    config = FrontendConfig(
        "127.0.0.1:0", (triton.url,), "e", "d", (parse_route(f"{MODEL}=none"),), coding="local",
        tls=_mtls(pki), health_address="127.0.0.1:0",
    )  # fmt: skip
    server = await create_frontend(config)
    names = ["", FRONTEND, LIVENESS_SERVICE]  # and once health is published, the route's own name
    plain = grpc.aio.insecure_channel(f"127.0.0.1:{server.running.health_port}")
    secure = grpc.aio.secure_channel(f"127.0.0.1:{server.port}", _client(pki))
    try:
        await triton.held(1, BOUND_S)
        assert [await _status(plain, n) for n in names] == [NOT_SERVING, NOT_SERVING, SERVING]
        assert [await _status(plain, n) for n in names] == [await _status(secure, n) for n in names]
        triton.gate.set()
        names.append(ROUTE_HEALTH_PREFIX + MODEL)
        request = health_pb2.HealthCheckRequest(service=ROUTE_HEALTH_PREFIX + MODEL)
        async for reply in health_pb2_grpc.HealthStub(plain).Watch(request, timeout=BOUND_S):
            if reply.status == SERVING:
                break
        assert [await _status(plain, n) for n in names] == [SERVING] * 4
        assert [await _status(plain, n) for n in names] == [await _status(secure, n) for n in names]
        query = pb.ClassifyRequest(model=MODEL, id="q", input=from_numpy(np.ones(ROW, np.float32)))
        assert await _code(pb_grpc.FrontendStub(plain).Classify(query, timeout=5)) == UNIMPLEMENTED
        assert (await pb_grpc.FrontendStub(secure).Classify(query, timeout=5)).id == "q"
    finally:
        await plain.close()
        await secure.close()
        await server.stop(0)
        await triton.stop()
