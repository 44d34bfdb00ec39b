"""The decoder service's gRPC server: the Decoder servicer plus health and reflection."""

from __future__ import annotations

from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from decoder_service.servicer import DecoderServicer
from service_common.cli import ServiceConfig
from service_common.server import Running, start_server

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Decoder"].full_name


async def create_server(config: ServiceConfig) -> Running:
    """Start serving on config.address (TLS when config.tls is set), and health alone on
    config.health_address when set; returns the running server and its bound port."""
    return await start_server(
        [lambda server: pb_grpc.add_DecoderServicer_to_server(DecoderServicer(), server)],
        [SERVICE_NAME],
        config.address,
        config.max_message_bytes,
        tls=config.tls,
        health_address=config.health_address,
    )
