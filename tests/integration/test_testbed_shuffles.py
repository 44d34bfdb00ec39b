"""The testbed under ParM's background shuffles at tiny scale: every instance a tritonserver in its own
network namespace behind a shaped link, whole transfers cross those links during each scheme's window, and
every query sent is answered."""

from __future__ import annotations

import json

import pytest

from bench.netns import unavailable
from bench.testbed.__main__ import main
from tests.integration import linear_models

_WHY = unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(_WHY is not None, reason=f"network namespaces: {_WHY}"),
]


def test_tiny_parm_testbed_under_shuffles_answers_every_query_while_transfers_run(tmp_path):
    repo = tmp_path / "repo"
    linear_models.write_repository(repo)
    out = tmp_path / "out"
    bed, _ = main(
        ["--profile", "parm", "--scale", "tiny", "--faults", "shuffles", "--schemes", "none,parm",
         "--model-repository", str(repo), "--model", linear_models.DEPLOYED,
         "--parity-model", linear_models.parity_name(2), "--encoder", "add", "--out", str(out)]
    )  # fmt: skip
    report = json.loads((out / "testbed-parm-tiny.json").read_text())
    assert report["testbed"]["faults"] == ["shuffles"] and report["testbed"]["stalls"] is None
    assert report["testbed"]["shuffles"]["concurrent"] == 1  # 4 deployed // 3
    assert report["testbed"]["shuffles"]["link"]["rate"] == "1000mbit"  # time scale 1
    for s in report["schemes"]:
        assert s["sent"] == int(bed.rate * bed.duration_s) == s["answered"], s["name"]
        assert s["shuffle_events"] > 0 and s["stall_events"] == 0, s["name"]
    faults = next(line for line in (out / "testbed-parm-tiny.md").read_text().splitlines() if "- Faults:" in line)
    assert "inbound link of 1000mbit" in faults
    assert f"Whole transfers per scheme: none {report['schemes'][0]['shuffle_events']}, parm" in faults
