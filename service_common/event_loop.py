"""Which asyncio event loop a service runs on: the standard library's, or uvloop's.

Every query crosses the loop several times (each gRPC completion, each callback), and grpc.aio runs
its own callbacks through it too, so the loop's own cost per turn is paid many times per query.
uvloop implements the same loop on libuv in C; grpc.aio runs on it unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

LOOPS = ("uvloop", "asyncio")
DEFAULT_LOOP = "uvloop"

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], loop: str = DEFAULT_LOOP) -> T:
    """``asyncio.run(main)`` on the named loop. SystemExit naming the flag if uvloop is asked for and missing."""
    if loop not in LOOPS:
        raise SystemExit(f"--event-loop must be one of {LOOPS}, got {loop!r}")
    if loop == "asyncio":
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        main.close()
        raise SystemExit(
            "--event-loop uvloop: the uvloop package is not installed (pip install uvloop, or --event-loop asyncio)"
        ) from None
    return uvloop.run(main)
