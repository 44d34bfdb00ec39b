"""Completion callbacks: how a Triton call's outcome travels back without a task or a future per layer.

A call on the data path is handed a :data:`Done` callback, called exactly once with ``(result, None)``
or ``(None, error)``, directly by whoever finishes the call (the batcher, when Triton answers). Each
layer (pool, dispatcher, coordinator) wraps the callback it was given instead of awaiting a future.
A callback is never called from inside the ``send`` that was given it (always on a later turn), so a
caller may send and then update its own state. Why callbacks: every task step or future callback is
one more callback the event loop runs per query, and in a grpc.aio server each costs more than its
Python (``bench.handler_cost`` counts them; bench/results/history-kserve.md). Callers that want to await use
:func:`awaited`.

The answer path. A call goes down ``ModelServer._infer`` -> ``Dispatcher.dispatch`` -> ``Pool.send`` ->
``Batcher.send``; its answer comes back up, one named callback per layer, each saying what that layer does
with it:

1. the batcher, when Triton answers the batch, hands each row its output (:func:`deliver`);
2. ``left_instance`` (:class:`TritonPool <frontend.transport.triton.TritonPool>`): the call has left its
   instance, whose in-flight count falls (a drained instance closes once it reaches 0);
3. ``timed`` (:class:`Dispatcher <frontend.dataplane.dispatch.Dispatcher>`): the call's latency feeds the
   hedging delay and its outcome the call metrics; for a replicated or hedged call,
   ``_Race._copy_answered`` lets the first success through;
4. ``ModelServer._call_answered`` (:mod:`frontend.dataplane.coordinator`): the outcome becomes the coding
   group's event (``arrived`` or ``failed``) and the group's actions run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

Result = TypeVar("Result")

# (result, None) on success, (None, error) on failure; called once.
Done = Callable[[Any, BaseException | None], None]

_running: set[asyncio.Task[Any]] = set()  # run_then's tasks: asyncio itself keeps only weak references


def deliver(done: Done, result: Any, error: BaseException | None) -> None:
    """Call ``done``; a callback that raises is a bug of its layer: logged, never lets it reach the caller
    (which may be answering the other items of a batch)."""
    try:
        done(result, error)
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("a completion callback raised")


def into_future(future: asyncio.Future[Result]) -> Done:
    """A callback that settles ``future`` (unless someone already did, e.g. cancelled it)."""

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    return settle


async def awaited(start: Callable[[Done], object]) -> Any:
    """Start a call with a callback that settles a future, and await it: the callback API, for callers
    that await (tests, warm-up, the coding clients)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    start(into_future(future))
    return await future


def run_then(coro: Coroutine[Any, Any, Any], done: Done) -> asyncio.Task[Any]:
    """Run ``coro`` in a task and hand its outcome to ``done`` (for the layers that must await, e.g. an
    injected delay)."""
    task = asyncio.ensure_future(coro)
    _running.add(task)

    def finished(task: asyncio.Task[Any]) -> None:
        _running.discard(task)
        if task.cancelled():
            deliver(done, None, asyncio.CancelledError())
        else:
            error = task.exception()
            deliver(done, None if error is not None else task.result(), error)

    task.add_done_callback(finished)
    return task
