"""A model is ready only when every model its route needs is: a parity model still loading elsewhere must
keep the route not-ready (a regression: the deployed signature alone used to mark it ready)."""

import numpy as np
import pytest

from frontend.config import parse_route
from frontend.coordinator import ModelServer
from frontend.workers import ModelSignature, WorkerError

SIG = ModelSignature("input", "logits", (1, 28, 28), np.dtype("float32"))


class FakePool:
    def __init__(self, ready: set[str]):
        self.ready = ready

    async def signature(self, model):
        if model not in self.ready:
            raise WorkerError(f"model {model!r} is not ready")
        return SIG


async def test_a_route_is_not_ready_until_its_parity_model_is():
    route = parse_route("mnist_cnn=parm:k=2,encoder=add")
    deployed, parity = FakePool({"mnist_cnn"}), FakePool(set())
    server = ModelServer(route, None, deployed, parity, None, 0.01, 0.01)  # type: ignore[arg-type]
    with pytest.raises(WorkerError):
        await server.load()
    assert server.signature is None  # still not ready: the app retries the whole load
    parity.ready.add(route.parity_model)
    await server.load()
    assert server.signature == SIG
