"""service_common.batches.answer_each: one bad request fails only itself, and a bug that fails every
request logs one traceback per period, not one per request."""

from __future__ import annotations

import logging

from service_common import batches
from service_common.errors import InvalidArgument
from service_common.logs import RateLimitedLog


def _answer(request: int) -> str:
    if request < 0:
        raise InvalidArgument(f"negative: {request}")
    if request == 0:
        raise ZeroDivisionError("a bug")
    return f"ok {request}"


def test_each_request_gets_its_own_answer_or_error():
    responses = batches.answer_each([1, -2, 0, 3], _answer, lambda message: f"failed: {message}")
    assert responses == ["ok 1", "failed: negative: -2", "failed: internal error; see the server log", "ok 3"]


def test_an_unexpected_error_on_every_request_logs_one_traceback_per_period(caplog, monkeypatch):
    monkeypatch.setattr(batches, "_unexpected", RateLimitedLog(batches.log))  # a period of its own
    caplog.set_level(logging.ERROR, logger=batches.__name__)
    for _ in range(50):
        batches.answer_each([0, 0, 0, 0], _answer, lambda message: message)
    records = [r for r in caplog.records if r.name == batches.__name__]
    assert len(records) == 1 and records[0].exc_info is not None
