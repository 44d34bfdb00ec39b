"""``--max-concurrent-rpcs`` (``CODEDSERVE_FRONTEND_MAX_CONCURRENT_RPCS``): gRPC's bound on the RPCs open at
once on each data port, derived from ``--max-inflight`` when unset, off at 0, reaching FrontendConfig."""

from __future__ import annotations

import pytest

from frontend.__main__ import config_from_args, parser
from frontend.app.config import FrontendConfig
from frontend.core.routes import parse_route

VARIABLE = "CODEDSERVE_FRONTEND_MAX_CONCURRENT_RPCS"


def _bound(argv: list[str], environ: dict[str, str] | None = None) -> int | None:
    return config_from_args(parser(environ or {}).parse_args(["--route", "m=none", *argv])).rpc_bound


@pytest.mark.parametrize(
    ("argv", "environ", "bound"),
    [
        ([], {}, 256 + 64),  # derived: --max-inflight 256 plus 64 (a quarter would be less)
        (["--max-inflight", "1000"], {}, 1250),  # plus a quarter
        ([], {VARIABLE: "500"}, 500),
        (["--max-concurrent-rpcs", "40"], {VARIABLE: "500"}, 40),  # the flag wins over the variable
        ([], {VARIABLE: "0"}, None),  # off
        (["--max-concurrent-rpcs", "0"], {VARIABLE: "500"}, None),
    ],
)
def test_the_flag_and_its_variable_set_the_bound_each_data_port_gets(argv, environ, bound):
    assert _bound(argv, environ) == bound


def test_a_bad_bound_fails_fast_naming_the_setting():
    with pytest.raises(SystemExit, match=VARIABLE):
        parser({VARIABLE: "lots"})
    with pytest.raises(SystemExit, match="max_concurrent_rpcs must be >= 0"):
        _bound(["--max-concurrent-rpcs", "-1"])


def test_a_config_built_in_code_derives_the_bound_as_the_command_line_does():
    config = FrontendConfig("127.0.0.1:0", ("t:1",), "e", "d", (parse_route("m=none"),), max_inflight=100)
    assert config.rpc_bound == 164 and config.rpc_bound == _bound(["--max-inflight", "100"])
