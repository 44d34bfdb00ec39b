"""Encodes and decodes over long-lived streams (EncodeStream / DecodeStream), on real servers (port 0):
answers matched by id, a bad group failing only itself, deadlines, and a stream that breaks and reopens."""

import asyncio

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from coding import parm
from decoder_service.server import create_server as create_decoder
from encoder_service.server import create_server as create_encoder
from frontend.core.calls import CodingServiceError
from frontend.core.routes import parse_route
from frontend.transport.coding_clients import CodingClients
from frontend.transport.streams import StreamCalls
from service_common.cli import ServiceConfig
from service_common.tensors import from_numpy, to_numpy

LIMIT = 1 << 20
ROUTE = parse_route("m=parm:k=2,encoder=add")


def _config(port: int = 0) -> ServiceConfig:
    return ServiceConfig(f"127.0.0.1:{port}", None, LIMIT, "INFO")


def _group(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((2, 1, 28, 28), dtype=np.float32)


def _encode_request(k: int, group: np.ndarray) -> pb.EncodeRequest:
    return pb.EncodeRequest(code=pb.CodeSpec(scheme="parm", k=k, params={"encoder": "add"}), queries=from_numpy(group))


async def test_the_services_answer_each_stream_message_in_order_with_its_id():
    enc, dec = await create_encoder(_config()), await create_decoder(_config())
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in (enc, dec)]
    try:
        encodes = pb_grpc.EncoderStub(channels[0]).EncodeStream()
        groups = [_group(i) for i in range(3)]
        for tag, g in zip((7, 3, 11), groups, strict=True):
            await encodes.write(pb.EncodeBatchRequest(id=tag, requests=[_encode_request(2, g), _encode_request(3, g)]))
        replies = [await encodes.read() for _ in range(3)]
        await encodes.done_writing()
        assert [r.id for r in replies] == [7, 3, 11]
        for reply, g in zip(replies, groups, strict=True):
            np.testing.assert_array_equal(to_numpy(reply.responses[0].parities, "p")[0], parm.add_encode(g))
            assert "k=3 queries" in reply.responses[1].error  # the bad group fails alone, the stream goes on

        decodes = pb_grpc.DecoderStub(channels[1]).DecodeStream()
        decode = pb.DecodeRequest(
            code=pb.CodeSpec(scheme="parm", k=2, params={"encoder": "add"}),
            outputs=from_numpy(np.array([[1, 2, 3], [0, 0, 0]], np.float32)),
            present=[True, False],
            parity_outputs=from_numpy(np.array([[5, 5, 5]], np.float32)),
        )
        await decodes.write(pb.DecodeBatchRequest(id=42, requests=[decode]))
        reply = await decodes.read()
        await decodes.done_writing()
        assert reply.id == 42
        np.testing.assert_allclose(to_numpy(reply.responses[0].reconstructions, "r")[1], [4, 3, 2])
    finally:
        for c in channels:
            await c.close()
        await enc.stop(0)
        await dec.stop(0)


@pytest.mark.parametrize("transport", ["stream", "unary"])
async def test_the_frontends_coding_client_encodes_and_decodes_over_either_transport(transport):
    enc, dec = await create_encoder(_config()), await create_decoder(_config())
    clients = CodingClients(f"127.0.0.1:{enc.port}", f"127.0.0.1:{dec.port}", LIMIT, transport=transport)
    await clients.start()
    try:
        groups = [_group(i) for i in range(5)]
        coded = await asyncio.gather(*(clients.encode(ROUTE, g, 5.0) for g in groups))  # queued ones travel together
        logits = [np.array([1, 2, 3], np.float32), None]
        rebuilt, faulty = await clients.decode(ROUTE, logits, [np.array([5, 5, 5], np.float32)], 5.0)
    finally:
        await clients.close()
        await enc.stop(0)
        await dec.stop(0)
    for g, c in zip(groups, coded, strict=True):
        np.testing.assert_allclose(c[0], parm.add_encode(g), rtol=1e-6)
    np.testing.assert_allclose(rebuilt[1], [4, 3, 2])
    assert faulty == []


async def test_a_stream_that_breaks_fails_its_calls_and_the_next_call_opens_a_new_one():
    enc, dec = await create_encoder(_config()), await create_decoder(_config())
    port = enc.port
    clients = CodingClients(f"127.0.0.1:{port}", f"127.0.0.1:{dec.port}", LIMIT, reconnect_backoff_ms=100)
    await clients.start()
    try:
        np.testing.assert_allclose((await clients.encode(ROUTE, _group(0), 5.0))[0], parm.add_encode(_group(0)))
        await enc.stop(0)  # the open stream ends with the server
        with pytest.raises(CodingServiceError, match="encoder at"):
            await clients.encode(ROUTE, _group(1), 2.0)
        enc = await create_encoder(_config(port))  # back on the same port
        for _ in range(50):  # the channel reconnects within its backoff
            try:
                coded = await clients.encode(ROUTE, _group(2), 2.0)
                break
            except CodingServiceError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the encoder was never reached again")
        np.testing.assert_allclose(coded[0], parm.add_encode(_group(2)), rtol=1e-6)
    finally:
        await clients.close()
        await enc.stop(0)
        await dec.stop(0)


async def _slow_first_answer_server() -> tuple[grpc.aio.Server, int]:
    """An EncodeStream that answers its first message 0.5 s late, the others at once (echoing the id)."""

    async def stream(requests, context):
        first = True
        async for request in requests:
            if first:
                first = False
                await asyncio.sleep(0.5)
            yield pb.EncodeBatchResponse(id=request.id)

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        stream, pb.EncodeBatchRequest.FromString, pb.EncodeBatchResponse.SerializeToString
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("codedserve.v1.Encoder", {"EncodeStream": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_a_call_past_its_timeout_fails_and_its_late_answer_goes_to_nobody_else():
    server, port = await _slow_first_answer_server()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    calls = StreamCalls(pb_grpc.EncoderStub(channel).EncodeStream, "test encoder")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await calls.call(pb.EncodeBatchRequest(), 0.1)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        second = pb.EncodeBatchRequest()
        reply = await calls.call(second, 2.0)  # answered after the late first answer arrives
        assert reply.id == second.id != 1
    finally:
        await calls.close()
        await channel.close()
        await server.stop(0)


@pytest.mark.parametrize("method", ["/codedserve.v1.Encoder/EncodeStream", "/codedserve.v1.Decoder/DecodeStream"])
async def test_a_garbled_stream_message_is_invalid_argument_after_the_ones_before_it(method):
    server = await (create_encoder if "Encoder" in method else create_decoder)(_config())
    batch = pb.EncodeBatchRequest(id=5, requests=[_encode_request(2, _group(0))]) if "Encoder" in method else None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.stream_stream(method, lambda b: b, lambda b: b)()
            if batch is not None:
                await call.write(batch.SerializeToString())
                assert pb.EncodeBatchResponse.FromString(await call.read()).id == 5  # answered before the bad one
            await call.write(b"\xff\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call.read()
    finally:
        await server.stop(0)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"stream message {2 if batch else 1} is not a well-formed batch" in error.value.details()
