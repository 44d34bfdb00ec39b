"""A ledger of the batched path: many queries through the real coordinator, groups, placement, dispatcher
and Triton pool batchers, with only the wire to Triton faked (random delays and failures). Every query is
answered exactly once, correctly (an exact linear model makes reconstructions exact) or with a clear
status; no group puts two slots on one instance; calls really travelled in batches."""

from __future__ import annotations

import asyncio
import random
import re
from collections import defaultdict

import numpy as np
import pytest

from frontend.core.calls import CallInfo, ModelSignature, WorkerError
from frontend.core.deadlines import DeadlinePolicy, RouteDeadlines
from frontend.core.placement import Placer
from frontend.core.routes import Dispatch, parse_route
from frontend.dataplane.coordinator import ModelServer
from frontend.dataplane.dispatch import Dispatcher
from frontend.transport.coding_clients import LocalCoding
from frontend.transport.triton import TritonPool
from service_common.errors import Unavailable

W = np.random.default_rng(0).standard_normal((16, 10)).astype(np.float32)  # F(x) = flatten(x) @ W, no bias
SIG = ModelSignature("input", "logits", (1, 4, 4), np.dtype("float32"), (10,), 64)


class LedgerPool(TritonPool):
    """The real pool (batchers included) over three fake instances: each ModelInfer waits a random
    delay and fails with probability ``fail``; the parity model of the addition encoder is F itself."""

    def __init__(self, seed: int, fail: float):
        super().__init__(("t0", "t1", "t2"), 30.0, 1 << 20, batch_inflight=1)
        self.rng, self.fail = random.Random(seed), fail
        self.calls: list[CallInfo] = []
        self.batch_rows: list[int] = []
        self.failed_calls: dict[int, int] = defaultdict(int)  # group -> its calls that failed

    async def start(self) -> None:
        return None

    async def signature(self, model, instance):
        return SIG

    def send(self, call, batch, signature, done):
        self.calls.append(call)

        def counted(out, error):
            if isinstance(error, WorkerError):
                self.failed_calls[call.group] += 1
            done(out, error)

        super().send(call, batch, signature, counted)

    async def _model_infer(self, instance, model, rows, signature):
        self.batch_rows.append(len(rows))
        await asyncio.sleep(self.rng.choice([0.0005, 0.001, 0.002, 0.03]))
        if self.rng.random() < self.fail:
            raise WorkerError(f"injected failure on instance {instance}")
        return rows.reshape(len(rows), -1) @ W


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_query_is_answered_once_and_right_and_placement_holds(seed):
    route = parse_route("m=parm:k=2,encoder=add,parity_model=p")
    pool = LedgerPool(seed, fail=0.05)
    placer = Placer({"m": (0, 1, 2), "p": (0, 1, 2)})
    dispatcher = Dispatcher(pool, placer, Dispatch())
    policy = DeadlinePolicy(straggler_ms=5, straggler_quantile=0.9, straggler_floor_ms=1, fill_ms=3)
    server = ModelServer(route, pool, placer, dispatcher, LocalCoding(), RouteDeadlines(policy, dispatcher.latency, 2))
    await server.load()
    rng = np.random.default_rng(seed)
    queries = rng.random((300, 1, 4, 4), dtype=np.float32)
    loop_errors: list[dict] = []  # a second answer to one query would surface here (InvalidStateError)
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))

    async def one(i: int):
        await asyncio.sleep(i * 0.0005 + float(rng.exponential(0.0005)))
        return await server.classify(queries[i], timeout_s=2.0)

    results = await asyncio.gather(*(one(i) for i in range(len(queries))), return_exceptions=True)
    await server.drain(5.0)

    for i, result in enumerate(results):
        if isinstance(result, BaseException):
            # Lost only when its group lost two calls (a failed batch takes every row in it).
            assert isinstance(result, Unavailable), repr(result)
            group = int(re.search(r"coding group (\d+)", str(result)).group(1))
            assert pool.failed_calls[group] >= 2, f"query {i} lost though group {group} lost one call"
            continue
        np.testing.assert_allclose(result.logits, queries[i].reshape(-1) @ W, rtol=1e-4, atol=1e-4)
    assert any(not isinstance(r, BaseException) and r.reconstructed for r in results)
    assert loop_errors == []
    by_group = defaultdict(list)
    for call in pool.calls:
        by_group[call.group].append(call.instance)
    assert all(len(set(instances)) == len(instances) for instances in by_group.values()), "placement broken"
    assert max(pool.batch_rows) > 1, "no call travelled in a batch"
