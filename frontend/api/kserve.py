"""Triton's own KServe v2 gRPC protocol (``inference.GRPCInferenceService``) in front of the coded frontend.

A team that calls Triton with tritonclient switches to coded serving by changing only the address.
``ModelInfer`` splits a batch of B rows into B queries, serves each through its route's coding groups
(:meth:`ModelServer.classify`) concurrently, and answers one ``[B, classes]`` tensor in the deployed
model's output name; the response ``parameters`` say which rows were reconstructed. ``ModelMetadata``,
``ModelConfig`` and ``ModelStatistics`` are forwarded to Triton for the routed models, so clients and
perf_analyzer see exactly what Triton would say. Mistakes get the status codes Triton 2.51 returns for
them (measured): unknown model or version NOT_FOUND; wrong input name, count, datatype, shape, batch size
or byte count INVALID_ARGUMENT. One deliberate difference: NaN/infinite inputs are INVALID_ARGUMENT,
because one such query would poison the reconstructions of its whole coding group.

Model versions: a route's every Triton call names one version of each of its models, the highest Triton
had ready when the route loaded (a parity model is trained against one version of the deployed model, so
the route never drifts onto another one under it). A request's ``model_version`` is answered when it names
that version, NOT_FOUND naming the model and the version otherwise (also for a version Triton has but the
route does not serve); every response names the version that answered.
Repository control, shared memory, tracing and logging are UNIMPLEMENTED (never forwarded).

A *set* route (COIN: one query answered by k member models, no Triton model by the route's name) is
its own model here, as the model catalog describes it (:mod:`frontend.transport.catalog`): one output per
member, named after the member's Triton model (e.g. ``mnist_coin_m0``), in data-slot order; each output's
``codedserve_reconstructed_rows`` parameter says which of its rows were decoded. Its statistics are the
members'. A request may ask for a subset of the outputs by name. The shell owns no channel and no cache:
what Triton says of a model comes from the catalog, and the queries go to the dataplane, as Classify's do.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from frontend.api.common import (
    HealthView,
    answer_concurrently,
    check_message_size,
    client_of,
    finite_answer,
    message_status,
    query_timeout_s,
    request_fault,
)
from frontend.dataplane.coordinator import Dataplane, ModelServer, QueryAnswer
from frontend.transport.catalog import ModelCatalog, ModelInfo
from service_common.errors import InvalidArgument, NotFound, ServiceError
from service_common.tensors import check_input_values

log = logging.getLogger(__name__)

SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
RECONSTRUCTED_PARAM = "codedserve_reconstructed"  # bool: any row was rebuilt by the decoder
SCHEME_PARAM = "codedserve_scheme"  # string: the route's scheme ("parm", "none", ...)
RECONSTRUCTED_ROWS_PARAM = "codedserve_reconstructed_rows"  # string, one flag per row: "0,1,0"
_TYPED_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT64": "int64_contents"}
_UNSUPPORTED_PARAMS = ("shared_memory_region", "classification")


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
    """Create inside the running loop (it opens a control channel to Triton); :meth:`close` it."""

    def __init__(self, plane: Dataplane, catalog: ModelCatalog, health: HealthView | None = None) -> None:
        self._plane = plane
        self._catalog = catalog  # what Triton says each routed model is; its control calls go there
        self._health = health  # what ServerReady and ModelReady say (None: every signature read)

    async def close(self) -> None:
        """Nothing to close: the shell owns no channel (the catalog calls through the Triton pool's)."""

    # ---- health and metadata --------------------------------------------------------------

    async def ServerLive(
        self, request: kpb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: kpb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ServerReadyResponse:
        ready = self._plane.ready if self._health is None else self._health.serving
        return kpb.ServerReadyResponse(ready=ready)

    async def ModelReady(
        self, request: kpb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelReadyResponse:
        server = self._plane.servers.get(request.name)
        ready = server is not None and server.signature is not None
        if self._health is not None:  # False while no ready Triton instance serves a data slot's model
            ready = ready and self._health.answerable(request.name)
        if ready and request.version and server is not None:
            try:
                ready = request.version == _served_version(server, await self._info(request.name, context))
            except ServiceError:
                ready = False
        return kpb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: kpb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ServerMetadataResponse:
        try:
            version = importlib.metadata.version("codedserve")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return kpb.ServerMetadataResponse(
            name="codedserve", version=version, extensions=["model_configuration", "statistics", "parameters"]
        )

    async def ModelMetadata(
        self, request: kpb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelMetadataResponse:
        self._plane.model_server(request.name)  # NOT_FOUND for models this frontend does not route
        if self._catalog.members(request.name):
            return (await self._info(request.name, context)).metadata
        return await self._forward("ModelMetadata", request, request.name, context)

    async def ModelConfig(
        self, request: kpb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelConfigResponse:
        self._plane.model_server(request.name)
        if self._catalog.members(request.name):
            return (await self._info(request.name, context)).config
        return await self._forward("ModelConfig", request, request.name, context)

    async def ModelStatistics(
        self, request: kpb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelStatisticsResponse:
        """Triton's own statistics of the deployed models (parity calls count under the parity model)."""
        if request.name and request.name not in self._plane.servers:
            raise InvalidArgument(f"requested model '{request.name}' is not available")  # as Triton says it
        names = [
            m
            for n in ([request.name] if request.name else list(self._plane.servers))
            for m in self._catalog.triton_models(n)
        ]
        replies = await asyncio.gather(
            *(
                self._forward(
                    "ModelStatistics", kpb.ModelStatisticsRequest(name=n, version=request.version), n, context
                )
                for n in names
            )
        )
        return kpb.ModelStatisticsResponse(model_stats=[s for r in replies for s in r.model_stats])

    # ---- inference ------------------------------------------------------------------------

    async def ModelInfer(
        self, request: kpb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelInferResponse:
        return await self._infer(request, context)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[kpb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        """Requests run concurrently; responses stream back as they complete, errors per message
        (``error_message``, as Triton does), so one bad request does not end the stream."""

        async def one(request: kpb.ModelInferRequest) -> kpb.ModelStreamInferResponse:
            try:
                return kpb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
            except Exception as exc:  # noqa: BLE001 - becomes this message's error, not the stream's
                _, message = message_status(exc, f"stream infer {request.id!r}", "ModelStreamInfer")
                return kpb.ModelStreamInferResponse(
                    error_message=message,
                    infer_response=kpb.ModelInferResponse(model_name=request.model_name, id=request.id),
                )

        async for response in answer_concurrently(requests, one):
            yield response

    async def _infer(self, request: kpb.ModelInferRequest, context: grpc.aio.ServicerContext) -> kpb.ModelInferResponse:
        check_message_size(request, self._plane.max_message_bytes, "ModelInfer request")
        server = self._plane.model_server(request.model_name)  # NOT_FOUND / UNAVAILABLE
        info = await self._info(request.model_name, context)
        version = _served_version(server, info)
        if request.model_version and request.model_version != version:
            raise NotFound(_unserved_version(request.model_name, request.model_version, version, info))
        batch = _read_input(request, info)
        _check_outputs(request, info)
        timeout_s = query_timeout_s(context, self._plane.default_deadline_s)
        fault = request_fault(context, self._plane)
        # every row is a query, admitted together: RESOURCE_EXHAUSTED at once beyond a bound
        answers = await self._plane.answer(server, batch, timeout_s, client_of(context), fault)
        return _infer_response(request, info, version, [finite_answer(a) for a in answers])

    # ---- Triton control calls --------------------------------------------------------------

    async def _info(self, model: str, context: grpc.aio.ServicerContext) -> ModelInfo:
        return await self._catalog.info(model, query_timeout_s(context, self._plane.default_deadline_s))

    async def _forward(self, method: str, request: Any, model: str, context: grpc.aio.ServicerContext) -> Any:
        """One control call to Triton within the client's deadline; its errors become ours, same code."""
        timeout_s = query_timeout_s(context, self._plane.default_deadline_s)
        return await self._catalog.forward(method, request, model, timeout_s)


def _unimplemented(name: str):  # type: ignore[no-untyped-def]
    async def method(self, request, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by the codedserve frontend")

    method.__name__ = name
    return method


# The generated base class would raise NotImplementedError (INTERNAL through our interceptor).
for _name in (
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
):
    setattr(KServeServicer, _name, _unimplemented(_name))


def _read_input(request: kpb.ModelInferRequest, info: ModelInfo) -> np.ndarray:
    """The request's one input as ``[B, *shape]``, checked the way Triton checks it (same codes)."""
    model, expected = request.model_name, info.input
    if len(request.inputs) != 1:
        raise InvalidArgument(f"expected 1 inputs but got {len(request.inputs)} inputs for model '{model}'")
    tensor = request.inputs[0]
    if tensor.name != expected.name:
        raise InvalidArgument(f"unexpected inference input '{tensor.name}' for model '{model}'")
    if tensor.datatype != expected.datatype:
        raise InvalidArgument(
            f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but model "
            f"'{model}' expects '{expected.datatype}'"
        )
    _check_params(tensor.parameters, f"input '{tensor.name}'")
    shape = list(tensor.shape)
    dims = info.input_dims
    if len(shape) != len(dims) or shape[1:] != dims[1:] or shape[0] < 1:
        raise InvalidArgument(
            f"unexpected shape for input '{tensor.name}' for model '{model}'. "
            f"Expected {_dims(dims)}, got {_dims(shape)}"
        )
    max_batch = info.config.config.max_batch_size
    if max_batch and shape[0] > max_batch:
        raise InvalidArgument(f"inference request batch-size must be <= {max_batch} for '{model}'")
    dtype = info.input_dtype
    data = _input_bytes(request, tensor, dtype)
    needed = math.prod(shape) * dtype.itemsize
    if len(data) != needed:
        raise InvalidArgument(
            f"input byte size mismatch for input '{tensor.name}' for model '{model}'. "
            f"Expected {needed}, got {len(data)}"
        )
    batch = np.frombuffer(data, dtype=dtype).reshape(shape)
    check_input_values(batch, f"input '{tensor.name}' for model '{model}'")
    return batch


def _input_bytes(
    request: kpb.ModelInferRequest, tensor: kpb.ModelInferRequest.InferInputTensor, dtype: np.dtype
) -> bytes:
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument(
                f"expected 1 raw input content for model '{request.model_name}', got {len(request.raw_input_contents)}"
            )
        return request.raw_input_contents[0]
    field = _TYPED_CONTENTS.get(tensor.datatype)
    values = getattr(tensor.contents, field) if field else ()
    if not values:
        raise InvalidArgument(
            f"unable to find data for input tensor '{tensor.name}' for model '{request.model_name}' in request."
        )
    return np.asarray(values, dtype=dtype).tobytes()


def _check_outputs(request: kpb.ModelInferRequest, info: ModelInfo) -> None:
    for output in request.outputs:
        if output.name not in info.output_names:
            raise InvalidArgument(f"unexpected inference output '{output.name}' for model '{request.model_name}'")
        _check_params(output.parameters, f"output '{output.name}'")


def _check_params(parameters: object, what: str) -> None:
    for key in _UNSUPPORTED_PARAMS:
        if key in parameters:  # type: ignore[operator]
            raise InvalidArgument(f"{what}: '{key}' is not supported by the codedserve frontend")


def _served_version(server: ModelServer, info: ModelInfo) -> str:
    """The version of the model that answers the route's queries: the one its every Triton call names
    (:class:`ModelSignature`, read when the route loaded)."""
    return server.signature.version if server.signature is not None and server.signature.version else info.version


def _unserved_version(model: str, asked: str, served: str, info: ModelInfo) -> str:
    if asked not in info.metadata.versions:  # Triton's own words for a version it does not have
        return f"Request for unknown model: '{model}' version {asked} is not found"
    return f"Request for model '{model}' version {asked}: this frontend serves version {served} of it"


def _infer_response(
    request: kpb.ModelInferRequest, info: ModelInfo, version: str, answers: list[QueryAnswer]
) -> kpb.ModelInferResponse:
    """One ``[B, classes]`` tensor per output asked for (all, if none is named): the i-th output is
    every answer's i-th model output (one for a route of one model, one per member for a set). ``version``:
    the model version that answered (every Triton call of the route names it)."""
    wanted = {o.name for o in request.outputs}
    response = kpb.ModelInferResponse(model_name=request.model_name, model_version=version, id=request.id)
    for i, meta in enumerate(info.metadata.outputs):
        if wanted and meta.name not in wanted:
            continue
        per_row = [a.outputs[i].logits for a in answers]
        logits = (per_row[0][None] if len(per_row) == 1 else np.stack(per_row)).astype(
            info.output_dtypes[i], copy=False
        )
        tensor = response.outputs.add(name=meta.name, datatype=meta.datatype, shape=list(logits.shape))
        if len(info.metadata.outputs) > 1:
            member_flags = ",".join("1" if a.outputs[i].reconstructed else "0" for a in answers)
            tensor.parameters[RECONSTRUCTED_ROWS_PARAM].string_param = member_flags
        response.raw_output_contents.append(logits.tobytes())
    flags = [a.reconstructed for a in answers]
    response.parameters[RECONSTRUCTED_PARAM].bool_param = any(flags)
    response.parameters[SCHEME_PARAM].string_param = answers[0].scheme
    response.parameters[RECONSTRUCTED_ROWS_PARAM].string_param = ",".join("1" if f else "0" for f in flags)
    return response


def _dims(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
