"""frontend.app.health.judge: a route is down while a data slot's model has no ready instance, degraded
(answered uncoded) while its parity model, encoder or decoder is down, serving otherwise."""

from __future__ import annotations

import asyncio
import logging

from frontend.app.health import (
    CODED_HEALTH_PREFIX,
    DEGRADED,
    DOWN,
    ROUTE_HEALTH_PREFIX,
    SERVING,
    HealthMonitor,
    Probes,
    judge,
)
from frontend.core.routes import parse_route

PARM = parse_route("c=parm:k=2,encoder=add,parity_model=p")
NONE = parse_route("m=none")
SERVED = {"m": (0, 1), "c": (0, 1), "p": (2,)}
URLS = ("t0:8001", "t1:8001", "t2:8001")
UP = {"encoder": True, "decoder": True}


def _judge(ready, coders=UP, loaded=("m", "c")):
    return judge((NONE, PARM), loaded, SERVED, URLS, Probes(frozenset(ready), coders))


def _states(health):
    return {r.model: r.state for r in health.routes}


def test_one_ready_instance_per_data_model_is_enough_and_none_is_down_naming_the_instances():
    health = _judge({(1, "m"), (1, "c"), (2, "p")})
    assert health.serving and _states(health) == {"m": SERVING, "c": SERVING}
    health = _judge({(0, "c"), (2, "p")})
    assert health.serving and _states(health) == {"m": DOWN, "c": SERVING}  # c still answers: the pod is ready
    assert health.down() == {"m": "no ready Triton instance for m (t0:8001, t1:8001)"}
    assert not _judge({(2, "p")}).serving  # no route answers
    assert health.route("m").why == ("no ready Triton instance for m (t0:8001, t1:8001)",)
    assert ("triton", "t0:8001", False) in health.dependencies  # m is placed on it too, and is not ready


def test_a_coded_route_without_its_parity_model_or_a_coding_service_is_degraded_not_down():
    ready = {(0, "m"), (0, "c")}
    health = _judge(ready)
    assert health.serving and _states(health)["c"] == DEGRADED
    assert health.route("c").why == ("no ready Triton instance for p (t2:8001)",)
    for service in ("encoder", "decoder"):
        health = _judge(ready | {(2, "p")}, {**UP, service: False})
        assert health.serving and health.route("c").why == (f"the {service} is down",)
    assert _states(_judge({(0, "m"), (2, "p")}, {"encoder": False, "decoder": False}))["c"] == DOWN


def test_the_health_names_say_per_route_whether_it_answers_and_whether_it_is_coded():
    statuses = _judge({(0, "m"), (0, "c")}).statuses()
    assert statuses == {
        ROUTE_HEALTH_PREFIX + "m": True,
        ROUTE_HEALTH_PREFIX + "c": True,
        CODED_HEALTH_PREFIX + "c": False,
    }


def test_a_route_whose_signatures_are_not_read_is_down_saying_why():
    assert _states(_judge({(0, "m"), (0, "c"), (2, "p")}, loaded=("c",)))["m"] == DOWN
    why = "route m=none: its deployed model 'm' is not served by Triton at t0:8001: it is UNAVAILABLE: bad"
    health = judge((NONE, PARM), ("c",), SERVED, URLS, Probes(frozenset({(0, "c"), (2, "p")}), UP), None, {"m": why})
    assert health.serving and health.down() == {"m": why}


def test_the_monitor_publishes_and_logs_each_transition_once(caplog):
    seen = [{(0, "m"), (0, "c"), (2, "p")}, {(0, "m"), (0, "c"), (2, "p")}, {(0, "c"), (2, "p")}]
    published = []

    async def probe(timeout_s):
        return Probes(frozenset(seen.pop(0)), UP)

    async def publish(health):
        published.append(health.serving)

    monitor = HealthMonitor(probe, lambda p: judge((NONE, PARM), ("m", "c"), SERVED, URLS, p), publish, 0.1, 0.1)
    with caplog.at_level(logging.INFO, logger="frontend.app.health"):
        for _ in range(3):
            asyncio.run(monitor.check())
    assert published == [True, True] and monitor.serving and monitor.answerable("c") and not monitor.answerable("m")
    assert [r.getMessage() for r in caplog.records] == [
        "triton at t1:8001 is down",  # at the first probe: it never had the models
        "triton at t0:8001 is down",
        "route m is down: no ready Triton instance for m (t0:8001, t1:8001)",
    ]


def test_a_route_whose_code_rebuilds_every_query_without_a_data_model_is_degraded_not_down():
    """Collage's collage model answers every cell, COIN's coded model stands in for one member: with that
    data model gone, queries are answered by reconstructions, so the route stays answerable (and says
    why it is degraded); ParM with k = 2 rebuilds one query of two, so without its deployed model it is down."""
    collage = parse_route("g=collage:s=2")
    coin = parse_route("s=coin:members=a+b")
    served = {"g": (0,), collage.models["collage"]: (1,), "a": (0,), "b": (0,), coin.models["coin_coded"]: (1,)}
    served |= {"c": (0,), "p": (1,)}
    routes = (collage, coin, PARM)
    coded_up = frozenset({(1, collage.models["collage"]), (1, coin.models["coin_coded"]), (1, "p")})

    def states(ready, coders=UP):
        health = judge(routes, ("g", "s", "c"), served, URLS, Probes(frozenset(ready), coders))
        return {r.model: r for r in health.routes}, health

    routes_now, health = states(coded_up | {(0, "b")})  # Triton 0 stalled but for member b
    assert routes_now["g"].state == DEGRADED and "reconstruction alone" in routes_now["g"].why[-1]
    assert routes_now["s"].state == DEGRADED  # member a gone, the coded model stands in for it
    assert routes_now["c"].state == DOWN
    assert health.statuses()[ROUTE_HEALTH_PREFIX + "g"] and not health.statuses()[CODED_HEALTH_PREFIX + "g"]
    assert states(coded_up)[0]["s"].state == DOWN  # both members gone: one coded model rebuilds one
    assert states(coded_up, {"encoder": True, "decoder": False})[0]["g"].state == DOWN  # no decoder, no rebuild
    assert states({(0, "b")})[0]["g"].state == DOWN  # the collage model gone too
