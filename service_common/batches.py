"""Answering the requests of a batch RPC one by one, so one bad request fails only itself."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from service_common.errors import status_of

log = logging.getLogger(__name__)

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
            known = status_of(exc)
            if known is None:
                log.exception("request %d of a batch failed", i)
            responses.append(failed(known[1] if known else "internal error; see the server log"))
    return responses
