"""Every flag of every service is also a CODEDSERVE_* variable, named by one rule, shown in --help."""

from __future__ import annotations

import argparse
import re

import pytest

import decoder_service.__main__ as decoder_main
import encoder_service.__main__ as encoder_main
import frontend.__main__ as frontend_main
from service_common.cli import SHARED_SCHEME_MODULES, common_config, env_name

PARSERS = {"frontend": frontend_main.parser, "encoder": encoder_main.parser, "decoder": decoder_main.parser}
ENV_IN_HELP = re.compile(r"\[env (CODEDSERVE_[A-Z0-9_]+);")


def _options(service: str) -> list[argparse.Action]:
    return [a for a in PARSERS[service]({})._actions if not isinstance(a, argparse._HelpAction)]


def _variable(action: argparse.Action) -> str:
    match = ENV_IN_HELP.search(action.help or "")
    assert match, f"{action.option_strings[0]} names no variable in its help: {action.help!r}"
    return match.group(1)


def _sample(action: argparse.Action) -> tuple[str, object]:
    """A variable's value, and what the flag must then parse to (never its default)."""
    if action.nargs == 0:  # a switch
        return ("0", False) if action.default else ("true", True)
    if action.choices:
        choice = next(c for c in action.choices if c != action.default)
        return str(choice), choice
    if action.type in (int, float):
        value = action.type(action.default or 0) + 3
        return str(value), value
    if isinstance(action, argparse._AppendAction) or action.__class__.__name__ == "_Repeat":
        return "a=x;b=y", ["a=x", "b=y"]
    return "10.1.2.3:9", "10.1.2.3:9"


@pytest.mark.parametrize("service", sorted(PARSERS))
def test_every_option_names_its_variable_by_one_rule(service):
    for action in _options(service):
        var, flag = _variable(action), action.option_strings[0]
        repeatable = action.__class__.__name__ == "_Repeat"
        expected = SHARED_SCHEME_MODULES if flag == "--scheme-module" else env_name(service, flag, repeatable)
        assert var == expected, flag
        assert "default:" in (action.help or ""), flag


@pytest.mark.parametrize("service", sorted(PARSERS))
def test_setting_each_variable_changes_the_parsed_value(service):
    baseline = PARSERS[service]({}).parse_args([])
    for action in _options(service):
        if action.dest == "config":  # names a file to read: tests/unit/test_config_file.py
            continue
        raw, expected = _sample(action)
        parsed = PARSERS[service]({_variable(action): raw}).parse_args([])
        assert getattr(parsed, action.dest) == expected != getattr(baseline, action.dest), action.option_strings[0]


def test_help_shows_the_real_default_and_the_variable():
    text = frontend_main.parser({}).format_help()
    flat = " ".join(text.split())
    assert "CODEDSERVE_FRONTEND_DEFAULT_DEADLINE_S; default: 5.0" in flat
    assert "CODEDSERVE_FRONTEND_TRITON_DNS; default: unset" in flat
    assert "CODEDSERVE_FRONTEND_ENCODER_URL; default: 127.0.0.1:8101" in flat


def test_a_flag_wins_over_its_variable_and_a_repeated_flag_replaces_the_list():
    env = {"CODEDSERVE_FRONTEND_MAX_INFLIGHT": "9", "CODEDSERVE_FRONTEND_ROUTES": "a=none;b=none"}
    args = frontend_main.parser(env).parse_args(["--max-inflight", "3", "--route", "c=none"])
    assert (args.max_inflight, args.route) == (3, ["c=none"])
    args = frontend_main.parser({"CODEDSERVE_FRONTEND_WARM_UP": "0"}).parse_args(["--warm-up"])
    assert args.warm_up is True


def test_the_encoder_address_variable_means_only_the_encoders_bind_address():
    env = {"CODEDSERVE_ENCODER_ADDRESS": "0.0.0.0:8101", "CODEDSERVE_FRONTEND_ENCODER_URL": "encoder:8101"}
    assert encoder_main.parser(env).parse_args([]).address == "0.0.0.0:8101"
    assert frontend_main.parser(env).parse_args([]).encoder_url == "encoder:8101"


def test_the_old_service_less_names_are_not_read():
    env = {"CODEDSERVE_ROUTES": "a=none", "CODEDSERVE_TRITON_URLS": "t:1", "CODEDSERVE_STRAGGLER_TIMEOUT_MS": "9"}
    args = frontend_main.parser(env).parse_args([])
    assert (args.route, args.triton_url, args.straggler_timeout_ms) == ([], [], 20.0)


def test_a_bad_variable_fails_fast_with_its_name():
    with pytest.raises(SystemExit, match="CODEDSERVE_FRONTEND_MAX_INFLIGHT='many'"):
        frontend_main.parser({"CODEDSERVE_FRONTEND_MAX_INFLIGHT": "many"})
    with pytest.raises(SystemExit, match="CODEDSERVE_FRONTEND_CODING='remote'"):
        frontend_main.parser({"CODEDSERVE_FRONTEND_CODING": "remote"})


def test_a_frontend_configured_by_variables_alone():
    env = {
        "CODEDSERVE_FRONTEND_TRITON_DNS": "triton.serving.svc:8001",
        "CODEDSERVE_FRONTEND_ROUTES": "linear=parm:k=2,encoder=add,parity_model=linear_p",
        "CODEDSERVE_FRONTEND_STRAGGLER_TIMEOUT_MS": "40",
        "CODEDSERVE_FRONTEND_DNS_REFRESH_S": "2",
    }
    config = frontend_main.config_from_args(frontend_main.parser(env).parse_args([]))
    assert (config.triton_dns, config.triton_urls, config.dns_refresh_s) == (
        "triton.serving.svc:8001",
        ("triton.serving.svc:8001",),
        2.0,
    )
    assert config.routes[0].k == 2 and config.deadlines.straggler_ms == 40.0


@pytest.mark.parametrize("service", sorted(PARSERS))
def test_the_health_address_flag_and_variable_reach_each_services_config(service):
    """Off by default; the variable sets it, the flag wins over the variable."""
    routed = {"CODEDSERVE_FRONTEND_ROUTES": "mnist_cnn=none"} if service == "frontend" else {}
    parse = lambda env: PARSERS[service]({**routed, **env})  # noqa: E731
    build = frontend_main.config_from_args if service == "frontend" else common_config
    var = f"CODEDSERVE_{service.upper()}_HEALTH_ADDRESS"
    assert build(parse({}).parse_args([])).health_address is None
    assert build(parse({var: "0.0.0.0:8110"}).parse_args([])).health_address == "0.0.0.0:8110"
    flagged = parse({var: "0.0.0.0:8110"}).parse_args(["--health-address", "127.0.0.1:9"])
    assert build(flagged).health_address == "127.0.0.1:9"
    assert f"env {var}; default: unset" in " ".join(parse({}).format_help().split())
