"""TLS and mTLS on the coding services, with certificates made at test time (tests/tls_certs.py): a real
encoder on 127.0.0.1 answers a client that trusts its CA, refuses a plaintext client, and with a client CA
(mTLS) refuses a client that presents no certificate or one another CA signed. The frontend's coding
clients encode and decode over mTLS, and a service process takes its TLS files from its variables."""

from __future__ import annotations

import sys

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stack import ServiceProcess
from coding import parm
from decoder_service.server import create_server as create_decoder
from encoder_service.server import create_server as create_encoder
from frontend.core.routes import parse_route
from frontend.transport.coding_clients import CodingClients
from service_common.cli import ServiceConfig
from service_common.tensors import from_numpy, to_numpy
from service_common.tls import ClientTLS, ServerTLS
from tests.tls_certs import Pki, make_pki
from triton_local.server import free_ports

LIMIT = 1 << 20
GROUP = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
ENCODE = pb.EncodeRequest(code=pb.CodeSpec(scheme="parm", k=2, params={"encoder": "add"}), queries=from_numpy(GROUP))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _server_tls(pki: Pki, mutual: bool) -> ServerTLS:
    return ServerTLS(pki.server_cert, pki.server_key, pki.ca if mutual else None)


def _credentials(pki: Pki, as_client: str | None = None) -> grpc.ChannelCredentials:
    """Trusting the test CA; presenting the ``client`` or ``stranger`` certificate, or none."""
    if as_client is None:
        return grpc.ssl_channel_credentials(pki.read("ca"))
    return grpc.ssl_channel_credentials(pki.read("ca"), pki.read(f"{as_client}_key"), pki.read(f"{as_client}_cert"))


async def _encode(address: str, credentials: grpc.ChannelCredentials | None) -> pb.EncodeResponse:
    channel = (
        grpc.aio.insecure_channel(address) if credentials is None else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        return await pb_grpc.EncoderStub(channel).Encode(ENCODE, timeout=5)


async def _refused(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _encode(address, credentials)
    return err.value


async def test_an_encoder_over_tls_answers_a_client_with_the_ca_and_refuses_plaintext(pki):
    encoder = await create_encoder(ServiceConfig("127.0.0.1:0", None, LIMIT, "INFO", tls=_server_tls(pki, False)))
    address = f"127.0.0.1:{encoder.port}"
    try:
        reply = await _encode(address, _credentials(pki))
        np.testing.assert_allclose(to_numpy(reply.parities, "p")[0], parm.add_encode(GROUP), rtol=1e-6)
        plaintext = await _refused(address, None)
    finally:
        await encoder.stop(0)
    assert plaintext.code() == grpc.StatusCode.UNAVAILABLE, plaintext


async def test_an_encoder_with_mtls_refuses_a_client_without_a_certificate_or_with_one_another_ca_signed(pki):
    encoder = await create_encoder(ServiceConfig("127.0.0.1:0", None, LIMIT, "INFO", tls=_server_tls(pki, True)))
    address = f"127.0.0.1:{encoder.port}"
    try:
        no_cert = await _refused(address, _credentials(pki))
        stranger = await _refused(address, _credentials(pki, "stranger"))
        reply = await _encode(address, _credentials(pki, "client"))
    finally:
        await encoder.stop(0)
    assert no_cert.code() == grpc.StatusCode.UNAVAILABLE, no_cert
    assert stranger.code() == grpc.StatusCode.UNAVAILABLE, stranger
    np.testing.assert_allclose(to_numpy(reply.parities, "p")[0], parm.add_encode(GROUP), rtol=1e-6)


async def test_the_frontends_coding_clients_encode_and_decode_over_mtls(pki):
    config = ServiceConfig("127.0.0.1:0", None, LIMIT, "INFO", tls=_server_tls(pki, True))
    enc, dec = await create_encoder(config), await create_decoder(config)
    tls = ClientTLS(pki.ca, pki.client_cert, pki.client_key)
    clients = CodingClients(f"127.0.0.1:{enc.port}", f"127.0.0.1:{dec.port}", LIMIT, tls=tls)
    await clients.start()
    route = parse_route("m=parm:k=2,encoder=add")
    outputs = [np.array([1, 2, 3], np.float32), None]
    try:
        coded = await clients.encode(route, GROUP, 5.0)
        rebuilt, _ = await clients.decode(route, outputs, [np.array([5, 5, 5], np.float32)], 5.0)
    finally:
        await clients.close()
        await enc.stop(0)
        await dec.stop(0)
    np.testing.assert_allclose(coded[0], parm.add_encode(GROUP), rtol=1e-6)
    np.testing.assert_allclose(rebuilt[1], [4, 3, 2])


@pytest.mark.timeout(120)
def test_a_decoder_process_takes_its_tls_files_from_its_variables_and_serves_only_mtls(pki, tmp_path):
    (port,) = free_ports(1)
    env = {
        "CODEDSERVE_DECODER_TLS_CERT": str(pki.server_cert),
        "CODEDSERVE_DECODER_TLS_KEY": str(pki.server_key),
        "CODEDSERVE_DECODER_TLS_CLIENT_CA": str(pki.ca),
    }
    argv = [sys.executable, "-m", "decoder_service", "--address", f"127.0.0.1:{port}"]
    decoder = ServiceProcess(
        "decoder", argv, port, tmp_path / "decoder.log", env, credentials=_credentials(pki, "client")
    )
    try:
        decoder.start().wait_serving(60)  # over mTLS, with the frontend's client certificate
        with grpc.secure_channel(decoder.address, _credentials(pki)) as channel:  # TLS, but no client certificate
            with pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        decoder.stop()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    assert "(mTLS)" in decoder.log_tail(), decoder.log_tail()
