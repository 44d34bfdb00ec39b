"""Decoder: rebuild the missing outputs of a coding group. Proto <-> numpy here; the math is coding/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from coding.schemes import get_scheme
from service_common.batches import answer_each, answer_stream
from service_common.errors import InvalidArgument
from service_common.tensors import from_numpy, to_numpy


class DecoderServicer(pb_grpc.DecoderServicer):
    async def Decode(self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext) -> pb.DecodeResponse:
        return _decode(request)

    async def DecodeBatch(
        self, request: pb.DecodeBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecodeBatchResponse:
        return pb.DecodeBatchResponse(responses=answer_each(request.requests, _decode, _failed))

    async def DecodeStream(
        self, requests: AsyncIterator[pb.DecodeBatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DecodeBatchResponse]:
        async for response in answer_stream(requests, _decode, _failed, _batch_reply):  # in request order
            yield response


def _decode(request: pb.DecodeRequest) -> pb.DecodeResponse:
    scheme = get_scheme(request.code.scheme, request.code.k, request.code.params)
    data, coded = _slot_outputs(request) if request.slot_outputs else _stacked_outputs(request)
    rebuilt, faulty = scheme.decode_slots(data, coded)
    response = pb.DecodeResponse(slot_reconstructions=[from_numpy(o) for o in rebuilt], faulty_workers=faulty)
    if len({o.shape for o in rebuilt}) == 1:
        response.reconstructions.CopyFrom(from_numpy(np.stack(rebuilt)))
    return response


def _batch_reply(tag: int, responses: list[pb.DecodeResponse]) -> pb.DecodeBatchResponse:
    return pb.DecodeBatchResponse(id=tag, responses=responses)


def _failed(message: str) -> pb.DecodeResponse:
    return pb.DecodeResponse(error=message)


Outputs = list[np.ndarray | None]


def _present(flags: Sequence[bool], count: int, what: str, default: bool) -> list[bool]:
    if not flags and default:
        return [True] * count
    if len(flags) != count:
        raise InvalidArgument(f"{what} has {len(flags)} flags for {count} outputs; they must match")
    return list(flags)


def _slot_outputs(request: pb.DecodeRequest) -> tuple[Outputs, Outputs]:
    """One tensor per slot, each in its own shape (empty where absent)."""
    present = _present(request.present, len(request.slot_outputs), "present", default=False)
    coded_present = _present(request.parity_present, len(request.coded_outputs), "parity_present", default=True)
    data = [
        to_numpy(t, f"slot_outputs[{j}]") if p else None
        for j, (t, p) in enumerate(zip(request.slot_outputs, present, strict=True))
    ]
    coded = [
        to_numpy(t, f"coded_outputs[{i}]") if p else None
        for i, (t, p) in enumerate(zip(request.coded_outputs, coded_present, strict=True))
    ]
    return data, coded


def _stacked_outputs(request: pb.DecodeRequest) -> tuple[Outputs, Outputs]:
    """Every slot of a kind stacked in one tensor (the form before per-slot tensors)."""
    outputs = to_numpy(request.outputs, "outputs")
    parity_outputs = to_numpy(request.parity_outputs, "parity_outputs")
    present = _present(request.present, len(outputs), "present", default=False)
    coded_present = _present(request.parity_present, len(parity_outputs), "parity_present", default=True)
    data = [row if p else None for row, p in zip(outputs, present, strict=True)]
    coded = [row if p else None for row, p in zip(parity_outputs, coded_present, strict=True)]
    return data, coded
