"""The whole stack over mutual TLS, with certificates made at test time (tests/tls_certs.py): the real
tritonserver with ``--grpc-use-ssl-mutual``, the encoder and decoder with a client CA, and the frontend
with TLS on its codedserve.v1 and KServe ports, calling all three with its own client certificate. A
Classify (and a reconstruction, which needs the encoder, the parity model and the decoder) and a KServe
ModelInfer are answered exactly; a client without a certificate, or in plaintext, is refused."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from bench.stack import ServiceProcess
from service_common.tensors import from_numpy
from service_common.tls import ServerTLS
from tests.integration import linear_models
from tests.tls_certs import Pki, make_pki
from triton_local.server import TritonConfig, TritonServer, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = linear_models.DEPLOYED
ROUTE = f"{MODEL}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}"


@dataclass
class TlsStack:
    pki: Pki
    triton: TritonServer
    frontend: ServiceProcess
    kserve_address: str


def _server_flags(pki: Pki) -> list[str]:
    return ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)]


def _credentials(pki: Pki, with_client_cert: bool = True) -> grpc.ChannelCredentials:
    if not with_client_cert:
        return grpc.ssl_channel_credentials(pki.read("ca"))
    return grpc.ssl_channel_credentials(pki.read("ca"), pki.read("client_key"), pki.read("client_cert"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[TlsStack]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    repo, logs = tmp_path_factory.mktemp("repo"), tmp_path_factory.mktemp("logs")
    models = tuple(linear_models.write_repository(repo))
    tls = ServerTLS(pki.server_cert, pki.server_key, pki.ca)
    triton = TritonServer(TritonConfig(repo, models=models, log_path=logs / "triton.log", grpc_tls=tls))
    encoder_port, decoder_port, frontend_port, kserve_port = free_ports(4)
    client = ["--tls-client-cert", str(pki.client_cert), "--tls-client-key", str(pki.client_key)]
    services = {
        "encoder": ["-mencoder_service", "--address", f"127.0.0.1:{encoder_port}", *_server_flags(pki)],
        "decoder": ["-mdecoder_service", "--address", f"127.0.0.1:{decoder_port}", *_server_flags(pki)],
    }
    processes = {
        name: ServiceProcess(name, [sys.executable, *argv], port, logs / f"{name}.log", credentials=_credentials(pki))
        for (name, argv), port in zip(services.items(), (encoder_port, decoder_port), strict=True)
    }
    try:
        triton.start()
        for process in processes.values():
            process.start()
        triton.wait_ready(120)
        frontend_argv = [
            *("-mfrontend", "--address", f"127.0.0.1:{frontend_port}", "--kserve-address", f"127.0.0.1:{kserve_port}"),
            *("--triton-url", triton.grpc_url, "--triton-tls-ca", str(pki.ca)),
            *("--encoder", f"127.0.0.1:{encoder_port}", "--decoder", f"127.0.0.1:{decoder_port}"),
            *("--coding-tls-ca", str(pki.ca), *client, *_server_flags(pki)),
            *("--route", ROUTE, "--straggler-timeout-ms", "40", "--fill-timeout-ms", "2000", "--allow-fault-metadata"),
        ]
        frontend = ServiceProcess(
            "frontend",
            [sys.executable, *frontend_argv],
            frontend_port,
            logs / "frontend.log",
            credentials=_credentials(pki),
        )
        processes["frontend"] = frontend.start()
        for process in processes.values():
            process.wait_serving(120)  # the frontend: only once Triton has the models, read over mTLS
        running = TlsStack(pki, triton, frontend, f"127.0.0.1:{kserve_port}")
        # One group first: the first group over new connections took about the 40 ms straggler deadline
        # on 2 cores (a fresh model's first inference, before the frontend's own --warm-up), so the tests
        # below saw it reconstructed; the client's connection is still new here.
        asyncio.run(_classify_group(running, [None, None]))
        yield running
    finally:
        for process in reversed(list(processes.values())):
            process.stop()
        triton.stop()


def _query(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 28, 28), dtype=np.float32)


async def _classify_group(stack: TlsStack, faults: list[str | None]) -> list[pb.ClassifyResponse]:
    async with grpc.aio.secure_channel(stack.frontend.address, _credentials(stack.pki)) as channel:
        stub = pb_grpc.FrontendStub(channel)

        async def one(i: int, fault: str | None) -> pb.ClassifyResponse:
            request = pb.ClassifyRequest(model=MODEL, input=from_numpy(_query(i)), id=str(i))
            return await stub.Classify(request, timeout=10, metadata=(("codedserve-fault", fault),) if fault else None)

        return list(await asyncio.gather(*(one(i, f) for i, f in enumerate(faults))))


def test_a_classify_over_mtls_is_answered_by_the_deployed_model_on_triton_over_mtls(stack):
    replies = asyncio.run(_classify_group(stack, [None, None]))
    for i, reply in enumerate(replies):
        assert reply.source == pb.DEPLOYED and not reply.reconstructed
        np.testing.assert_allclose(reply.logits, linear_models.reference(_query(i))[0], rtol=1e-4, atol=1e-4)


def test_a_failed_query_is_rebuilt_exactly_through_the_encoder_parity_model_and_decoder_over_mtls(stack):
    replies = asyncio.run(_classify_group(stack, [None, "fail"]))
    assert replies[1].reconstructed and replies[1].source == pb.RECONSTRUCTED
    np.testing.assert_allclose(replies[1].logits, linear_models.reference(_query(1))[0], rtol=1e-3, atol=1e-3)


def test_a_kserve_model_infer_over_mtls_is_answered_exactly(stack):
    pki = stack.pki
    x = np.random.default_rng(7).random((2, 1, 28, 28), dtype=np.float32)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(
        stack.kserve_address,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    ) as client:
        assert client.is_server_ready()
        assert client.get_model_metadata(MODEL).name == MODEL  # forwarded to Triton on the control channel
        result = client.infer(MODEL, [tensor])
    np.testing.assert_allclose(result.as_numpy("logits"), linear_models.reference(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("port", ["codedserve.v1", "kserve"])
@pytest.mark.parametrize("client", ["no client certificate", "plaintext"])
def test_the_frontend_refuses_a_client_without_a_certificate_or_in_plaintext(stack, port, client):
    address = stack.frontend.address if port == "codedserve.v1" else stack.kserve_address
    plaintext = client == "plaintext"
    channel = (
        grpc.insecure_channel(address) if plaintext else grpc.secure_channel(address, _credentials(stack.pki, False))
    )
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            if port == "kserve":
                kpb_grpc.GRPCInferenceServiceStub(channel).ServerReady(kpb.ServerReadyRequest(), timeout=5)
            else:
                pb_grpc.FrontendStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value


def test_triton_itself_serves_only_mtls(stack):
    """So the answers above did travel to Triton over mTLS."""
    ready = kpb.ServerReadyRequest()
    with grpc.secure_channel(stack.triton.grpc_url, _credentials(stack.pki)) as channel:
        assert kpb_grpc.GRPCInferenceServiceStub(channel).ServerReady(ready, timeout=5).ready
    for channel in (
        grpc.insecure_channel(stack.triton.grpc_url),
        grpc.secure_channel(stack.triton.grpc_url, _credentials(stack.pki, False)),
    ):
        with channel, pytest.raises(grpc.RpcError) as err:
            kpb_grpc.GRPCInferenceServiceStub(channel).ServerReady(ready, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
