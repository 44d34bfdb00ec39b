"""service_common.event_loop: each service runs on the loop its --event-loop names."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

import decoder_service.__main__ as decoder_main
import encoder_service.__main__ as encoder_main
import frontend.__main__ as frontend_main
from service_common import event_loop
from service_common.cli import common_config

ROUTED = {"CODEDSERVE_FRONTEND_ROUTES": "mnist_cnn=none"}  # the frontend has no default route
PARSERS = {
    "frontend": lambda env: frontend_main.parser({**ROUTED, **env}),
    "encoder": encoder_main.parser,
    "decoder": decoder_main.parser,
}


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_each_loop_runs_the_coroutine_on_its_own_kind_of_loop():
    assert issubclass(event_loop.run(_loop_type(), "uvloop"), uvloop.Loop)
    standard = event_loop.run(_loop_type(), "asyncio")
    assert not issubclass(standard, uvloop.Loop)
    assert issubclass(standard, asyncio.BaseEventLoop)


def test_an_unknown_loop_fails_naming_the_flag():
    coroutine = _loop_type()
    with pytest.raises(SystemExit, match="--event-loop must be one of"):
        event_loop.run(coroutine, "trio")
    coroutine.close()


def test_uvloop_missing_fails_naming_the_flag_and_the_way_out(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)  # import uvloop raises ImportError
    with pytest.raises(SystemExit, match="--event-loop asyncio"):
        event_loop.run(_loop_type(), "uvloop")


@pytest.mark.parametrize("service", sorted(PARSERS))
def test_the_flag_and_its_variable_reach_each_services_config(service):
    parse = PARSERS[service]
    build = frontend_main.config_from_args if service == "frontend" else common_config
    var = f"CODEDSERVE_{service.upper()}_EVENT_LOOP"
    assert build(parse({}).parse_args([])).event_loop == "uvloop"
    assert build(parse({var: "asyncio"}).parse_args([])).event_loop == "asyncio"
    assert build(parse({var: "asyncio"}).parse_args(["--event-loop", "uvloop"])).event_loop == "uvloop"
