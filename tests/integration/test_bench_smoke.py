"""A seconds-long run of the comparison harness: it works end to end and its numbers add up."""

from __future__ import annotations

import json

import pytest

from bench import compare, netns
from tests.integration import linear_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_compare_runs_every_scheme_and_its_counts_are_consistent(tmp_path):
    repo = tmp_path / "repo"
    linear_models.write_repository(repo)
    runs = compare.main(
        [
            "--model-repository",
            str(repo),
            "--model",
            linear_models.DEPLOYED,
            "--parity-model",
            linear_models.parity_name(2),
            "--encoder",
            "add",
            "--rate",
            "60",
            "--duration",
            "2",
            "--profile",
            "stalls",
            "--rounds",
            "2",  # interleaved: each scheme's 120 queries in two segments, merged back by index
            "--tag",
            "smoke",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    by = {r.summary.name: r for r in runs}
    assert list(by) == list(compare.DEFAULT_SCHEMES)
    for run in runs:
        s = run.summary
        assert s.queries == 120, s.name
        assert s.answered + sum(s.errors.values()) == s.queries  # every query answered or failed, once
        assert s.p50_ms <= s.p99_ms <= s.p999_ms <= s.max_ms
        assert s.reconstructed <= s.answered
        assert run.cpu_s > 0  # the machine did work while the scheme ran
        assert len(run.rounds) == 2  # one set of figures per round, the CPU split between them
        assert sum(f.cpu_ms_per_query * 60 for f in run.rounds) == pytest.approx(1e3 * run.cpu_s)
    for name in ("direct", "none", "equal"):
        assert by[name].triton_calls == 120  # Triton's own count: exactly one call per query
    assert by["replicate"].triton_calls == 240  # losers run to completion, never cancelled
    assert 120 <= by["hedge2"].triton_calls <= 240
    for name in ("parm", "parm_local"):  # k=2: one parity per group; padded partial groups add more
        assert 180 <= by[name].triton_calls <= 240, name
    # K=2 on N=3 workers: 3 calls per full group of 2; a group sealed with 1 query still sends all 3.
    assert 180 <= by["approxifer"].triton_calls <= 360
    assert by["approxifer"].summary.reconstructed == by["approxifer"].summary.answered  # every answer decoded
    assert all(by[n].summary.reconstructed == 0 for n in by if n not in compare.CODED)
    report = json.loads((tmp_path / "out" / "smoke.json").read_text())
    assert [r["name"] for r in report["runs"]] == list(compare.DEFAULT_SCHEMES)
    assert all(len(r["rounds"]) == 2 for r in report["runs"])
    assert "Per round" in (tmp_path / "out" / "smoke.md").read_text()
    for name in ("smoke.md", "smoke-tail.png", "smoke-gap.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def _smoke(tmp_path, profile: str, schemes: str) -> dict[str, compare.SchemeRun]:
    repo = tmp_path / "repo"
    linear_models.write_repository(repo)
    runs = compare.main(
        ["--model-repository", str(repo), "--model", linear_models.DEPLOYED,
         "--parity-model", linear_models.parity_name(2), "--encoder", "add", "--rate", "60", "--duration", "2",
         "--profile", profile, "--schemes", schemes, "--tag", profile, "--out", str(tmp_path / "out")]
    )  # fmt: skip
    for run in runs:
        s = run.summary
        assert s.answered + sum(s.errors.values()) == s.queries == 120, s.name
    return {r.summary.name: r for r in runs}


_NO_NETNS = netns.unavailable()


@pytest.mark.skipif(_NO_NETNS is not None, reason=f"network namespaces: {_NO_NETNS}")
def test_network_profile_runs_the_workers_in_namespaces(tmp_path):
    by = _smoke(tmp_path, "netdelay", "direct,none,parm")
    assert list(by) == ["direct", "none", "parm"]
    assert all(r.fault_events >= 1 for r in by.values())  # links were held during every run
    assert by["direct"].triton_calls == by["none"].triton_calls == 120  # the namespaced Tritons counted every call


def test_collage_profile_gives_every_worker_call_its_service_time(tmp_path):
    by = _smoke(tmp_path, "collage", "direct,none,parm")
    assert list(by) == ["none", "parm"]  # direct skipped: the frontends apply this profile
    assert by["none"].summary.p50_ms >= 83.6  # no call is faster than the distribution's minimum
    # A query gets its own answer or its rebuild from partner + parity, whichever is first; with random
    # service times of about 140 ms the rebuild often wins.
    assert by["parm"].summary.reconstructed > 0
