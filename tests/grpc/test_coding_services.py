"""Encoder and decoder services through real stubs on real servers (port 0): math and status codes."""

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from coding import parm
from decoder_service.server import create_server as create_decoder
from encoder_service.server import create_server as create_encoder
from service_common.cli import ServiceConfig
from service_common.tensors import from_numpy, to_numpy
from tests import toy_schemes  # registers the toy schemes

LIMIT = 1 << 20


@pytest.fixture
async def services():
    config = ServiceConfig("127.0.0.1:0", None, LIMIT, "INFO")
    enc, dec = await create_encoder(config), await create_decoder(config)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in (enc, dec)]
    yield pb_grpc.EncoderStub(channels[0]), pb_grpc.DecoderStub(channels[1]), channels
    for c in channels:
        await c.close()
    await enc.stop(0)
    await dec.stop(0)


def _code(k=2, encoder="add"):
    return pb.CodeSpec(scheme="parm", k=k, params={"encoder": encoder})


async def test_encode_then_decode_round_trip_matches_the_library(services):
    encoder, decoder, _ = services
    group = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    reply = await encoder.Encode(pb.EncodeRequest(code=_code(2, "concat"), queries=from_numpy(group)))
    np.testing.assert_array_equal(to_numpy(reply.parities, "p")[0], parm.concat_encode(group))

    outputs = np.array([[1, 2, 3], [0, 0, 0]], dtype=np.float32)
    parity_out = np.array([[5, 5, 5]], dtype=np.float32)
    reply = await decoder.Decode(
        pb.DecodeRequest(
            code=_code(), outputs=from_numpy(outputs), present=[True, False], parity_outputs=from_numpy(parity_out)
        )
    )
    rebuilt = to_numpy(reply.reconstructions, "r")
    np.testing.assert_allclose(rebuilt, [[1, 2, 3], [4, 3, 2]])  # present row echoed, absent row rebuilt
    assert list(reply.faulty_workers) == []


async def test_approxifer_decodes_a_linear_model_and_names_a_lying_worker(services):
    """K=2, A=1, S=1: N = 2K+2A+S-1 = 6 coded queries; worker 3 lies (sign flip), worker 5 straggles."""
    encoder, decoder, _ = services
    code = pb.CodeSpec(scheme="approxifer", k=2, params={"a": "1", "s": "1"})
    group = np.random.default_rng(2).random((2, 1, 28, 28), dtype=np.float32)
    coded = to_numpy((await encoder.Encode(pb.EncodeRequest(code=code, queries=from_numpy(group)))).parities, "c")
    assert coded.shape == (6, 1, 28, 28)
    weights = np.random.default_rng(3).standard_normal((784, 10)).astype(np.float32)
    outputs = coded.reshape(6, -1) @ weights
    outputs[3] *= -1
    present = [True, True, True, True, True, False]
    reply = await decoder.Decode(
        pb.DecodeRequest(
            code=code,
            outputs=from_numpy(np.zeros((2, 10), np.float32)),
            present=[False, False],
            parity_outputs=from_numpy(outputs),
            parity_present=present,
        )
    )
    assert list(reply.faulty_workers) == [3]
    truth = group.reshape(2, -1) @ weights
    rebuilt = to_numpy(reply.reconstructions, "r")
    assert np.abs(rebuilt - truth).max() < 0.5 * np.abs(truth).max()


