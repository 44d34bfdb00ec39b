"""The emulated accelerator time's laws: each draws what its text says, grows with the batch as told, is
reproducible from its seed, and bad text is refused with the problem named (triton_local.service_time)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from triton_local import TritonConfig, TritonInstall, service_time
from triton_local.__main__ import main
from triton_local.server import server_env
from triton_local.service_time import COLLAGE_QUANTILES_MS, InstanceClock, parse, parse_law, render

DRAWS = 20_000


def _draws_ms(law_text: str, rows: int = 1, seed: int = 0, instance: str = "m_0_0") -> np.ndarray:
    clock = InstanceClock(parse_law(law_text), seed, "m", instance)
    return np.array([clock.draw_s(rows) for _ in range(DRAWS)]) * 1e3


def test_emulated_lognormal_has_the_median_and_p99_it_was_given():
    draws = _draws_ms("lognormal:median=20,p99=60")
    # Standard errors over 20k draws: 0.4% at the median, 1.3% at the 99th percentile; allow about 4 of them.
    assert np.median(draws) == pytest.approx(20.0, rel=0.02)
    assert np.quantile(draws, 0.99) == pytest.approx(60.0, rel=0.05)
    assert np.quantile(draws, 0.9) == pytest.approx(20.0 * 3 ** (1.2816 / 2.3263), rel=0.03)  # lognormal in between


def test_emulated_collage_law_draws_the_published_quantiles():
    draws = _draws_ms("collage")
    published = dict(COLLAGE_QUANTILES_MS)
    for p in (0.5, 0.9, 0.95):
        assert np.quantile(draws, p) == pytest.approx(published[p], rel=0.03), p
    assert np.mean(draws >= 610.0) == pytest.approx(0.022, abs=0.005)  # the straggler mode
    # The gap between the modes stays empty, but for the table's 0.01% ramp between 275 ms and 610 ms.
    assert np.mean((draws > 275.0) & (draws < 610.0)) < 1e-3


def test_emulated_samples_file_is_drawn_uniformly(tmp_path: Path):
    path = tmp_path / "measured.txt"
    path.write_text("# ms per line\n5\n10.5\n\n20  # a comment\n40\n")
    draws = _draws_ms(f"samples:path={path}")
    values, counts = np.unique(draws, return_counts=True)
    assert values.tolist() == [5.0, 10.5, 20.0, 40.0]
    assert counts / DRAWS == pytest.approx([0.25] * 4, abs=0.02)
    scaled = _draws_ms(f"samples:path={path},scale=4")
    assert np.unique(scaled).tolist() == [20.0, 42.0, 80.0, 160.0]
    assert render(parse(f"m=samples:path={path},scale=4")) == f"m=samples:path={path},scale=4.0"


def test_emulated_fixed_law_and_batch_growth():
    assert set(_draws_ms("fixed:ms=50", rows=8)) == {50.0}  # flat by default: a batch takes one draw
    assert set(_draws_ms("fixed:ms=50,batch=flat", rows=8)) == {50.0}
    np.testing.assert_allclose(_draws_ms("fixed:ms=10,batch=linear:per_row=0.1", rows=11), 20.0)
    one, five = (_draws_ms("lognormal:median=20,p99=60,batch=linear:per_row=0.25", rows=r) for r in (1, 5))
    np.testing.assert_allclose(five, 2.0 * one)  # same seed, same draws, each scaled by 1 + 0.25 * 4


def test_emulated_draws_repeat_with_the_seed_and_differ_across_instances_and_seeds():
    law = "lognormal:median=20,p99=60"
    np.testing.assert_array_equal(_draws_ms(law, seed=3), _draws_ms(law, seed=3))
    assert not np.array_equal(_draws_ms(law, seed=3), _draws_ms(law, seed=4))
    assert not np.array_equal(_draws_ms(law, instance="m_0_0"), _draws_ms(law, instance="m_0_1"))


def test_emulated_laws_are_chosen_per_model_with_a_default():
    laws = parse(" mnist_cnn = fixed:ms=5 ; *=collage ")
    assert service_time.law_for(laws, "mnist_cnn") == parse_law("fixed:ms=5")
    assert service_time.law_for(laws, "other") == parse_law("collage")
    assert service_time.law_for(parse("mnist_cnn=fixed:ms=5"), "other") is None
    assert parse("") == {}


def test_emulated_law_text_round_trips_with_samples_paths_made_absolute(tmp_path: Path, monkeypatch):
    (tmp_path / "s.txt").write_text("1\n2\n")
    monkeypatch.chdir(tmp_path)
    text = "a=samples:path=s.txt,batch=linear:per_row=0.5;b=lognormal:median=2,p99=9;*=fixed:ms=0"
    rendered = service_time.render(parse(text))
    assert f"samples:path={tmp_path / 's.txt'}" in rendered
    monkeypatch.chdir("/")
    assert parse(rendered) == parse(service_time.render(parse(rendered)))
    assert [str(law) for law in parse(rendered).values()] == [
        f"samples:path={tmp_path / 's.txt'},batch=linear:per_row=0.5",
        "lognormal:median=2.0,p99=9.0",
        "fixed:ms=0.0",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mnist_cnn", "expected MODEL=LAW"),
        ("mnist_cnn=", "expected MODEL=LAW"),
        ("m=fixed:ms=1;m=collage", "'m' has a law already"),
        ("m=pareto:alpha=2", "unknown law 'pareto'; known: collage, fixed, lognormal, samples"),
        ("m=lognormal:median=20", "lognormal needs p99"),
        ("m=lognormal:median=20,p99=10", "p99 >= median"),
        ("m=lognormal:median=0,p99=10", "median must be a finite number > 0"),
        ("m=lognormal:median=20,p99=60,p50=3", "lognormal takes median, p99, not p50"),
        ("m=fixed:ms=-1", "ms must be a finite number >= 0"),
        ("m=fixed:ms=nan", "ms must be a finite number"),
        ("m=fixed:ms=fast", "ms must be a number, got 'fast'"),
        ("m=fixed:ms=1,ms=2", "ms given twice"),
        ("m=fixed:ms", "expected KEY=VALUE, got 'ms'"),
        ("m=collage:ms=1", "collage takes no parameters, not ms"),
        ("m=fixed:ms=1,batch=quadratic", "batch growth is 'flat' or 'linear:per_row=X'"),
        ("m=fixed:ms=1,batch=linear:per_row=-0.1", "per_row must be a finite number >= 0"),
        ("m=batch=linear:per_row=0.1", "the law comes before batch="),
        ("m=samples:path=/no/such/file", "samples file /no/such/file: No such file or directory"),
    ],
)
def test_emulated_bad_law_text_is_refused_naming_the_problem(text: str, problem: str):
    with pytest.raises(service_time.ServiceTimeError, match=f"^'{text.split(';')[-1]}': .*") as caught:
        parse(text)
    assert problem in str(caught.value)


def test_emulated_samples_file_with_a_bad_line_or_none_is_refused(tmp_path: Path):
    bad, empty = tmp_path / "bad.txt", tmp_path / "empty.txt"
    bad.write_text("3\n4 ms\n")
    empty.write_text("# nothing measured\n")
    with pytest.raises(service_time.ServiceTimeError, match=r"bad.txt line 2: a sample must be a number, got '4 ms'"):
        parse(f"m=samples:path={bad}")
    with pytest.raises(service_time.ServiceTimeError, match="holds no samples"):
        parse(f"m=samples:path={empty}")


def test_emulated_hold_sleeps_until_the_drawn_time_since_the_start():
    clock = InstanceClock(parse_law("fixed:ms=60"), 0, "m", "m_0_0")
    started = time.monotonic()
    clock.hold(started, rows=1)
    assert time.monotonic() - started >= 0.060
    started = time.monotonic()
    clock.hold(started - 1.0, rows=1)  # the execution itself took longer than the draw: no sleep at all
    assert time.monotonic() - started < 0.030


def test_emulated_laws_reach_the_stubs_only_through_the_config(tmp_path: Path, monkeypatch):
    install = TritonInstall(*(tmp_path for _ in range(4)))
    monkeypatch.setenv(service_time.ENV_LAWS, "*=collage")  # left over in the launcher's environment
    monkeypatch.setenv(service_time.ENV_ACCELERATOR, "/elsewhere.lock")
    off = server_env(install, TritonConfig(tmp_path), accelerator=tmp_path / "a.lock")
    assert not {service_time.ENV_LAWS, service_time.ENV_SEED, service_time.ENV_ACCELERATOR} & set(off)
    config = TritonConfig(tmp_path, service_time="m=fixed:ms=50", service_time_seed=7)
    on = server_env(install, config, accelerator=tmp_path / "a.lock")
    assert (on[service_time.ENV_LAWS], on[service_time.ENV_SEED]) == ("m=fixed:ms=50.0", "7")
    assert on[service_time.ENV_ACCELERATOR] == str(tmp_path / "a.lock")
    with pytest.raises(ValueError, match="^service_time: 'm=fixed': fixed needs ms$"):
        TritonConfig(tmp_path, service_time="m=fixed")


def test_emulated_bad_flag_exits_naming_it(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--model-repository", str(tmp_path), "--service-time", "mnist_cnn=lognormal:median=20"])
    assert exited.value.code == 2
    assert "error: --service-time: 'mnist_cnn=lognormal:median=20': lognormal needs p99" in capsys.readouterr().err
