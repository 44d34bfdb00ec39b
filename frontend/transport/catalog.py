"""What Triton says each routed model is, read in one place and cached in one place.

:meth:`TritonPool.describe <frontend.transport.triton.TritonPool.describe>` is the one reader of Triton's
ModelMetadata and ModelConfig; :class:`ModelCatalog` keeps what it read for every routed model, from an
instance the placer has for the model (a ready one first), so it follows discovery: an entry read from an
instance since drained is read again from another. A *set* route (COIN: one query answered by k member
models, no Triton model by the route's name) is described here too: the first member's metadata and config
with the route's name, and one output per member, named after the member's Triton model, in data-slot order.
Triton's control calls (ModelMetadata, ModelConfig, ModelStatistics) are forwarded to such an instance, and
their errors come back as ours, same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.utils import triton_to_np_dtype

from frontend.core.calls import ModelSignature
from frontend.core.placement import Placer
from frontend.core.routes import Route
from service_common.errors import DeadlineExceeded, InvalidArgument, NotFound, ServiceError, Unavailable

_FORWARDED_ERRORS: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


@dataclass(frozen=True)
class ModelInfo:
    """What Triton says about a routed model (read once: a route's model does not change under it)."""

    metadata: kpb.ModelMetadataResponse
    config: kpb.ModelConfigResponse

    # Read once each (the responses do not change): every query's checks and answer use them.
    @cached_property
    def version(self) -> str:
        return max(self.metadata.versions, key=lambda v: int(v) if v.isdigit() else -1, default="")

    @cached_property
    def input_dims(self) -> list[int]:
        return [int(d) for d in self.input.shape]

    @cached_property
    def input_dtype(self) -> np.dtype:
        return np.dtype(triton_to_np_dtype(self.input.datatype)).newbyteorder("<")

    @cached_property
    def output_dtypes(self) -> list[np.dtype]:
        return [np.dtype(triton_to_np_dtype(o.datatype)).newbyteorder("<") for o in self.metadata.outputs]

    @property
    def input(self) -> kpb.ModelMetadataResponse.TensorMetadata:
        return self.metadata.inputs[0]

    @property
    def output(self) -> kpb.ModelMetadataResponse.TensorMetadata:
        return self.metadata.outputs[0]

    @cached_property
    def output_names(self) -> list[str]:
        return [o.name for o in self.metadata.outputs]

    @cached_property
    def signature(self) -> ModelSignature:
        """What one query for the model must look like (the batch dimension stripped, when it batches)."""
        batched = self.config.config.max_batch_size > 0
        tensor_in, tensor_out = self.metadata.inputs[0], self.metadata.outputs[0]
        return ModelSignature(
            tensor_in.name,
            tensor_out.name,
            tuple(int(d) for d in tensor_in.shape[1 if batched else 0 :]),
            np.dtype(triton_to_np_dtype(tensor_in.datatype)),
            tuple(int(d) for d in tensor_out.shape[1 if batched else 0 :]),
            max(1, self.config.config.max_batch_size),
            tensor_in.datatype,
            np.dtype(triton_to_np_dtype(tensor_out.datatype)),
            self.version,
        )


class Control(Protocol):
    """What the catalog asks of the Triton pool: the one reader of a model's description, an instance's
    control stub, and whether an instance was drained."""

    urls: tuple[str, ...]

    async def describe(self, model: str, instance: int, timeout_s: float) -> ModelInfo: ...

    def control(self, instance: int) -> Any: ...

    def closed(self, instance: int) -> bool: ...


class ModelCatalog:
    """Every routed model's :class:`ModelInfo` (a set route's synthesised), read once from an instance the
    placer has for it, and read again once that instance is drained."""

    def __init__(self, pool: Control, placer: Placer, routes: Sequence[Route]) -> None:
        self._pool = pool
        self._placer = placer
        self._routes = {r.model: r for r in routes}
        self._infos: dict[str, tuple[ModelInfo, tuple[int, ...]]] = {}  # name -> its info, the instances read

    def members(self, model: str) -> list[str]:
        """The member models of a set route (COIN); empty for a route of one Triton model."""
        route = self._routes.get(model)
        if route is None or model in route.models.values():
            return []
        return [route.models[s.role] for s in route.code.data_slots]

    def triton_models(self, model: str) -> list[str]:
        return self.members(model) or [model]

    async def info(self, model: str, timeout_s: float) -> ModelInfo:
        """The model's (or set route's) description; Triton's errors as ours (NOT_FOUND, UNAVAILABLE...)."""
        entry = self._infos.get(model)
        if entry is not None and not any(self._pool.closed(i) for i in entry[1]):
            return entry[0]
        members = self.members(model)
        models = members or [model]
        instances = [self.instance(m) for m in models]
        reads = (self._pool.describe(m, i, timeout_s) for m, i in zip(models, instances, strict=True))
        infos = await asyncio.gather(*(self._forwarded(r, i) for r, i in zip(reads, instances, strict=True)))
        info = _set_info(model, members, infos) if members else infos[0]
        self._infos[model] = (info, tuple(instances))
        return info

    def instance(self, model: str) -> int:
        """Where the model's control calls go: a ready instance the placer has for it, else any it has."""
        instances = self._placer.ready(model) or self._placer.serving(model)
        if not instances:
            raise Unavailable(f"no Triton instance serves {model} yet")
        return instances[0]

    async def forward(self, method: str, request: Any, model: str, timeout_s: float) -> Any:
        """Triton's control call ``method`` (ModelMetadata, ModelConfig, ModelStatistics) for ``model``."""
        instance = self.instance(model)
        return await self._forwarded(
            getattr(self._pool.control(instance), method)(request, timeout=timeout_s), instance
        )

    async def _forwarded(self, call: Any, instance: int) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            error = _FORWARDED_ERRORS.get(exc.code())
            if error is not None:
                raise error(exc.details() or "") from exc
            url = self._pool.urls[instance]
            raise Unavailable(f"Triton at {url}: {exc.code().name}: {exc.details()}") from exc


def _set_info(name: str, members: list[str], infos: list[ModelInfo]) -> ModelInfo:
    """A set's metadata and config: the first member's, renamed, with one output per member."""
    first = infos[0]
    metadata = kpb.ModelMetadataResponse()
    metadata.CopyFrom(first.metadata)
    metadata.name, metadata.platform = name, "codedserve_set"
    metadata.versions[:] = [first.version]
    del metadata.outputs[:]
    config = kpb.ModelConfigResponse()
    config.CopyFrom(first.config)
    config.config.name = name
    del config.config.output[:]
    for member, info in zip(members, infos, strict=True):
        metadata.outputs.add().CopyFrom(info.output)
        metadata.outputs[-1].name = member
        config.config.output.add().CopyFrom(info.config.config.output[0])
        config.config.output[-1].name = member
    return ModelInfo(metadata, config)
