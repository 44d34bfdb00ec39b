"""Encoding and decoding for the coordinator: clients of the encoder and decoder services (the default),
or the same ``coding/`` library in-process (``--coding local``). The frontend never does coding math itself."""

from __future__ import annotations

from typing import Protocol

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from coding.errors import CodingError
from coding.scheme import Outputs
from frontend.config import Route
from service_common.errors import ServiceError
from service_common.tensors import from_numpy, to_numpy


class CodingServiceError(Exception):
    """The encoder or decoder service failed or timed out."""


class CodingClients:
    """Channels to the encoder and decoder; every call's timeout is the caller's time left."""

    def __init__(self, encoder_address: str, decoder_address: str, max_message_bytes: int) -> None:
        self._addresses = (encoder_address, decoder_address)
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channels: list[grpc.aio.Channel] = []

    async def start(self) -> None:
        self._channels = [grpc.aio.insecure_channel(a, options=self._options) for a in self._addresses]
        self._encoder = pb_grpc.EncoderStub(self._channels[0])
        self._decoder = pb_grpc.DecoderStub(self._channels[1])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    @staticmethod
    def _code(route: Route) -> pb.CodeSpec:
        return pb.CodeSpec(scheme=route.scheme, k=route.k, params=route.param_dict)

    async def encode(self, route: Route, inputs: np.ndarray, timeout_s: float) -> np.ndarray:
        """The coded input of every coded slot, ``(r, ...)``."""
        request = pb.EncodeRequest(code=self._code(route), queries=from_numpy(inputs))
        try:
            response = await self._encoder.Encode(request, timeout=timeout_s)
            return to_numpy(response.parities, "parities")
        except grpc.aio.AioRpcError as exc:
            raise CodingServiceError(f"encoder at {self._addresses[0]}: {exc.code().name}: {exc.details()}") from exc
        except ServiceError as exc:
            raise CodingServiceError(f"encoder at {self._addresses[0]} answered garbage: {exc}") from exc

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
        try:
            response = await self._decoder.Decode(request, timeout=timeout_s)
            rebuilt = [to_numpy(t, "slot_reconstructions") for t in response.slot_reconstructions]
        except grpc.aio.AioRpcError as exc:
            raise CodingServiceError(f"decoder at {self._addresses[1]}: {exc.code().name}: {exc.details()}") from exc
        except ServiceError as exc:
            raise CodingServiceError(f"decoder at {self._addresses[1]} answered garbage: {exc}") from exc
        return rebuilt, list(response.faulty_workers)


def _tensor(array: np.ndarray | None) -> pb.Tensor:
    return pb.Tensor() if array is None else from_numpy(array)


class Coder(Protocol):
    """How the coordinator encodes and decodes: the coding services, or the same library in-process."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def encode(self, route: Route, inputs: np.ndarray, timeout_s: float) -> np.ndarray: ...

    async def decode(
        self, route: Route, data_outputs: Outputs, coded_outputs: Outputs, timeout_s: float
    ) -> tuple[list[np.ndarray], list[int]]: ...


class LocalCoding:
    """``--coding local``: the ``coding/`` library inside the frontend, no hop (for cheap encoders; the
    separate services stay the default and what a cluster deploys). Runs on the event loop: ParM and
    Berrut coding of one group take microseconds of numpy, less than a hop to an executor."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

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
