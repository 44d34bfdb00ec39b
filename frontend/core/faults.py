"""What a fault is: the plan of injected faults a frontend is started with, and one fault a query or a worker is
given. Injecting them is the dataplane's :mod:`frontend.dataplane.injection`, wired in at assembly only."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FaultPlan:
    """Injected faults on deployed-model calls, for demos and tests (never on in production).

    A share of calls is delayed by a uniform [delay_min_ms, delay_max_ms], another share fails.
    ``allow_metadata`` lets a request's ``codedserve-fault`` metadata (``delay=MS``, ``fail`` or ``corrupt``)
    force a fault on that one query: how integration tests make exactly one straggler.
    """

    delay_share: float = 0.0
    delay_min_ms: float = 50.0
    delay_max_ms: float = 200.0
    fail_share: float = 0.0
    seed: int = 0
    allow_metadata: bool = False
    # Faults pinned to workers of every group, e.g. ((3, "delay=3000"), (5, "corrupt")): how tests make one
    # straggling and one lying ApproxIFER worker, or one slow COIN member. Workers are numbered data slots
    # first, then coded slots (coded slots only when non-systematic), as in coding.berrut.coded_nodes.
    workers: tuple[tuple[int, str], ...] = ()

    @property
    def active(self) -> bool:
        """Anything to inject: only then does the frontend wrap its Triton pool (frontend.dataplane.injection)."""
        return bool(self.delay_share or self.fail_share or self.allow_metadata or self.workers)

    def __post_init__(self) -> None:
        for name in ("delay_share", "fail_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.delay_share + self.fail_share > 1.0:
            raise ValueError("delay_share + fail_share must not exceed 1")
        if not 0 <= self.delay_min_ms <= self.delay_max_ms:
            raise ValueError(f"need 0 <= delay_min_ms <= delay_max_ms, got {self.delay_min_ms}, {self.delay_max_ms}")


@dataclass(frozen=True)
class Fault:
    delay_s: float = 0.0
    fail: bool = False
    corrupt: bool = False  # a lying (Byzantine) worker: the output comes back sign-flipped


def parse_fault_metadata(value: str) -> Fault:
    """``delay=MS``, ``fail`` or ``corrupt`` (the ``codedserve-fault`` metadata, and --inject-worker-faults)."""
    if value in ("fail", "corrupt"):
        return Fault(fail=value == "fail", corrupt=value == "corrupt")
    key, _, ms = value.partition("=")
    if key == "delay":
        return Fault(delay_s=float(ms) / 1e3)
    raise ValueError(f"fault {value!r}: expected 'delay=MS', 'fail' or 'corrupt'")
