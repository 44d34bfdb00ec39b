"""Answering the requests of a batch RPC one by one, so one bad request fails only itself; and a stream of
batches, message by message."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

from google.protobuf.message import DecodeError

from service_common.errors import InvalidArgument, status_name
from service_common.logs import RateLimitedLog

log = logging.getLogger(__name__)
# One traceback per kind of error and period: a bug that fails every request must not log one per request.
_unexpected = RateLimitedLog(log)

Request = TypeVar("Request")
Response = TypeVar("Response")


def answer_each(
    requests: Iterable[Request], answer: Callable[[Request], Response], failed: Callable[[str], Response]
) -> list[Response]:
    """``answer(request)`` for each, or ``failed(message)`` where it raised (the message the status
    would carry; an unexpected error is logged and reported as internal)."""
    responses = []
    for i, request in enumerate(requests):
        try:
            responses.append(answer(request))
        except Exception as exc:  # noqa: BLE001 - becomes this request's error, not the batch's
            known = status_name(exc) is not None
            if not known:
                cause = type(exc).__qualname__
                _unexpected.log(logging.ERROR, cause, "request %d of a batch failed", i, exc_info=exc)
            responses.append(failed(str(exc) if known else "internal error; see the server log"))
    return responses


async def answer_stream(
    batches: AsyncIterable[Any],
    answer: Callable[[Request], Response],
    failed: Callable[[str], Response],
    reply: Callable[[int, list[Response]], Any],
) -> AsyncIterator[Any]:
    """Each batch message of a stream answered in order, ``reply(batch.id, responses)``. A message that does
    not parse ends the stream with INVALID_ARGUMENT, once the ones before it are answered."""
    count = 0
    try:
        async for batch in batches:
            count += 1
            yield reply(batch.id, answer_each(batch.requests, answer, failed))
    except DecodeError as exc:
        raise InvalidArgument(
            f"stream message {count + 1} is not a well-formed batch (truncated, or of another type: {exc})"
        ) from exc
