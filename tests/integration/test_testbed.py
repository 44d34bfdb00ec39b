"""The testbed end to end at tiny scale: ParM's layout (4 deployed + 2 parity instances, each a tritonserver
with emulated time) against its baselines in one run; the report has every part, and every query sent is
accounted for."""

from __future__ import annotations

import json

import pytest

from bench.testbed.__main__ import main
from tests.integration import linear_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCHEMES = ["none", "equal", "hedge", "replicate", "hedge_q50_b10", "parm", "parm_eager"]


def test_tiny_parm_testbed_reports_every_scheme_and_accounts_for_every_query(tmp_path):
    repo = tmp_path / "repo"
    linear_models.write_repository(repo)
    out = tmp_path / "out"
    bed, rows = main(
        ["--profile", "parm", "--scale", "tiny", "--model-repository", str(repo), "--model", linear_models.DEPLOYED,
         "--parity-model", linear_models.parity_name(2), "--encoder", "add", "--out", str(out)]
    )  # fmt: skip
    sent = int(bed.rate * bed.duration_s)
    assert (bed.deployed, bed.instance_count) == (4, 8)  # 4 deployed, 2 parity, replication's 2 more
    report = json.loads((out / "testbed-parm-tiny.json").read_text())
    assert [s["name"] for s in report["schemes"]] == [r.name for r in rows] == SCHEMES
    for s in report["schemes"]:
        assert s["sent"] == sent == s["answered"] + sum(s["errors"].values()), s["name"]
        assert set(s["figures"]) == {"p50", "p99", "p99.9", "gap"}, s["name"]
        assert len(s["utilisation"]) == s["instances"], s["name"]
        assert s["stall_events"] > 0, s["name"]  # every instance stalls on its own schedule
    by = {s["name"]: s for s in report["schemes"]}
    assert [by[n]["instances"] for n in SCHEMES] == [4, 6, 4, 8, 4, 6, 6]
    assert by["none"]["calls_per_query"] == by["equal"]["calls_per_query"] == 1.0
    assert by["replicate"]["extra_load"] == 1.0  # both copies run to completion, never cancelled
    assert 1.5 <= by["parm"]["calls_per_query"] <= 2.0  # a parity per group of 2; a sealed partial group pays more
    assert by["parm"]["reconstructed"] <= by["parm"]["answered"]
    assert 1.5 <= by["parm_eager"]["calls_per_query"] <= 2.0  # eager decoding sends what the deadline policy does
    # The budget binds: a p50 delay would hedge about half the calls; the token bucket allows a tenth (its
    # initial tokens let a few more through in a 2 s run).
    assert by["hedge_q50_b10"]["extra_load"] <= 0.2
    # Triton's compute time holds the emulated 10 ms: `none` offers its 4 instances 60 q/s x 10 ms / 4 = 15%.
    assert by["none"]["mean_utilisation"] == pytest.approx(bed.utilisation, abs=0.05)
    assert isinstance(report["cpu_flagged"], bool) and 0 < report["cpu"]["machine"] <= 1
    assert "**CPU**" in (out / "testbed-parm-tiny.md").read_text()
    for name in ("testbed-parm-tiny-frontier.png", "testbed-parm-tiny-latency.npz"):
        assert (out / name).stat().st_size > 0
