"""Which Triton instance each slot of a coding group runs on.

The rule: a slot goes to an instance that serves its model and that its group uses least (so no two
slots of a group share an instance while enough instances exist: one straggling instance then costs
a group at most one slot); among those, to the instance given the fewest slots so far, which over
many groups is round-robin. With fewer instances than slots a group spreads its slots as evenly as
the instances allow, and one stalled instance then costs it more than one slot.

An instance the health probe found not ready for a model (dead, or stalled past the probe's timeout)
gets no new slots of it while another instance of that model is ready; with none ready, every
instance is used as before (a call then fails or waits, and the query says so).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping


class Placer:
    """Places slots over the instances ``serving[model]`` (instance numbers, as in the Triton pool)."""

    def __init__(self, serving: Mapping[str, tuple[int, ...]]) -> None:
        self._serving = dict(serving)
        self._assigned: Counter[int] = Counter()
        self._unready: frozenset[tuple[int, str]] = frozenset()

    def serving(self, model: str) -> tuple[int, ...]:
        return self._serving[model]

    def add(self, instance: int, models: Iterable[str]) -> None:
        """Place ``models`` on ``instance`` too (a Triton pod that appeared). It starts level with the least
        used instance of those models, so the rule stays round-robin instead of giving the newcomer every
        choice until it has caught up with instances that served for hours."""
        models = tuple(models)
        peers = {i for m in models for i in self._serving.get(m, ()) if i != instance}
        if instance not in self._assigned:
            self._assigned[instance] = min((self._assigned[i] for i in peers), default=0)
        for model in models:
            if instance not in self._serving.get(model, ()):
                self._serving[model] = (*self._serving.get(model, ()), instance)

    def remove(self, instance: int, models: Iterable[str] | None = None) -> None:
        """Stop placing ``models`` (default: every model) on ``instance`` (a Triton pod that went away).
        Slots already placed there are not moved: their calls finish where they are."""
        names = set(self._serving) if models is None else set(models)
        for model in names & set(self._serving):
            self._serving[model] = tuple(i for i in self._serving[model] if i != instance)

    def set_unready(self, pairs: Iterable[tuple[int, str]]) -> None:
        """The (instance, model) pairs the last health probe found not ready (frontend.app.health)."""
        self._unready = frozenset(pairs)

    def ready(self, model: str) -> tuple[int, ...]:
        """The instances new slots of ``model`` go to: the ready ones, or all of them if none is."""
        instances = self._serving[model]
        return tuple(i for i in instances if (i, model) not in self._unready) or instances

    def place(self, model: str, used: Mapping[int, int]) -> int:
        """An instance for one more slot on ``model``, where ``used`` counts the group's slots per instance."""
        best = min(self.ready(model), key=lambda i: (used.get(i, 0), self._assigned[i], i))
        self._assigned[best] += 1
        return best
