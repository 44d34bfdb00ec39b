"""A bounded chaos run (bench.chaos) against the real stack: two tritonservers, the encoder, the decoder
and a frontend, all real processes. During 24 s of load (unary calls and two long-lived streams), on a
seeded plan, a Triton is SIGKILLed and restarted, one is SIGSTOPped, both are SIGSTOPped together for
2.5 s, and the encoder and the decoder are each SIGKILLed and restarted. The exactly-once ledger must
hold: every accepted query answered once (its own output, a reconstruction, or an error status), none
lost, none twice; every answer right; and health NOT_SERVING while no Triton can answer, SERVING after.
The longer variant is ``python -m bench.chaos``; the soak, ``python -m bench.soak``.

And clients whose deadline is a few calls long (50 ms) on an uncoded route, through a 1 s stall of
every Triton: the share of their queries answered OK is back to its level before the stall within 1 s
of the stall's end (an estimate of Triton's wait that only a returning call updates would refuse them
for good, as no refused query makes a call).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bench.chaos_run import RunConfig, ShortDeadlines, chaos_stack, run, run_short_deadlines
from bench.faults import FAULT_KINDS, plan
from export import spec
from tests.integration import linear_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _clear_winners(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries whose top logit leads the next by 0.05 or more, so a reconstruction's float rounding
    (about 1e-5 here) cannot change the label; and those labels."""
    x = np.random.default_rng(seed).random((4 * n, *spec.IMAGE_SHAPE), dtype=np.float32)
    logits = np.sort(linear_models.reference(x), axis=1)
    keep = logits[:, -1] - logits[:, -2] >= 0.05
    x = x[keep][:n]
    return x, linear_models.reference(x).argmax(axis=1)


def test_a_chaos_run_keeps_every_promise(tmp_path):
    repo = tmp_path / "repo"
    models = linear_models.write_repository(repo)
    route = f"{linear_models.DEPLOYED}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}"
    images, labels = _clear_winners(300, seed=5)
    duration = 24.0
    faults = plan(seed=11, duration_s=duration, every_s=4.0, tritons=2)
    assert sorted(f.kind for f in faults) == sorted(FAULT_KINDS)  # each kind once
    cfg = RunConfig(linear_models.DEPLOYED, images, labels, rate=40.0, duration_s=duration, streams=2)
    flags = ["--default-deadline-s", "3"]
    with chaos_stack(models, {"frontend": route}, repo, flags, log_dir=tmp_path / "logs") as stack:
        result = asyncio.run(run(stack, "frontend", cfg, faults))

    s = result.ledger.summary()
    assert result.ledger.holds(), s
    assert s["sent"] == int(40.0 * duration) and s["wrong"] == 0, s
    assert s["answered"] >= 0.75 * s["accepted"], s  # the load went through, not only errors
    assert len(result.events) == len(faults)

    stalled = next(e for e in result.events if e.fault.kind == "stall_tritons")
    # With every Triton stopped, the frontend cannot answer: health says so within about a second...
    assert "NOT_SERVING" in result.health.status_between(stalled.began_s + 1.5, stalled.ended_s), (
        result.health.transitions
    )
    # ...and SERVING again once they are back, to the end of the run.
    assert result.health.transitions[-1].status == "SERVING", result.health.transitions


def test_short_deadline_clients_are_answered_again_within_a_second_of_a_stalls_end(tmp_path):
    repo = tmp_path / "repo"
    models = linear_models.write_repository(repo)
    images, _ = _clear_winners(64, seed=7)
    phase = ShortDeadlines(linear_models.DEPLOYED, images, rate=50.0, deadline_s=0.05, duration_s=8.0, stall_s=1.0)
    routes = {"frontend": f"{linear_models.DEPLOYED}=none"}
    with chaos_stack(models, routes, repo, log_dir=tmp_path / "logs") as stack:
        result = asyncio.run(run_short_deadlines(stack, "frontend", phase))

    report = result.report()
    assert [e.fault.kind for e in result.events] == ["stall_tritons"], result.events  # one stall, at 3 s
    (r,) = result.recoveries()
    assert r.level is not None, report  # the queries were answered before the stall (an OK share >= 50%)
    assert r.recovery_s is not None and r.recovery_s <= 1.0, (
        f"OK share not back within 1 s of the stall's end: {r.verdict()}; "
        f"answers {report['codes']}, e.g. {report['examples']}; OK share per second {report['ok_share_per_s']}"
    )