@pytest.mark.parametrize("which, name", [(0, "codedserve.v1.Encoder"), (1, "codedserve.v1.Decoder")])
async def test_health_and_reflection_are_served(services, which, name):
    channel = services[2][which]
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = [a async for a in reflection.ServerReflectionInfo(iter([ask]))]
    listed = {s.name for s in answers[0].list_services_response.service}
    assert listed == {name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def _tensor(dtype="float32", shape=(2, 1, 28, 28), data=None):
    n = int(np.prod(shape)) * np.dtype(dtype if dtype in np.sctypeDict else "float32").itemsize
    return pb.Tensor(dtype=dtype, shape=list(shape), data=data if data is not None else b"\0" * n)


@pytest.mark.parametrize(
    "request_, code, message",
    [
        (pb.EncodeRequest(code=_code(3), queries=_tensor()), grpc.StatusCode.INVALID_ARGUMENT, "k=3 queries"),
        (
            pb.EncodeRequest(code=_code(), queries=_tensor(dtype="complex64")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unsupported dtype",
        ),
        (
            pb.EncodeRequest(code=_code(), queries=_tensor(shape=(0, 1, 28, 28))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty tensor",
        ),
        (
            pb.EncodeRequest(code=_code(), queries=_tensor(data=b"123")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 6272 bytes, got 3",
        ),
        (pb.EncodeRequest(code=_code()), grpc.StatusCode.INVALID_ARGUMENT, "missing queries"),
        (
            # 4 * (2**62 + 4) wraps int64 to 16 elements: 64 bytes "matched" and numpy failed (INTERNAL)
            pb.EncodeRequest(code=_code(), queries=pb.Tensor(dtype="float32", shape=[4, 2**62 + 4], data=b"\0" * 64)),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"queries: shape [4, {2**62 + 4}] of float32 declares",
        ),
        (
            pb.EncodeRequest(code=pb.CodeSpec(scheme="nope", k=2), queries=_tensor()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown coding scheme",
        ),
        (
            pb.EncodeRequest(code=_code(), queries=_tensor(shape=(2, 1, 512, 512))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
        ),
    ],
)
async def test_bad_encode_requests_get_clear_statuses(services, request_, code, message):
    encoder, _, _ = services
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await encoder.Encode(request_, timeout=5)
    assert err.value.code() == code
    assert message in err.value.details()


async def test_decode_with_nothing_missing_is_invalid(services):
    _, decoder, _ = services
    zeros = from_numpy(np.zeros((2, 10), np.float32))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await decoder.Decode(
            pb.DecodeRequest(
                code=_code(),
                outputs=zeros,
                present=[True, True],
                parity_outputs=from_numpy(np.zeros((1, 10), np.float32)),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nothing to decode" in err.value.details()


async def test_a_decode_without_its_outputs_is_missing_them(services):
    _, decoder, _ = services
    request = pb.DecodeRequest(code=_code(), present=[True, False], parity_outputs=from_numpy(np.zeros((1, 3))))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await decoder.Decode(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("missing outputs")


async def test_per_slot_tensors_carry_coded_outputs_of_any_shape(services):
    """The tile toy scheme (Collage's shape): a coded input of another shape, a coded output [k, classes]."""
    encoder, decoder, _ = services
    code = pb.CodeSpec(scheme=toy_schemes.TileScheme(2).name, k=2)
    group = np.random.default_rng(4).random((2, 1, 28, 28), dtype=np.float32)
    coded = to_numpy((await encoder.Encode(pb.EncodeRequest(code=code, queries=from_numpy(group)))).parities, "c")
    assert coded.shape == (1, 2, 28, 28)
    own, tiles = np.full(10, 5.0, np.float32), np.arange(20, dtype=np.float32).reshape(2, 10)
    reply = await decoder.Decode(
        pb.DecodeRequest(
            code=code,
            present=[True, False],
            slot_outputs=[from_numpy(own), pb.Tensor()],
            coded_outputs=[from_numpy(tiles)],
        )
    )
    rebuilt = [to_numpy(t, "r") for t in reply.slot_reconstructions]
    np.testing.assert_array_equal(rebuilt[0], own)
    np.testing.assert_array_equal(rebuilt[1], tiles[1])
    np.testing.assert_array_equal(to_numpy(reply.reconstructions, "r"), np.stack(rebuilt))


async def test_per_slot_flags_must_match_the_slots(services):
    _, decoder, _ = services
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await decoder.Decode(
            pb.DecodeRequest(code=_code(), present=[True], slot_outputs=[pb.Tensor(), pb.Tensor()], coded_outputs=[])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "present has 1 flags for 2 outputs" in err.value.details()


async def test_a_batch_call_answers_each_group_and_fails_only_the_bad_one(services):
    encoder, decoder, _ = services
    group = np.random.default_rng(5).random((2, 1, 28, 28), dtype=np.float32)
    good = pb.EncodeRequest(code=_code(2, "add"), queries=from_numpy(group))
    bad = pb.EncodeRequest(code=_code(3, "add"), queries=from_numpy(group))
    reply = await encoder.EncodeBatch(pb.EncodeBatchRequest(requests=[good, bad, good]))
    assert [r.error for r in reply.responses][::2] == ["", ""] and "k=3 queries" in reply.responses[1].error
    np.testing.assert_array_equal(to_numpy(reply.responses[2].parities, "p")[0], parm.add_encode(group))
    decode = pb.DecodeRequest(
        code=_code(),
        outputs=from_numpy(np.array([[1, 2, 3], [0, 0, 0]], np.float32)),
        present=[True, False],
        parity_outputs=from_numpy(np.array([[5, 5, 5]], np.float32)),
    )
    nothing = pb.DecodeRequest(
        code=_code(), outputs=decode.outputs, present=[True, True], parity_outputs=decode.parity_outputs
    )
    replies = (await decoder.DecodeBatch(pb.DecodeBatchRequest(requests=[decode, nothing]))).responses
    np.testing.assert_allclose(to_numpy(replies[0].reconstructions, "r")[1], [4, 3, 2])
    assert "nothing to decode" in replies[1].error
