"""Encoding and decoding for the coordinator: clients of the encoder and decoder services (the default),
or the same ``coding/`` library in-process (``--coding local``). The frontend never does coding math itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coding.errors import CodingError
from coding.scheme import Outputs
from frontend.core.calls import CodingServiceError
from frontend.core.routes import Route
from frontend.dataplane.batching import Batcher
from frontend.transport.streams import StreamCalls, rpc_error
from service_common.channels import DEFAULT_RECONNECT_BACKOFF_MS, client_options
from service_common.errors import ServiceError
from service_common.logs import RateLimitedLog
from service_common.tensors import from_numpy, to_numpy
from service_common.tls import ClientTLS, aio_channel

log = logging.getLogger(__name__)

TRANSPORTS = ("stream", "unary")  # how batches reach the coding services (see CodingClients)
_T = TypeVar("_T")
_R = TypeVar("_R")


class CodingClients:
    """Channels to the encoder and decoder. Calls go one at a time per service; groups that seal or
    need decoding while one is out travel together in one batch (no added delay, :mod:`frontend.dataplane.batching`).
    With ``transport="stream"`` (the default) every batch is one message on a long-lived EncodeStream /
    DecodeStream (:mod:`frontend.transport.streams`); with ``"unary"`` one Encode / Decode or EncodeBatch / DecodeBatch
    call. A batch's timeout is the longest time left of the groups it carries.
    Failures are warned rate-limited, per service and cause (while a service is down every group fails
    alike), and a service answering again after a warning is logged once, at most once per period too:
    when tiny client deadlines make every other call time out, that is one warning and one recovery line
    per period, not a pair per call."""

    MAX_GROUPS = 64  # per batch call
    WARN_EVERY_S = 10.0

    def __init__(
        self,
        encoder_address: str,
        decoder_address: str,
        max_message_bytes: int,
        tls: ClientTLS | None = None,
        reconnect_backoff_ms: int = DEFAULT_RECONNECT_BACKOFF_MS,
        transport: str = "stream",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self._transport = transport
        self._addresses = (encoder_address, decoder_address)
        self._tls = tls  # both channels: TLS when given, plaintext otherwise
        self._options = client_options(max_message_bytes, reconnect_backoff_ms)
        self._channels: list[grpc.aio.Channel] = []
        self._warnings = (RateLimitedLog(log, self.WARN_EVERY_S), RateLimitedLog(log, self.WARN_EVERY_S))
        self._encodes: Batcher[_Timed[pb.EncodeRequest], pb.EncodeResponse] = Batcher(
            self._encode_batch, 1, self.MAX_GROUPS
        )
        self._decodes: Batcher[_Timed[pb.DecodeRequest], pb.DecodeResponse] = Batcher(
            self._decode_batch, 1, self.MAX_GROUPS
        )

    async def start(self) -> None:
        self._channels = [aio_channel(a, self._options, self._tls) for a in self._addresses]
        self._encoder = pb_grpc.EncoderStub(self._channels[0])
        self._decoder = pb_grpc.DecoderStub(self._channels[1])
        self._encode_stream: StreamCalls[pb.EncodeBatchRequest, pb.EncodeBatchResponse] = StreamCalls(
            self._encoder.EncodeStream, f"encoder at {self._addresses[0]}"
        )
        self._decode_stream: StreamCalls[pb.DecodeBatchRequest, pb.DecodeBatchResponse] = StreamCalls(
            self._decoder.DecodeStream, f"decoder at {self._addresses[1]}"
        )

    async def close(self) -> None:
        if self._channels:
            await asyncio.gather(self._encode_stream.close(), self._decode_stream.close())
        for channel in self._channels:
            await channel.close()

    async def ready(self, timeout_s: float) -> dict[str, bool]:
        """Whether the encoder and the decoder answer SERVING (grpc.health.v1) within ``timeout_s``."""
        answers = await asyncio.gather(*(_serving(c, timeout_s) for c in self._channels))
        return dict(zip(("encoder", "decoder"), answers, strict=True))

    @staticmethod
    def _code(route: Route) -> pb.CodeSpec:
        return pb.CodeSpec(scheme=route.scheme, k=route.code_k, params=route.param_dict)

    async def encode(self, route: Route, inputs: np.ndarray, timeout_s: float) -> np.ndarray:
        """The coded input of every coded slot, ``(r, ...)``."""
        request = pb.EncodeRequest(code=self._code(route), queries=from_numpy(inputs))
        response = await self._call(self._encodes, _Timed(request, timeout_s), "encoder", 0)
        return self._read(lambda: to_numpy(response.parities, "parities"), "encoder", 0)

    async def decode(
        self, route: Route, data_outputs: Outputs, coded_outputs: Outputs, timeout_s: float
    ) -> tuple[list[np.ndarray], list[int]]:
        """Every data slot's output (absent ones rebuilt), and the coded workers judged Byzantine."""
        request = pb.DecodeRequest(
            code=self._code(route),
            present=[o is not None for o in data_outputs],
            parity_present=[o is not None for o in coded_outputs],
            slot_outputs=[_tensor(o) for o in data_outputs],
            coded_outputs=[_tensor(o) for o in coded_outputs],
        )
        response = await self._call(self._decodes, _Timed(request, timeout_s), "decoder", 1)
        rebuilt = self._read(
            lambda: [to_numpy(t, "slot_reconstructions") for t in response.slot_reconstructions], "decoder", 1
        )
        return rebuilt, list(response.faulty_workers)

    async def _call(self, batcher: Batcher[_Timed[Any], Any], item: _Timed[Any], service: str, i: int) -> Any:
        try:
            response = await batcher.submit(item)
        except grpc.aio.AioRpcError as exc:
            raise self._failed(
                i, exc.code().name, f"{service} at {self._addresses[i]}: {exc.code().name}: {exc.details()}"
            ) from exc
        if response.error:
            raise self._failed(i, "error", f"{service} at {self._addresses[i]}: {response.error}")
        self._warnings[i].resolved("%s at %s answers again", service, self._addresses[i])
        return response

    def _read(self, parse: Callable[[], _T], service: str, i: int) -> _T:
        try:
            return parse()
        except ServiceError as exc:
            raise self._failed(i, "garbage", f"{service} at {self._addresses[i]} answered garbage: {exc}") from exc

    def _failed(self, i: int, cause: str, message: str) -> CodingServiceError:
        self._warnings[i].warning(cause, "%s", message)
        return CodingServiceError(message)

    async def _encode_batch(self, items: list[_Timed[pb.EncodeRequest]]) -> list[pb.EncodeResponse]:
        if self._transport == "stream":
            return await _send_on(self._encode_stream, items, pb.EncodeBatchRequest)
        return await _send(items, self._encoder.Encode, self._encoder.EncodeBatch, pb.EncodeBatchRequest)

    async def _decode_batch(self, items: list[_Timed[pb.DecodeRequest]]) -> list[pb.DecodeResponse]:
        if self._transport == "stream":
            return await _send_on(self._decode_stream, items, pb.DecodeBatchRequest)
        return await _send(items, self._decoder.Decode, self._decoder.DecodeBatch, pb.DecodeBatchRequest)


