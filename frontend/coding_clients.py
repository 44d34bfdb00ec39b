"""Clients of the encoder and decoder services (the frontend never does coding math itself)."""

from __future__ import annotations

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from frontend.config import Route
from service_common.tensors import from_numpy, to_numpy


class CodingServiceError(Exception):
    """The encoder or decoder service failed or timed out."""


class CodingClients:
    def __init__(self, encoder_address: str, decoder_address: str, timeout_s: float, max_message_bytes: int) -> None:
        self._addresses = (encoder_address, decoder_address)
        self._timeout_s = timeout_s
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

    async def encode(self, route: Route, group_inputs: np.ndarray) -> np.ndarray:
        request = pb.EncodeRequest(code=self._code(route), queries=from_numpy(group_inputs))
        try:
            response = await self._encoder.Encode(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise CodingServiceError(f"encoder at {self._addresses[0]}: {exc.code().name}: {exc.details()}") from exc
        return to_numpy(response.parities, "parities")

    async def decode(
        self,
        route: Route,
        outputs: np.ndarray,
        present: np.ndarray,
        parity_outputs: np.ndarray,
        parity_present: np.ndarray,
    ) -> tuple[np.ndarray, list[int]]:
        """``(k, classes)`` decoded answers for every slot, and the coded workers judged Byzantine."""
        request = pb.DecodeRequest(
            code=self._code(route),
            outputs=from_numpy(outputs),
            present=present.tolist(),
            parity_outputs=from_numpy(parity_outputs),
            parity_present=parity_present.tolist(),
        )
        try:
            response = await self._decoder.Decode(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise CodingServiceError(f"decoder at {self._addresses[1]}: {exc.code().name}: {exc.details()}") from exc
        return to_numpy(response.reconstructions, "reconstructions"), list(response.faulty_workers)
