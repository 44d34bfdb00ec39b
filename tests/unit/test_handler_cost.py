"""bench.handler_cost's harness: the real KServe handler over the real frontend, only Triton's answers canned."""

from __future__ import annotations

import asyncio

import numpy as np
from tritonclient.grpc import service_pb2 as kpb

from bench import handler_cost
from export import spec


async def _answer(route: str) -> kpb.ModelInferResponse:
    servicer = await handler_cost._servicer(route, "local")
    x = np.ones((2, *spec.IMAGE_SHAPE), np.float32)
    request = kpb.ModelInferRequest(
        model_name=handler_cost.MODEL,
        inputs=[kpb.ModelInferRequest.InferInputTensor(name=spec.INPUT_NAME, datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.tobytes()],
    )
    return await servicer.ModelInfer(request, handler_cost._Context())  # type: ignore[arg-type]


async def test_the_handler_answers_every_row_with_the_canned_logits():
    reply = await _answer(f"{handler_cost.MODEL}=none")
    logits = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(list(reply.outputs[0].shape))
    assert logits.shape == (2, handler_cost.CLASSES) and not logits.any()
    assert reply.parameters["codedserve_scheme"].string_param == "none"


async def test_a_coded_route_runs_through_its_coding_groups():
    reply = await _answer(f"{handler_cost.MODEL}=parm:k=2,encoder=concat")
    assert reply.parameters["codedserve_scheme"].string_param == "parm"
    assert list(reply.outputs[0].shape) == [2, handler_cost.CLASSES]


async def test_measure_reports_cpu_per_query():
    cost = await handler_cost.measure(f"{handler_cost.MODEL}=none", 2, 20, "local")
    assert cost.cpu_us > 0


def test_on_a_counting_loop_measure_counts_turns_and_callbacks_per_query():
    """A query costs at least its own task's steps: several callbacks and more than one turn when alone."""
    with asyncio.Runner(loop_factory=handler_cost.CountingLoop) as runner:
        alone = runner.run(handler_cost.measure(f"{handler_cost.MODEL}=none", 1, 40, "local"))
    assert alone.turns > 1 and alone.handles >= alone.turns
    with asyncio.Runner(loop_factory=handler_cost.CountingLoop) as runner:
        together = runner.run(handler_cost.measure(f"{handler_cost.MODEL}=none", 4, 40, "local"))
    assert together.turns < alone.turns  # four queries share each turn
