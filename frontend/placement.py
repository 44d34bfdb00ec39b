"""Which Triton instance each slot of a coding group runs on.

The rule: a slot goes to an instance that serves its model and that its group uses least (so no two
slots of a group share an instance while enough instances exist: one straggling instance then costs
a group at most one slot); among those, to the instance given the fewest slots so far, which over
many groups is round-robin. With fewer instances than slots a group spreads its slots as evenly as
the instances allow, and one stalled instance then costs it more than one slot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


class Placer:
    """Places slots over the instances ``serving[model]`` (instance numbers, as in the Triton pool)."""

    def __init__(self, serving: Mapping[str, tuple[int, ...]]) -> None:
        self._serving = dict(serving)
        self._assigned: Counter[int] = Counter()

    def serving(self, model: str) -> tuple[int, ...]:
        return self._serving[model]

    def place(self, model: str, used: Mapping[int, int]) -> int:
        """An instance for one more slot on ``model``, where ``used`` counts the group's slots per instance."""
        best = min(self._serving[model], key=lambda i: (used.get(i, 0), self._assigned[i], i))
        self._assigned[best] += 1
        return best
