"""A model is ready only when every model its route needs is: a parity model still loading elsewhere must
keep the route not-ready (a regression: the deployed signature alone used to mark it ready)."""

import numpy as np
import pytest

from frontend.core.calls import ModelSignature, WorkerError
from frontend.core.placement import Placer
from frontend.core.routes import RouteError, parse_route
from frontend.dataplane.coordinator import ModelServer

SIG = ModelSignature("input", "logits", (1, 28, 28), np.dtype("float32"), (10,))


class FakePool:
    """Instance 0 serves the deployed model, instance 1 the parity model, once ``ready`` says so."""

    def __init__(self, ready: set[str], output_shapes: dict[str, tuple[int, ...]] | None = None, shape=(1, 28, 28)):
        self.ready, self.output_shapes, self.asked, self.shape = ready, output_shapes or {}, [], shape

    async def signature(self, model, instance):
        self.asked.append((model, instance))
        if model not in self.ready:
            raise WorkerError(f"model {model!r} is not ready")
        return ModelSignature("input", "logits", self.shape, np.dtype("float32"), self.output_shapes.get(model, (10,)))


def _server(route, pool):
    placer = Placer({m: (i,) for i, m in enumerate(route.models.values())})
    return ModelServer(route, pool, placer, None, None, None)  # type: ignore[arg-type]


async def test_a_route_is_not_ready_until_its_parity_model_is():
    route = parse_route("mnist_cnn=parm:k=2,encoder=add")
    pool = FakePool({"mnist_cnn"})
    server = _server(route, pool)
    with pytest.raises(WorkerError):
        await server.load()
    assert server.signature is None  # still not ready: the app retries the whole load
    pool.ready.add(route.parity_model)
    await server.load()
    assert server.signature == SIG
    assert (route.parity_model, 1) in pool.asked  # asked on the instance that serves it


async def test_a_coded_model_whose_output_shape_the_scheme_does_not_expect_keeps_the_route_not_ready():
    route = parse_route("mnist_cnn=parm:k=2,encoder=add")
    server = _server(route, FakePool({"mnist_cnn", route.parity_model}, {route.parity_model: (4, 10)}))
    with pytest.raises(RouteError, match=r"answers shape \[4, 10\] but parm expects \[10\]"):
        await server.load()
    assert server.signature is None


async def test_a_scheme_that_cannot_code_the_deployed_models_queries_is_a_route_error_naming_why():
    """Collage s = 3 needs at least 3x3 pixels: a 2x2 model is refused at start-up, not served and failed."""
    route = parse_route("tiny_cnn=collage:s=3")
    pool = FakePool(set(route.models.values()), {route.models["collage"]: (9, 10)}, shape=(1, 2, 2))
    server = _server(route, pool)
    with pytest.raises(RouteError, match=r"route tiny_cnn=collage: collage s=3 needs H >= 3 and W >= 3, got 2x2"):
        await server.load()
    assert server.signature is None
