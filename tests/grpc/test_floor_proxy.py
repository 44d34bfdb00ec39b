"""bench.floor_proxy, the perf_compare floor and bench.call_cost's targets, against the stand-in Triton on
the wire: it forwards every call as bytes, and ``--canned`` stops calling Triton after the first answer."""

from __future__ import annotations

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from bench.floor_proxy import start_proxy
from tests.grpc.fake_triton import INPUT, MODEL, ROW, FakeTriton


def _request(value: float) -> kpb.ModelInferRequest:
    x = np.full((1, ROW), value, np.float32)
    return kpb.ModelInferRequest(
        model_name=MODEL,
        inputs=[kpb.ModelInferRequest.InferInputTensor(name=INPUT, datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.tobytes()],
    )


async def _answers(canned: bool) -> tuple[list[np.ndarray], int]:
    triton = await FakeTriton().start()
    server, channel, port = await start_proxy("127.0.0.1:0", triton.url, canned=canned)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client:
            stub = kpb_grpc.GRPCInferenceServiceStub(client)
            replies = [await stub.ModelInfer(_request(v), timeout=10.0) for v in (1.0, 2.0, 3.0)]
            ready = await stub.ModelReady(kpb.ModelReadyRequest(name=MODEL), timeout=10.0)
    finally:
        await server.stop(0)
        await channel.close()
        await triton.stop()
    assert ready.ready  # every other method is forwarded as it is
    return [np.frombuffer(r.raw_output_contents[0], np.float32) for r in replies], triton.rows


async def test_the_floor_forwards_every_call_to_triton():
    outputs, rows = await _answers(canned=False)
    assert rows == 3
    assert [o[0] for o in outputs] == [4.0, 8.0, 12.0]  # the stand-in answers the row's sum first


async def test_canned_answers_every_infer_with_tritons_first_answer_and_calls_it_no_more():
    outputs, rows = await _answers(canned=True)
    assert rows == 1
    assert [o[0] for o in outputs] == [4.0, 4.0, 4.0]
