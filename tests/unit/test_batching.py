"""Client-side batching against a fake send (one function): no delay when idle, queued rows leave
together, every row gets its own output or its batch's error, the row limit holds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from frontend.core.calls import Cancelled
from frontend.core.completion import into_future
from frontend.dataplane.batching import Batcher, Expired, row_batcher


class FakeTriton:
    """Answers each batch with its rows times 10 after ``delay_s``; fails batches containing ``bad``."""

    def __init__(self, delay_s: float = 0.02, bad: float | None = None):
        self.delay_s, self.bad, self.batches = delay_s, bad, []
        self.sent = asyncio.Event()  # set once a batch has been sent

    async def send(self, rows: np.ndarray) -> np.ndarray:
        self.batches.append(len(rows))
        self.sent.set()
        await asyncio.sleep(self.delay_s)
        if self.bad is not None and self.bad in rows:
            raise RuntimeError("batch failed")
        return rows * 10


def _row(v: float) -> np.ndarray:
    return np.array([[v]], np.float32)


async def test_an_idle_instance_gets_the_row_at_once():
    triton = FakeTriton(delay_s=0.0)
    batcher = row_batcher(triton.send, max_inflight=1, max_rows=64)
    loop = asyncio.get_running_loop()
    start = loop.time()
    out = await batcher.submit(_row(3))
    assert out.tolist() == [[30]] and triton.batches == [1] and loop.time() - start < 0.01


async def test_rows_that_queue_behind_a_call_in_flight_leave_as_one_batch():
    triton = FakeTriton()
    batcher = row_batcher(triton.send, max_inflight=1, max_rows=64)
    first = asyncio.ensure_future(batcher.submit(_row(0)))
    await asyncio.wait_for(triton.sent.wait(), timeout=1.0)  # the first call is out
    rest = [asyncio.ensure_future(batcher.submit(_row(v))) for v in (1, 2, 3)]
    outs = await asyncio.gather(first, *rest)
    assert triton.batches == [1, 3]
    assert [o.tolist() for o in outs] == [[[0]], [[10]], [[20]], [[30]]]


async def test_rows_submitted_together_leave_together_and_the_row_limit_holds():
    triton = FakeTriton(delay_s=0.0)
    batcher = row_batcher(triton.send, max_inflight=2, max_rows=4)
    outs = await asyncio.gather(*(batcher.submit(_row(v)) for v in range(10)))
    assert sum(triton.batches) == 10 and max(triton.batches) <= 4 and len(triton.batches) < 10
    assert [float(o[0, 0]) for o in outs] == [10.0 * v for v in range(10)]


async def test_a_failed_batch_fails_each_of_its_rows_and_the_batcher_goes_on():
    triton = FakeTriton(bad=2)
    batcher = row_batcher(triton.send, max_inflight=1, max_rows=64)
    first = asyncio.ensure_future(batcher.submit(_row(0)))
    await asyncio.sleep(0.005)
    queued = [asyncio.ensure_future(batcher.submit(_row(v))) for v in (1, 2)]
    assert (await first).tolist() == [[0]]
    for task in queued:
        with pytest.raises(RuntimeError, match="batch failed"):
            await task
    assert (await batcher.submit(_row(5))).tolist() == [[50]]


async def test_a_caller_that_stops_waiting_does_not_break_its_batch():
    triton = FakeTriton()
    batcher = row_batcher(triton.send, max_inflight=1, max_rows=64)
    first = asyncio.ensure_future(batcher.submit(_row(0)))
    await asyncio.sleep(0.005)
    loser, keeper = asyncio.ensure_future(batcher.submit(_row(1))), asyncio.ensure_future(batcher.submit(_row(2)))
    await asyncio.sleep(0)
    loser.cancel()
    assert (await keeper).tolist() == [[20]] and (await first).tolist() == [[0]]


async def test_any_call_with_a_batch_form_batches_the_same_way():
    sent = []

    async def send(items):
        sent.append(list(items))
        await asyncio.sleep(0.01)
        return [f"encoded {i}" for i in items]

    batcher = Batcher(send, max_inflight=1, max_size=8)
    first = asyncio.ensure_future(batcher.submit("g0"))
    await asyncio.sleep(0.002)
    results = await asyncio.gather(first, *(batcher.submit(f"g{i}") for i in (1, 2)))
    assert results == ["encoded g0", "encoded g1", "encoded g2"] and sent == [["g0"], ["g1", "g2"]]


async def test_rows_whose_deadline_passes_in_the_queue_are_never_sent():
    """While a call is out, two rows queue: one whose deadline passes before the call returns, one that
    still has time. Only the second is sent; the first fails with Expired, and the wait estimate
    counts only what is still queued."""
    gate, out = asyncio.Event(), asyncio.Event()
    sent: list[list[float]] = []

    async def send(rows: np.ndarray) -> np.ndarray:
        sent.append(rows.ravel().tolist())
        out.set()
        await gate.wait()
        return rows * 10

    batcher = row_batcher(send, max_inflight=1, max_rows=64)
    now = asyncio.get_running_loop().time()
    first = asyncio.ensure_future(batcher.submit(_row(0)))
    await out.wait()  # the first call is out
    expired = asyncio.ensure_future(batcher.submit(_row(1), deadline=now))  # already due when the slot frees
    patient = asyncio.ensure_future(batcher.submit(_row(2), deadline=now + 60))
    gate.set()
    assert (await first).tolist() == [[0]] and (await patient).tolist() == [[20]]
    with pytest.raises(Expired, match="after its deadline"):
        await expired
    assert sent == [[0.0], [2.0]] and batcher.wait_s() == batcher.call_s


async def test_completion_callbacks_are_called_once_each_after_send_returns_and_a_raising_one_spares_the_rest():
    triton = FakeTriton(delay_s=0.0, bad=9.0)
    batcher = row_batcher(triton.send, max_inflight=1, max_rows=64)
    outcomes: list[tuple[float, str]] = []

    def done_for(v: float):
        def done(out, error):
            outcomes.append((v, "error" if error is not None else str(float(out[0, 0]))))
            if v == 1.0:
                raise ValueError("a buggy callback")  # logged by deliver; the batch's other rows still hear

        return done

    for v in (1.0, 2.0, 3.0):
        batcher.send(_row(v), done_for(v))
    assert outcomes == []  # never called from inside send
    await asyncio.sleep(0.01)
    assert outcomes == [(1.0, "10.0"), (2.0, "20.0"), (3.0, "30.0")] and triton.batches == [3]
    for v in (4.0, 9.0):
        batcher.send(_row(v), done_for(v))
    await asyncio.sleep(0.01)
    assert outcomes[3:] == [(4.0, "error"), (9.0, "error")]  # one failed call: each of its rows told once


class Clock:
    """A clock the test moves by hand (the batcher's measure of call times and of their age)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class GatedSend:
    """A send that holds each call until the test releases it, the clock moved by ``took_s`` meanwhile."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.gate, self.out = clock, asyncio.Event(), asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.out.set()
        await self.gate.wait()
        self.gate.clear()
        return items

    async def call(self, batcher: Batcher[int, int], took_s: float) -> None:
        """One call that takes ``took_s`` on the test's clock."""
        self.out.clear()
        answer = asyncio.ensure_future(batcher.submit(1))
        await self.out.wait()
        self.clock.now += took_s
        self.gate.set()
        await answer


async def test_a_call_time_that_no_call_renews_is_forgotten_so_admission_cannot_refuse_for_good():
    """A stall leaves a 1 s call time behind; with no call returning for ``estimate_max_age_s`` (the
    queries it made look too slow were refused, and made none), the estimate is forgotten, and the next
    call alone sets it again."""
    clock = Clock()
    send = GatedSend(clock)
    batcher: Batcher[int, int] = Batcher(send, 1, 8, estimate_max_age_s=0.5, clock=clock)
    await send.call(batcher, 0.002)
    await send.call(batcher, 0.004)
    assert batcher.wait_s() == pytest.approx(0.8 * 0.002 + 0.2 * 0.004)  # renewed in time: averaged
    await send.call(batcher, 1.0)  # the stall: the average before it is 1 s old, so it starts again
    assert batcher.wait_s() == pytest.approx(1.0)
    clock.now += 0.49
    assert batcher.wait_s() == pytest.approx(1.0)  # still fresh: still what was measured
    clock.now += 0.02
    assert batcher.recent_call_s() is None and batcher.wait_s() == 0.0
    await send.call(batcher, 0.003)
    assert batcher.call_s == pytest.approx(0.003)  # measured afresh, not averaged with the forgotten one


async def test_a_call_still_out_makes_the_estimate_at_least_as_long_as_it_has_been_out():
    """While an instance stalls, the estimate grows with the oldest call out, fresh average or not."""
    clock = Clock()
    send = GatedSend(clock)
    batcher: Batcher[int, int] = Batcher(send, 1, 8, estimate_max_age_s=0.5, clock=clock)
    await send.call(batcher, 0.002)
    send.out.clear()
    stuck = asyncio.ensure_future(batcher.submit(1))
    await send.out.wait()
    assert batcher.recent_call_s() == pytest.approx(0.002)
    clock.now += 0.3
    assert batcher.recent_call_s() == pytest.approx(0.3)
    queued = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    assert batcher.wait_s() == pytest.approx(0.3 * (1 + 1))  # the call out, then one batch with the queued row
    clock.now += 5.0  # long after the average went stale: the call still out is what is known
    assert batcher.recent_call_s() == pytest.approx(5.3)
    send.gate.set()
    await stuck
    send.gate.set()
    await queued
    assert not batcher._started


def test_the_estimates_age_must_be_positive():
    with pytest.raises(ValueError, match="estimate_max_age_s"):
        Batcher(GatedSend(Clock()), 1, 8, estimate_max_age_s=0)


def _sent(batcher: Batcher, v: float):  # type: ignore[no-untyped-def]
    """Send one row: its result's future and what gives it up."""
    future = asyncio.get_running_loop().create_future()
    return future, batcher.send(_row(v), into_future(future))


@pytest.mark.parametrize("cancel", ["queued", "sent"])
async def test_cancel_losers_a_row_given_up_while_queued_is_never_sent(cancel):
    triton = FakeTriton()
    batcher = row_batcher(triton.send, max_inflight=1, max_rows=64, cancel=cancel)
    first, _ = _sent(batcher, 0)
    await asyncio.wait_for(triton.sent.wait(), timeout=1.0)  # the first call is out: what follows queues
    (dropped, give_up), (kept, _) = _sent(batcher, 1), _sent(batcher, 2)
    give_up()
    with pytest.raises(Cancelled):
        await dropped
    assert (await first).tolist() == [[0]] and (await kept).tolist() == [[20]]
    assert triton.batches == [1, 1]  # the given-up row left with nothing


async def test_cancel_losers_a_sent_call_is_cancelled_only_where_allowed_and_once_all_its_rows_gave_up():
    for cancel, cancelled in (("queued", False), ("sent", True)):
        triton = FakeTriton(delay_s=0.2)
        batcher = row_batcher(triton.send, max_inflight=1, max_rows=64, cancel=cancel)
        (a, give_up_a), (b, give_up_b) = _sent(batcher, 1), _sent(batcher, 2)
        await asyncio.wait_for(triton.sent.wait(), timeout=1.0)  # a and b left as one call
        give_up_a()
        give_up_b()
        if cancelled:
            for future in (a, b):
                with pytest.raises(Cancelled):
                    await asyncio.wait_for(future, 0.1)  # well before the call's 0.2 s
        else:
            assert [(await f).tolist() for f in (a, b)] == [[[10]], [[20]]]  # left to finish
        assert triton.batches == [2]


async def test_cancel_losers_by_default_nothing_can_be_given_up():
    batcher = row_batcher(FakeTriton(delay_s=0.0).send, max_inflight=1, max_rows=64)
    future, give_up = _sent(batcher, 1)
    assert give_up is None and (await future).tolist() == [[10]]
    with pytest.raises(ValueError, match="cancel must be one of"):
        row_batcher(FakeTriton().send, max_inflight=1, max_rows=64, cancel="always")
