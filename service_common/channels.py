"""gRPC options every server and channel of the project sets the same way."""

from __future__ import annotations

# How fast a client channel reconnects to a server that went away. gRPC's defaults (first retry after
# 1 s, x1.6 each time, up to 120 s, ±20% jitter) kept queries failing 1.8-3.6 s after Triton, the encoder
# or the decoder was back from a 5 s outage (python -m bench.recovery): the channel was still waiting
# out its backoff. Retrying every 100 ms at first, never waiting more than DEFAULT_RECONNECT_BACKOFF_MS,
# reconnects within about that much of the server's return; a connect attempt to a closed port costs
# one refused SYN.
INITIAL_RECONNECT_BACKOFF_MS = 100
DEFAULT_RECONNECT_BACKOFF_MS = 500
# gRPC gives a connect attempt at least this long (its "min_reconnect_backoff", 20 s by default). RPCs
# wait while a channel is connecting, so an address that swallows SYNs (a pod IP gone) held them 20 s.
MIN_CONNECT_TIMEOUT_MS = 2000
# Every client channel balances its calls over every address its target resolves to, one call to the next
# address in turn: behind a headless Service (dns:///encoder:8101) that is every ready pod, and pods added
# later once the name is resolved again (a closed connection makes gRPC resolve it again). gRPC's default,
# pick_first, would keep every call on the first address. A long-lived stream is one call: it stays on
# the pod it opened on until it breaks (docs/kubernetes.md, "How traffic reaches the pods").
LOAD_BALANCING = ("grpc.lb_policy_name", "round_robin")


def message_limits(max_message_bytes: int, read_slack: int = 1) -> list[tuple[str, int]]:
    """The largest message sent, and received (``read_slack`` times that: see
    :func:`service_common.server.start_server`); gRPC fails a call with a bigger one with RESOURCE_EXHAUSTED."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes * read_slack),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def client_options(
    max_message_bytes: int, reconnect_backoff_ms: int = DEFAULT_RECONNECT_BACKOFF_MS
) -> list[tuple[str, int | str]]:
    """Every client channel's options: the message limits, a reconnect backoff capped at
    ``reconnect_backoff_ms``, and round_robin over the target's addresses (see above)."""
    if reconnect_backoff_ms < INITIAL_RECONNECT_BACKOFF_MS:
        raise ValueError(f"reconnect_backoff_ms must be >= {INITIAL_RECONNECT_BACKOFF_MS}, got {reconnect_backoff_ms}")
    return [
        *message_limits(max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", reconnect_backoff_ms),
        ("grpc.min_reconnect_backoff_ms", MIN_CONNECT_TIMEOUT_MS),
        LOAD_BALANCING,
    ]
