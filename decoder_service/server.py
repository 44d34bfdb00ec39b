"""The decoder service's gRPC server: the Decoder servicer plus health and reflection, in the coding services'
shared shape (:class:`service_common.service.CodingService`)."""

from __future__ import annotations

from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from decoder_service.servicer import DecoderServicer
from service_common.service import CodingService

DECODER = CodingService(
    "decoder", 8102, "Decoder", lambda server: pb_grpc.add_DecoderServicer_to_server(DecoderServicer(), server)
)
SERVICE_NAME = DECODER.service_name
create_server = DECODER.create_server
