"""Instances that come and go (Triton pods behind a headless Service) keep the placement rule."""

from __future__ import annotations

from collections import Counter

from frontend.core.placement import Placer
from frontend.transport.discovery import SystemResolver


def _group(placer: Placer, model: str, slots: int) -> list[int]:
    used: Counter[int] = Counter()
    for _ in range(slots):
        used[placer.place(model, used)] += 1
    return sorted(used.elements())


def test_a_new_instance_starts_level_with_the_others_instead_of_taking_every_slot():
    placer = Placer({"m": (0, 1)})
    for _ in range(100):
        _group(placer, "m", 2)
    placer.add(2, ["m"])
    counts = Counter(i for _ in range(30) for i in _group(placer, "m", 2))
    assert counts == {0: 20, 1: 20, 2: 20}  # round-robin at once, not 60 slots on the newcomer


def test_a_group_still_spreads_over_distinct_instances_after_changes():
    placer = Placer({"m": (0, 1), "p": (0, 1)})
    placer.add(2, ["m", "p"])
    placer.remove(0)
    placer.add(3, ["m", "p"])
    for _ in range(10):
        used: Counter[int] = Counter()
        for model in ("m", "m", "p"):
            used[placer.place(model, used)] += 1
        assert max(used.values()) == 1 and 0 not in used


def test_remove_takes_an_instance_out_of_the_given_models_only():
    placer = Placer({"m": (0, 1), "p": (0, 1)})
    placer.remove(1, ["p"])
    assert placer.serving("m") == (0, 1) and placer.serving("p") == (0,)
    placer.add(1, ["p"])
    assert placer.serving("p") == (0, 1)


async def test_the_system_resolver_answers_ipv4_addresses():
    assert await SystemResolver().addresses("localhost") == ("127.0.0.1",)


def test_an_instance_the_probe_found_unready_gets_no_new_slots_while_another_is_ready():
    placer = Placer({"m": (0, 1, 2), "p": (1,)})
    placer.set_unready({(1, "m")})
    assert {placer.place("m", {}) for _ in range(6)} == {0, 2}
    assert placer.place("p", {}) == 1  # unready for m only: p's slots still go there
    assert placer.serving("m") == (0, 1, 2)  # still placed there: health, discovery and retries see it


def test_with_no_instance_ready_every_instance_is_used_as_before():
    placer = Placer({"m": (0, 1)})
    placer.set_unready({(0, "m"), (1, "m")})
    assert {placer.place("m", {}) for _ in range(4)} == {0, 1}
    placer.set_unready(())
    assert placer.ready("m") == (0, 1)
