"""The chaos run's bookkeeping: the ledger that checks exactly-once, and the seeded fault plan."""

from __future__ import annotations

import pytest

from bench.chaos_run import ChaosResult, HealthWatch, Ledger
from bench.faults import FAULT_KINDS, Fault, FaultEvent, plan


def test_a_ledger_of_one_answer_per_query_holds_and_counts_by_status():
    ledger = Ledger()
    for qid in ("a", "b", "c", "d"):
        ledger.send(qid)
    ledger.answer("a", "OK")
    ledger.answer("b", "OK", reconstructed=True)
    ledger.answer("c", "UNAVAILABLE")
    ledger.answer("d", "RESOURCE_EXHAUSTED")
    s = ledger.summary()
    assert ledger.holds()
    assert (s["sent"], s["accepted"], s["answered"], s["reconstructed"], s["errored"], s["rejected"]) == (
        4,
        3,
        2,
        1,
        1,
        1,
    )
    assert s["codes"] == {"OK": 2, "RESOURCE_EXHAUSTED": 1, "UNAVAILABLE": 1}


def test_a_query_never_answered_is_lost_and_breaks_the_promise():
    ledger = Ledger()
    ledger.send("a")
    ledger.send("b")
    ledger.answer("a", "OK")
    assert not ledger.holds()
    assert ledger.summary()["lost"] == 1 and ledger.summary()["lost_ids"] == ["b"]


def test_a_query_answered_twice_is_a_duplicate_and_breaks_the_promise():
    ledger = Ledger()
    ledger.send("a")
    ledger.answer("a", "OK")
    ledger.answer("a", "UNAVAILABLE")
    assert not ledger.holds()
    assert ledger.summary()["duplicates"] == 1 and ledger.summary()["codes"] == {"OK": 1}


def test_an_answer_for_an_id_never_sent_is_a_stray_and_breaks_the_promise():
    ledger = Ledger()
    ledger.send("a")
    ledger.answer("a", "OK")
    ledger.answer("zz", "OK")
    assert not ledger.holds() and ledger.summary()["strays"] == 1


def test_sending_one_id_twice_is_refused_as_the_harness_could_not_tell_the_answers_apart():
    ledger = Ledger()
    ledger.send("a")
    with pytest.raises(ValueError, match="query id 'a' sent twice"):
        ledger.send("a")


def test_a_wrong_label_is_counted_but_is_an_answer():
    ledger = Ledger()
    ledger.send("a")
    ledger.answer("a", "OK", right=False)
    assert ledger.holds() and ledger.summary()["wrong"] == 1


def test_the_plan_visits_every_kind_before_repeating_and_leaves_the_end_quiet():
    faults = plan(seed=3, duration_s=53, every_s=5, tritons=2)
    assert [f.at_s for f in faults] == [2.5 + 5 * i for i in range(10)]
    assert sorted(f.kind for f in faults[:5]) == sorted(FAULT_KINDS)
    assert sorted(f.kind for f in faults[5:]) == sorted(FAULT_KINDS)
    assert all(f.at_s + 5 <= 53 for f in faults) and all(f.target in (0, 1) for f in faults)
    assert faults == plan(seed=3, duration_s=53, every_s=5, tritons=2)  # seeded
    assert plan(seed=3, duration_s=53, every_s=0, tritons=2) == []


def test_the_plan_refuses_an_unknown_kind_naming_it():
    with pytest.raises(ValueError, match="unknown fault kinds \\['reboot'\\]"):
        plan(seed=0, duration_s=10, every_s=1, tritons=1, kinds=("kill_triton", "reboot"))


def test_the_first_message_of_each_error_status_is_kept_as_its_example():
    ledger = Ledger()
    for qid in "abc":
        ledger.send(qid)
    ledger.answer("a", "RESOURCE_EXHAUSTED", detail="frontend overloaded: 256 queries in flight")
    ledger.answer("b", "RESOURCE_EXHAUSTED", detail="another")
    ledger.answer("c", "OK")
    assert ledger.summary()["examples"] == {"RESOURCE_EXHAUSTED": "frontend overloaded: 256 queries in flight"}


def test_error_answers_are_counted_against_the_fault_they_followed():
    ledger = Ledger()
    for qid, at in (("a", 0.5), ("b", 2.5), ("c", 2.9), ("d", 7.0), ("e", 3.0)):
        ledger.send(qid)
        ledger.answer(qid, "OK" if qid == "e" else "UNAVAILABLE", at_s=at)
    events = [
        FaultEvent(Fault(1.0, "kill_encoder", 0, 0.2), 1.0, 1.2, 1.5),
        FaultEvent(Fault(5.0, "stall_triton", 0, 0.1), 5.0, 5.1, None),
    ]
    result = ChaosResult(ledger, events, HealthWatch("", 0.1, 0.0), [], 8.0)
    report = result.report()
    assert report["errors_before_any_fault"] == 1
    assert [f["errors_after"] for f in report["faults"]] == [2, 1]  # b, c after the first; d after the second
