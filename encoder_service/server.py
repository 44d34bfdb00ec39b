"""The encoder service's gRPC server: the Encoder servicer plus health and reflection."""

from __future__ import annotations

from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from encoder_service.servicer import EncoderServicer
from service_common.cli import ServiceConfig
from service_common.server import Running, start_server

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Encoder"].full_name


async def create_server(config: ServiceConfig) -> Running:
    """Start serving on config.address (TLS when config.tls is set), and health alone on
    config.health_address when set; returns the running server and its bound port."""
    return await start_server(
        [lambda server: pb_grpc.add_EncoderServicer_to_server(EncoderServicer(), server)],
        [SERVICE_NAME],
        config.address,
        config.max_message_bytes,
        tls=config.tls,
        health_address=config.health_address,
    )
