"""Prometheus metrics every service exports (low-cardinality labels only)."""

from __future__ import annotations

import errno

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from service_common.errors import BindError

RPCS = Counter(
    "codedserve_rpcs_total",
    "RPCs, each once by the status its client sees (its gRPC name; a passed deadline and a cancel too); "
    "a stream's failed messages count too",
    ["method", "code"],
)
RPC_SECONDS = Histogram(
    "codedserve_rpc_seconds",
    "Handler time of successful RPCs",
    ["method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
RPCS_IN_FLIGHT = Gauge("codedserve_rpcs_in_flight", "RPCs whose handler is running, by method", ["method"])


_BIND_REASONS: dict[int | None, str] = {
    errno.EADDRINUSE: "in use by another process",
    errno.EADDRNOTAVAIL: "not an address of this host",
}


def serve_metrics(port: int | None, address: str = "127.0.0.1") -> None:
    """Expose /metrics on address:port (no-op when port is None; 0.0.0.0 in a pod, for Prometheus).
    Raises :class:`~service_common.errors.BindError` naming the address and ``--metrics-port`` when it
    cannot be bound, as a gRPC port does."""

    if port is None:
        return
    try:
        start_http_server(port, addr=address)
    except OSError as exc:
        host = f"[{address}]" if ":" in address else address
        reason = _BIND_REASONS.get(exc.errno, exc.strerror or str(exc))
        raise BindError(f"could not bind {host}:{port} (--metrics-port): {reason}") from None