async def _serving(channel: grpc.aio.Channel, timeout_s: float) -> bool:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def _send(items: list[_Timed[Any]], unary: Any, batch: Any, batch_request: Any) -> list[Any]:
    """One call for ``items``: the unary RPC for one (what an older service also serves), else the batch RPC;
    its timeout is the longest time left among them."""
    timeout = max(item.timeout_s for item in items)
    if len(items) == 1:
        return [await unary(items[0].request, timeout=timeout)]
    reply = await batch(batch_request(requests=[item.request for item in items]), timeout=timeout)
    return list(reply.responses)


async def _send_on(stream: StreamCalls[Any, Any], items: list[_Timed[Any]], batch_request: Any) -> list[Any]:
    """One message on the stream for ``items``; its timeout is the longest time left among them."""
    reply = await stream.call(batch_request(requests=[item.request for item in items]), max(i.timeout_s for i in items))
    if len(reply.responses) != len(items):
        raise rpc_error(
            grpc.StatusCode.INTERNAL, f"answered {len(reply.responses)} results for a batch of {len(items)}"
        )
    return list(reply.responses)


@dataclass(frozen=True)
class _Timed(Generic[_R]):
    request: _R
    timeout_s: float


def _tensor(array: np.ndarray | None) -> pb.Tensor:
    return pb.Tensor() if array is None else from_numpy(array)


class LocalCoding:
    """``--coding local``: the ``coding/`` library inside the frontend, no hop (for cheap encoders; the
    separate services stay the default and what a cluster deploys). Runs on the event loop: ParM and
    Berrut coding of one group take microseconds of numpy, less than a hop to an executor."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ready(self, timeout_s: float) -> dict[str, bool]:
        return {}

    async def encode(self, route: Route, inputs: np.ndarray, timeout_s: float) -> np.ndarray:
        try:
            return route.code.coded_inputs(inputs)
        except CodingError as exc:
            raise CodingServiceError(f"local encoder: {exc}") from exc

    async def decode(
        self, route: Route, data_outputs: Outputs, coded_outputs: Outputs, timeout_s: float
    ) -> tuple[list[np.ndarray], list[int]]:
        try:
            return route.code.decode_slots(data_outputs, coded_outputs)
        except CodingError as exc:
            raise CodingServiceError(f"local decoder: {exc}") from exc
