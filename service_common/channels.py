"""gRPC options every server and channel of the project sets the same way."""

from __future__ import annotations


def message_limits(max_message_bytes: int) -> list[tuple[str, int]]:
    """The largest message received and sent; bigger ones fail with RESOURCE_EXHAUSTED."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
