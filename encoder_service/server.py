"""The encoder service's gRPC server: the Encoder servicer plus health and reflection, in the coding services'
shared shape (:class:`service_common.service.CodingService`)."""

from __future__ import annotations

from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from encoder_service.servicer import EncoderServicer
from service_common.service import CodingService

ENCODER = CodingService(
    "encoder", 8101, "Encoder", lambda server: pb_grpc.add_EncoderServicer_to_server(EncoderServicer(), server)
)
SERVICE_NAME = ENCODER.service_name
create_server = ENCODER.create_server
