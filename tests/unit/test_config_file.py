"""The frontend's --config file: what it sets, what overrides it, and one message per mistake, each naming the
file, the key and the problem (frontend.app.config_file, service_common.config_file)."""

from __future__ import annotations

import pytest

import frontend.__main__ as frontend_main

ROUTE = """
[[route]]
model = "mnist_cnn"
scheme = "parm"
k = 2
options = { encoder = "concat" }
"""


@pytest.fixture
def write(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "frontend.toml"
        path.write_text(text)
        return str(path)

    return write


def _config(argv: list[str], environ: dict[str, str] | None = None):
    return frontend_main.config_from_args(frontend_main.parse(argv, environ or {}))


def _error(argv: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SystemExit) as exit_:
        _config(argv, environ)
    return str(exit_.value)


def test_the_file_sets_flags_and_routes_each_with_its_own_deadlines(write):
    path = write(
        'triton-url = ["t0:8001", "t1:8001"]\nstraggler-timeout-ms = 30\nadaptive-fill = true\n'
        + ROUTE
        + "straggler-timeout-ms = 50\nfill-timeout-ms = 2\n"
        + '[[route]]\nmodel = "fashion_cnn"\nscheme = "hedge"\noptions = { delay_ms = 8 }\n'
    )
    config = _config(["--config", path])
    assert config.triton_urls == ("t0:8001", "t1:8001") and config.deadlines.straggler_ms == 30.0
    coded, hedged = config.routes
    assert (coded.model, coded.scheme, coded.k, coded.param_dict) == ("mnist_cnn", "parm", 2, {"encoder": "concat"})
    assert coded.deadlines is not None
    assert (coded.deadlines.straggler_ms, coded.deadlines.fill_ms, coded.deadlines.adaptive_fill) == (50.0, 2.0, True)
    assert hedged.deadlines is None and hedged.dispatch.hedge_delay_ms == 8.0


def test_variables_override_the_file_and_flags_override_both(write):
    path = write("max-inflight = 10\nmax-inflight-per-client = 5\n" + ROUTE)
    environ = {"CODEDSERVE_FRONTEND_CONFIG": path, "CODEDSERVE_FRONTEND_MAX_INFLIGHT": "20"}
    config = _config(["--max-inflight-per-client", "7"], environ)
    assert (config.max_inflight, config.max_inflight_per_client) == (20, 7)
    assert _config(["--config", path]).max_inflight == 10


def test_a_route_flag_or_variable_replaces_the_files_routes(write):
    path = write(ROUTE)
    assert [r.model for r in _config(["--config", path, "--route", "other=none"]).routes] == ["other"]
    environ = {"CODEDSERVE_FRONTEND_ROUTES": "a=none;b=none"}
    assert [r.model for r in _config(["--config", path], environ).routes] == ["a", "b"]


def test_a_route_may_be_a_route_string(write):
    (route,) = _config(["--config", write('route = ["mnist_cnn=replicate:copies=3"]\n')]).routes
    assert route.dispatch.copies == 3


def test_no_route_anywhere_names_the_missing_setting():
    message = _error([])
    assert message.startswith("frontend: bad configuration: no route: give --route MODEL=SCHEME")
    assert (
        "CODEDSERVE_FRONTEND_ROUTES" in message and "[[route]]" in message and "CODEDSERVE_FRONTEND_CONFIG" in message
    )


def test_an_unknown_key_is_named_with_the_closest_one(write):
    path = write("straggler-timeout = 20\n" + ROUTE)
    assert _error(["--config", path]) == (
        f"frontend: bad configuration: {path}: straggler-timeout: unknown setting "
        "(did you mean 'straggler-timeout-ms'?)"
    )


def test_a_value_of_the_wrong_type_is_named(write):
    path = write('max-inflight = "many"\n' + ROUTE)
    assert _error(["--config", path]) == (
        f"frontend: bad configuration: {path}: max-inflight: expected an integer, got a string 'many'"
    )


def test_a_list_setting_given_one_string_is_named(write):
    path = write('triton-url = "t0:8001"\n' + ROUTE)
    assert f"{path}: triton-url: expected a list, e.g. ['t0:8001'], got a string" in _error(["--config", path])


def test_a_value_outside_its_choices_is_named(write):
    path = write('coding = "remote"\n' + ROUTE)
    assert f"{path}: coding: expected one of ['services', 'local'], got 'remote'" in _error(["--config", path])


def test_a_bad_scheme_is_named_with_the_known_ones(write):
    path = write(ROUTE.replace('"parm"', '"parn"'))
    message = _error(["--config", path])
    assert f"{path}: route[0].scheme: unknown scheme 'parn'; known: [" in message and "'parm'" in message


def test_a_route_without_a_model_is_named(write):
    path = write('[[route]]\nscheme = "none"\n')
    assert _error(["--config", path]).endswith(f"{path}: route[0]: missing key 'model'")


def test_an_unknown_route_key_is_named(write):
    path = write(ROUTE + "encoder = 'concat'\n")
    assert f"{path}: route[0].encoder: unknown route key" in _error(["--config", path])


def test_an_option_the_scheme_does_not_take_is_named_with_the_route(write):
    path = write('[[route]]\nmodel = "m"\nscheme = "none"\nk = 2\n')
    assert _error(["--config", path]).endswith(f"{path}: route[0] (m): none takes no options, got ['k']")


def test_a_bad_deadline_of_a_route_is_named(write):
    path = write(ROUTE + "straggler-timeout-ms = -5\n")
    message = _error(["--config", path])
    assert f"{path}: route[0] (mnist_cnn): bad deadlines: straggler_ms must be positive, got -5.0" in message


def test_a_deadline_of_the_wrong_type_in_a_route_is_named(write):
    path = write(ROUTE + 'fill-timeout-ms = "5"\n')
    assert f"{path}: route[0].fill-timeout-ms: expected a number, got a string '5'" in _error(["--config", path])


def test_a_file_that_is_not_toml_is_named_with_the_line(write):
    path = write("straggler-timeout-ms = \n")
    message = _error(["--config", path])
    assert message.startswith(f"frontend: bad configuration: {path}: not valid TOML: ") and "line 1" in message


def test_a_missing_file_is_named():
    message = _error(["--config", "/nonexistent/frontend.toml"])
    assert (
        message == "frontend: bad configuration: /nonexistent/frontend.toml: cannot read it: No such file or directory"
    )


def test_the_file_cannot_name_another_file(write):
    path = write('config = "other.toml"\n' + ROUTE)
    assert f"{path}: config: unknown setting" in _error(["--config", path])
