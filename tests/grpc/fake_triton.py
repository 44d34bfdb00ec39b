"""A stand-in for Triton on the wire: a real grpc.aio ``GRPCInferenceService`` on 127.0.0.1 (port 0)
serving one model ``m`` (FP32 [4] in, FP32 [3] out, batches of up to 8 rows), so the frontend's real
Triton pool, batchers and KServe control calls run unchanged, without a tritonserver.

``gate`` holds every ModelInfer while it is clear (a slow Triton); ``delay_s`` adds a fixed service
time to each; while ``failing`` is set, every ModelInfer fails INTERNAL while ModelReady still says
ready (a Triton whose model is broken). Each row answers [s, -s, 0] for s = the row's sum. A ModelInfer
its client cancels while held at the gate is counted in ``cancelled`` (and sets ``cancel_seen``).
ModelStreamInfer answers its requests one after the other, each as a ModelInfer would.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

MODEL, INPUT, OUTPUT = "m", "input", "logits"
ROW, CLASSES, MAX_BATCH = 4, 3, 8


class FakeTriton(kpb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.delay_s = 0.0
        self.failing = False
        self.failed = 0  # ModelInfer calls failed while failing
        self.rows = 0  # rows answered
        self.calls_waiting = 0  # ModelInfer calls held at the gate now
        self.rows_waiting = 0  # and their rows
        self.cancelled = 0  # ModelInfer calls their client cancelled while held at the gate
        self.cancel_seen = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._server: grpc.aio.Server | None = None
        self.url = ""

    async def start(self) -> FakeTriton:
        self._server = grpc.aio.server()
        kpb_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        self.url = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        await self._server.start()
        return self

    async def stop(self) -> None:
        self.gate.set()
        if self._server is not None:
            await self._server.stop(0)

    async def held(self, rows: int, timeout_s: float = 20.0) -> None:
        """Wait (bounded) until at least ``rows`` rows are held at the gate."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: self.rows_waiting >= rows)

    async def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        return kpb.ServerReadyResponse(ready=True)

    async def RepositoryIndex(self, request, context):  # type: ignore[no-untyped-def]
        return kpb.RepositoryIndexResponse(models=[kpb.RepositoryIndexResponse.ModelIndex(name=MODEL, state="READY")])

    async def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        return kpb.ModelReadyResponse(ready=request.name == MODEL)

    async def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        await self._known(request.name, context)
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=MODEL,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=INPUT, datatype="FP32", shape=[-1, ROW])],
            outputs=[tensor(name=OUTPUT, datatype="FP32", shape=[-1, CLASSES])],
        )

    async def ModelConfig(self, request, context):  # type: ignore[no-untyped-def]
        await self._known(request.name, context)
        response = kpb.ModelConfigResponse()
        response.config.name, response.config.max_batch_size = MODEL, MAX_BATCH
        return response

    async def ModelStatistics(self, request, context):  # type: ignore[no-untyped-def]
        await self._known(request.name, context)
        return kpb.ModelStatisticsResponse(model_stats=[kpb.ModelStatistics(name=MODEL, version="1")])

    async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        await self._known(request.model_name, context)
        if self.failing:
            self.failed += 1
            await context.abort(grpc.StatusCode.INTERNAL, "onnx runtime error 6: the model cannot run")
        return await self._answer(request)

    async def ModelStreamInfer(self, request_iterator, context):  # type: ignore[no-untyped-def]
        """One answer per request, in order (``failing`` is not honoured here)."""
        async for request in request_iterator:
            await self._known(request.model_name, context)
            yield kpb.ModelStreamInferResponse(infer_response=await self._answer(request))

    async def _answer(self, request: kpb.ModelInferRequest) -> kpb.ModelInferResponse:
        rows = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(-1, ROW)
        self.calls_waiting += 1
        self.rows_waiting += len(rows)
        async with self._arrived:
            self._arrived.notify_all()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:  # grpc.aio cancels the handler when its client cancels the call
            self.cancelled += 1
            self.cancel_seen.set()
            raise
        finally:
            self.calls_waiting -= 1
            self.rows_waiting -= len(rows)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # the service time of a slow model, not a synchronisation
        s = rows.sum(axis=1)
        logits = np.stack([s, -s, 0 * s], axis=1).astype(np.float32)
        self.rows += len(rows)
        return kpb.ModelInferResponse(
            model_name=MODEL,
            model_version="1",
            id=request.id,
            outputs=[kpb.ModelInferResponse.InferOutputTensor(name=OUTPUT, datatype="FP32", shape=logits.shape)],
            raw_output_contents=[logits.tobytes()],
        )

    @staticmethod
    async def _known(name: str, context: grpc.aio.ServicerContext) -> None:
        if name != MODEL:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")
