"""``--cancel-losers`` through the real Triton pool against stand-ins of Triton on the wire
(tests/grpc/fake_triton.py), whose calls are held at their gate: with the setting, the losing copy of a
hedged call is cancelled once the hedge answered, rows of calls given up while queued never reach Triton,
and a batched call is cancelled only once every call it carries was given up; without it (the default, and
always for the local Triton 2.51, which crashes on a cancelled call) nothing is ever cancelled."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import REGISTRY

from frontend.__main__ import config_from_args, parse
from frontend.core.calls import CallInfo, Cancelled
from frontend.core.completion import into_future
from frontend.core.placement import Placer
from frontend.core.routes import Dispatch
from frontend.dataplane.dispatch import Dispatcher
from frontend.transport.triton import TritonPool
from tests.grpc.fake_triton import MODEL, ROW, FakeTriton

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
async def tritons() -> AsyncIterator[tuple[FakeTriton, FakeTriton]]:
    slow, fast = await FakeTriton().start(), await FakeTriton().start()
    slow.gate.clear()  # instance 0 holds every call until the test opens it
    try:
        yield slow, fast
    finally:
        await slow.stop()
        await fast.stop()


async def _pool(tritons: tuple[FakeTriton, ...], cancel_losers: bool, transport: str = "unary") -> TritonPool:
    pool = TritonPool(tuple(t.url for t in tritons), 10.0, 1 << 22, transport=transport, cancel_losers=cancel_losers)
    await pool.start()
    return pool


def _cancelled_total() -> float:
    return REGISTRY.get_sample_value("codedserve_cancelled_calls_total", {"model": MODEL}) or 0.0


def _send(pool: TritonPool, signature, value: float) -> tuple[asyncio.Future[np.ndarray], object]:  # type: ignore[no-untyped-def]
    """One row of ``value`` on instance 0: its answer's future and what gives it up (None: nothing)."""
    future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
    cancel = pool.send(CallInfo(MODEL, 0), np.full((1, ROW), value, np.float32), signature, into_future(future))
    return future, cancel


async def _hedged(pool: TritonPool) -> np.ndarray:
    dispatcher = Dispatcher(pool, Placer({MODEL: (0, 1)}), Dispatch("hedge", hedge_delay_ms=20))
    signature = await pool.signature(MODEL, 1)
    out: np.ndarray = await asyncio.wait_for(
        dispatcher.call(CallInfo(MODEL, 0), np.ones((1, ROW), np.float32), signature), 5.0
    )
    return out


async def test_cancel_losers_cancels_the_slow_hedged_copy_once_the_hedge_answered(tritons):
    slow, fast = tritons
    pool = await _pool(tritons, cancel_losers=True)
    before = _cancelled_total()
    try:
        out = await _hedged(pool)
        assert out[0, 0] == ROW and fast.rows == 1  # the hedge answered
        await asyncio.wait_for(slow.cancel_seen.wait(), 5.0)
        assert slow.cancelled == 1 and slow.rows == 0
        assert _cancelled_total() - before == 1
        assert await asyncio.wait_for(pool.drain(0), 5.0) == 0  # the cancelled call left the instance's count
    finally:
        await pool.close()


async def test_cancel_losers_off_lets_the_slow_hedged_copy_finish(tritons):
    slow, fast = tritons
    pool = await _pool(tritons, cancel_losers=False)
    before = _cancelled_total()
    try:
        out = await _hedged(pool)
        assert out[0, 0] == ROW and fast.rows == 1
        await slow.held(1)  # the loser is still out, not cancelled
        slow.gate.set()
        assert await asyncio.wait_for(pool.drain(0), 5.0) == 1  # it was awaited to completion
        assert slow.rows == 1 and slow.cancelled == 0 and _cancelled_total() == before
    finally:
        await pool.close()


