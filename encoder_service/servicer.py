"""Encoder: a group's queries in, the input of every coded slot out. Proto <-> numpy here; the math is coding/."""

from __future__ import annotations

import grpc
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from coding.schemes import get_scheme
from service_common.tensors import from_numpy, to_numpy


class EncoderServicer(pb_grpc.EncoderServicer):
    async def Encode(self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext) -> pb.EncodeResponse:
        scheme = get_scheme(request.code.scheme, request.code.k, request.code.params)
        queries = to_numpy(request.queries, "queries")
        # Encoding a group is microseconds of numpy: cheaper inline than a hop to an executor.
        return pb.EncodeResponse(parities=from_numpy(scheme.coded_inputs(queries)))
