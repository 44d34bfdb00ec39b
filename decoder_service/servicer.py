"""Decoder: rebuild the missing outputs of a coding group. Proto <-> numpy here; the math is coding/."""

from __future__ import annotations

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from coding.schemes import get_scheme
from service_common.errors import InvalidArgument
from service_common.tensors import from_numpy, to_numpy


class DecoderServicer(pb_grpc.DecoderServicer):
    async def Decode(self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext) -> pb.DecodeResponse:
        scheme = get_scheme(request.code.scheme, request.code.k, request.code.params)
        outputs = to_numpy(request.outputs, "outputs")
        parity_outputs = to_numpy(request.parity_outputs, "parity_outputs")
        present = np.asarray(request.present, dtype=bool)
        parity_present = np.asarray(request.parity_present or [True] * len(parity_outputs), dtype=bool)
        if present.shape != (len(outputs),) or parity_present.shape != (len(parity_outputs),):
            raise InvalidArgument(
                f"present has {len(present)} flags for {len(outputs)} outputs and parity_present "
                f"{len(parity_present)} for {len(parity_outputs)} parity outputs; they must match"
            )
        rebuilt, faulty = scheme.decode_group(outputs, present, parity_outputs, parity_present)
        return pb.DecodeResponse(reconstructions=from_numpy(rebuilt), faulty_workers=faulty)