@pytest.mark.parametrize("transport", ["unary", "stream"])
async def test_cancel_losers_drops_queued_rows_of_answered_queries(tritons, transport):
    slow, _ = tritons
    pool = await _pool(tritons, cancel_losers=True, transport=transport)
    try:
        signature = await pool.signature(MODEL, 0)
        first, _ = _send(pool, signature, 1.0)
        await slow.held(1)  # the one call of the batcher is out: what follows queues
        queued, cancel = _send(pool, signature, 2.0)
        assert cancel is not None
        cancel()
        with pytest.raises(Cancelled):
            await asyncio.wait_for(queued, 5.0)
        slow.gate.set()
        await asyncio.wait_for(first, 5.0)
        assert slow.rows == 1 and slow.cancelled == 0  # the dropped row never reached Triton
    finally:
        await pool.close()


async def test_cancel_losers_off_sends_queued_rows(tritons):
    slow, _ = tritons
    pool = await _pool(tritons, cancel_losers=False)
    try:
        signature = await pool.signature(MODEL, 0)
        first, _ = _send(pool, signature, 1.0)
        await slow.held(1)
        queued, cancel = _send(pool, signature, 2.0)
        assert cancel is None  # nothing can be given up
        slow.gate.set()
        await asyncio.wait_for(asyncio.gather(first, queued), 5.0)
        assert slow.rows == 2
    finally:
        await pool.close()


async def test_cancel_losers_cancels_a_batched_call_only_once_every_call_in_it_was_given_up(tritons):
    slow, _ = tritons
    pool = await _pool(tritons, cancel_losers=True)
    try:
        signature = await pool.signature(MODEL, 0)
        blocker, _ = _send(pool, signature, 0.0)
        await slow.held(1)
        (a, cancel_a), (b, cancel_b) = _send(pool, signature, 1.0), _send(pool, signature, 2.0)
        slow.gate.set()  # the blocker returns; a and b leave as one ModelInfer of two rows
        await asyncio.wait_for(blocker, 5.0)
        slow.gate.clear()
        await slow.held(2)
        cancel_a()  # b still waits for the call: it is not cancelled
        assert not slow.cancel_seen.is_set()
        cancel_b()
        await asyncio.wait_for(slow.cancel_seen.wait(), 5.0)
        for future in (a, b):
            with pytest.raises(Cancelled):
                await asyncio.wait_for(future, 5.0)
        assert slow.cancelled == 1 and await asyncio.wait_for(pool.drain(0), 5.0) == 0
    finally:
        await pool.close()


async def test_cancel_losers_stream_transport_never_cancels_a_sent_call(tritons):
    slow, _ = tritons
    pool = await _pool(tritons, cancel_losers=True, transport="stream")
    try:
        signature = await pool.signature(MODEL, 0)
        sent, cancel = _send(pool, signature, 1.0)
        await slow.held(1)
        assert cancel is not None
        cancel()  # a message on the stream cannot be cancelled: it is left to finish
        slow.gate.set()
        out = await asyncio.wait_for(sent, 5.0)
        assert out[0, 0] == ROW and slow.cancelled == 0
    finally:
        await pool.close()


def test_cancel_losers_is_off_by_default_and_never_on_for_the_local_triton():
    args = parse(["--route", f"{MODEL}=hedge", "--triton-url", "127.0.0.1:8001"], environ={})
    assert config_from_args(args).cancel_losers is False
    on = parse(["--route", f"{MODEL}=hedge"], environ={"CODEDSERVE_FRONTEND_CANCEL_LOSERS": "true"})
    assert config_from_args(on).cancel_losers is True
    # What starts the local tritonserver 2.51 (the integration tests, the benchmarks, make) never turns it on.
    files = [ROOT / "Makefile", *(ROOT / "tests" / "integration").rglob("*.py"), *(ROOT / "bench").rglob("*")]
    for path in files:
        if path.is_file() and path.suffix in ("", ".py", ".sh", ".toml", ".env", ".yaml"):
            text = path.read_text(errors="ignore")
            for turned_on in ("cancel-losers", "CANCEL_LOSERS", "cancel_losers=True"):
                assert turned_on not in text, f"{path} turns --cancel-losers on"
