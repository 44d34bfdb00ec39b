"""Warnings of an outage are rate-limited: at most one per period per cause, the held-back ones counted
in the next; the coding clients log an unreachable encoder that way (it was one line per coding group:
968 in 10 s)."""

from __future__ import annotations

import logging

import numpy as np

from frontend.core.calls import CodingServiceError
from frontend.core.routes import parse_route
from frontend.transport.coding_clients import CodingClients
from service_common.logs import RateLimitedLog
from triton_local.server import free_ports

log = logging.getLogger("tests.rate_limited")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _messages(caplog, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name and r.levelno == level]


def test_one_warning_per_period_per_cause_with_the_count_of_those_held_back(caplog):
    clock = Clock()
    limited = RateLimitedLog(log, every_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=log.name):
        for t in (0.0, 1.0, 2.0, 9.9):
            clock.now = t
            limited.warning("UNAVAILABLE", "encoder down: %s", t)
        clock.now = 5.0
        limited.warning("DEADLINE_EXCEEDED", "encoder slow")  # another cause: its own first warning
        clock.now = 10.0
        limited.warning("UNAVAILABLE", "encoder down: %s", 10)
        limited.warning("UNAVAILABLE", "encoder down: %s", 10.5)
    assert _messages(caplog) == [
        "encoder down: 0.0",
        "encoder slow",
        "encoder down: 10 (and 3 more like it in the 10 s before)",
    ]


def test_when_the_cause_clears_it_says_so_once_with_the_count_held_back(caplog):
    clock = Clock()
    limited = RateLimitedLog(log, every_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=log.name):
        limited.resolved("never failed")  # nothing warned: nothing said
        for _ in range(4):
            limited.warning("UNAVAILABLE", "encoder down")
        limited.resolved("encoder answers again")
        limited.resolved("encoder answers again")
        clock.now = 10.0
        limited.warning("UNAVAILABLE", "encoder down")  # a new outage past the period is warned at once
    assert _messages(caplog, logging.INFO) == ["encoder answers again (3 failures not logged)"]
    assert _messages(caplog) == ["encoder down", "encoder down"]


def test_a_cause_that_flaps_logs_one_warning_and_one_recovery_per_period_not_a_pair_per_flip(caplog):
    """Tiny client deadlines make every other encode time out: it was a WARNING and an INFO per flip."""
    clock = Clock()
    limited = RateLimitedLog(log, every_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=log.name):
        for i in range(100):  # 0.0 .. 9.9 s
            clock.now = i / 10
            limited.warning("DEADLINE_EXCEEDED", "encoder slow")
            limited.resolved("encoder answers again")
        clock.now = 10.0
        limited.warning("DEADLINE_EXCEEDED", "encoder slow")
        limited.resolved("encoder answers again")
    assert _messages(caplog) == ["encoder slow", "encoder slow (and 99 more like it in the 10 s before)"]
    assert _messages(caplog, logging.INFO) == [
        "encoder answers again (0 failures not logged)",
        "encoder answers again (0 failures not logged)",
    ]


async def test_an_unreachable_encoder_is_warned_once_not_once_per_group(caplog):
    (port,) = free_ports(1)  # nothing listens there
    clients = CodingClients(f"127.0.0.1:{port}", f"127.0.0.1:{port}", 1 << 20)
    await clients.start()
    route = parse_route("m=parm:k=2,encoder=add")
    group = np.zeros((2, 1, 4, 4), np.float32)
    failures = 0
    try:
        with caplog.at_level(logging.INFO, logger="frontend.transport.coding_clients"):
            for _ in range(20):
                try:
                    await clients.encode(route, group, 2.0)
                except CodingServiceError:
                    failures += 1
    finally:
        await clients.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "frontend.transport.coding_clients"]
    assert failures == 20
    assert len(warnings) == 1 and f"encoder at 127.0.0.1:{port}" in warnings[0] and "UNAVAILABLE" in warnings[0]
