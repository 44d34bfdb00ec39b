"""Frontend Prometheus metrics: how queries were answered and what coding cost."""

from collections.abc import Callable, Hashable
from typing import Any

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5)

ANSWERS = Counter(
    "codedserve_answers_total", "Queries answered, by model, scheme and source", ["model", "scheme", "source"]
)
FAILURES = Counter(
    "codedserve_query_failures_total",
    "Queries not answered, by model and status (its gRPC name, e.g. DEADLINE_EXCEEDED: errors.code_name)",
    ["model", "code"],
)
QUERY_SECONDS = Histogram(
    "codedserve_query_seconds", "Arrival to answer", ["model", "source"], buckets=_LATENCY_BUCKETS
)
WORKER_CALLS = Counter("codedserve_worker_calls_total", "Triton calls, by model and outcome", ["model", "outcome"])
LATE_DISCARDED = Counter(
    "codedserve_late_outputs_discarded_total",
    "Own outputs dropped: after their query was closed, or the slower of a resent call's two sends",
    ["model"],
)
DECODE_SECONDS = Histogram("codedserve_decode_seconds", "Decoder round trip", ["model"], buckets=_LATENCY_BUCKETS)
GROUPS = Counter("codedserve_groups_total", "Coding groups sealed, by how they filled", ["model", "fill"])
HEDGES = Counter("codedserve_hedged_calls_total", "Deployed calls that sent a hedge copy", ["model"])
HEDGES_WITHHELD = Counter(
    "codedserve_hedges_withheld_total",
    "Hedge copies not sent because the route's hedging budget was spent (the first copy was late or failed)",
    ["model"],
)
RESENDS = Counter(
    "codedserve_resent_calls_total", "Own calls sent again at the resend deadline (Collage's fallback)", ["model"]
)
RETRIES = Counter(
    "codedserve_retried_calls_total",
    "Own calls sent once more to another instance after failing in transport (their instance unreachable)",
    ["model"],
)
FAULTY_WORKERS = Counter("codedserve_faulty_workers_total", "Coded outputs judged Byzantine and dropped", ["model"])
CANCELLED_CALLS = Counter(
    "codedserve_cancelled_calls_total",
    "Triton calls given up once no query waited for them (--cancel-losers): dropped while queued in the "
    "frontend, or their ModelInfer cancelled on the way",
    ["model"],
)
TRITON_BATCH_ROWS = Histogram(
    "codedserve_triton_batch_rows",
    "Rows per ModelInfer the frontend sent (client-side batching)",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
)


class Bound(dict[Hashable, Any]):
    """Metric children by label values, bound on first use (``labels()`` per call costs more than the count)."""

    def __init__(self, bind: Callable[[Any], Any]) -> None:
        super().__init__()
        self._bind = bind

    def __missing__(self, key: Hashable) -> Any:
        self[key] = child = self._bind(key)
        return child
