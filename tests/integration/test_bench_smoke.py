"""A seconds-long run of the comparison harness: it works end to end and its numbers add up."""

from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio

from bench import compare, faults, netns
from export import spec
from tests.integration import linear_models
from triton_local import TritonConfig, TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_compare_runs_every_scheme_and_its_counts_are_consistent(tmp_path):
    repo = tmp_path / "repo"
    linear_models.write_repository(repo)
    began = time.monotonic()
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
    wall_s = time.monotonic() - began
    by = {r.summary.name: r for r in runs}
    assert list(by) == list(compare.DEFAULT_SCHEMES)
    for run in runs:
        s = run.summary
        assert s.queries == 120, s.name
        assert s.answered + sum(s.errors.values()) == s.queries  # every query answered or failed, once
        assert len(run.latencies_ms) == 120, s.name  # the intervals' samples: both rounds' queries, merged
        assert max(f.p999_ms for f in run.rounds) <= s.max_ms, s.name  # each round's figures are of these queries
    # the machine's busy CPU, in seconds: more than none, and no more than every core for the whole run
    assert all(run.cpu_s > 0 for run in runs)
    assert sum(run.cpu_s for run in runs) <= (os.cpu_count() or 1) * wall_s
    for run in runs:
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


def test_collage_profile_holds_every_instance_for_its_service_time(tmp_path):
    by = _smoke(tmp_path, "collage", "direct,none,parm")
    assert list(by) == ["direct", "none", "parm"]  # the Tritons apply it: a client straight to one sees it too
    for name, run in by.items():  # no execution is shorter than the distribution's minimum
        assert run.summary.p50_ms >= 83.6, name
    # A query gets its own answer or its rebuild from partner + parity, whichever is first; with random
    # service times of about 140 ms the rebuild often wins.
    assert by["parm"].summary.reconstructed > 0


async def _sent_10_ms_apart(url: str) -> tuple[float, float]:
    """Two one-row requests to ``url``'s linear model, the second 10 ms after the first; when each answer
    came, in seconds from the first send."""
    x = np.zeros((1, *spec.IMAGE_SHAPE), np.float32)
    inputs = [triton_aio.InferInput(spec.INPUT_NAME, list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    client = triton_aio.InferenceServerClient(url)
    sent = time.monotonic()

    async def one(delay_s: float) -> float:
        await asyncio.sleep(delay_s)
        await client.infer(linear_models.DEPLOYED, inputs)
        return time.monotonic() - sent

    try:
        first, second = await asyncio.gather(one(0.0), one(0.010))
    finally:
        await client.close()
    return first, second


def test_emulated_collage_profile_makes_a_request_wait_for_the_busy_instance(tmp_path):
    """The profile's law held inside Triton: a request that reaches a busy instance waits for it, then takes
    its own draw (>= 83.6 ms). Slept after the answer, as the frontend once did, the second answer would
    come at least 73.6 ms after the first only when its own draw beat the first's by that much."""
    linear_models.write_repository(tmp_path / "repo", ks=())
    config = TritonConfig(
        tmp_path / "repo", models=(linear_models.DEPLOYED,), service_time=faults.SERVICE_TIMES["collage"]
    )
    with TritonServer(config) as server:
        asyncio.run(_sent_10_ms_apart(server.grpc_url))  # warm: a session's first run is slower
        for _ in range(3):
            first, second = asyncio.run(_sent_10_ms_apart(server.grpc_url))
            assert first >= 0.0836, first
            assert second >= first + 0.0836, (first, second)
