"""Logging set up once per process, from __main__; rate-limited warnings for outages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@dataclass
class _Cause:
    quiet_until: float
    held: int = 0


class RateLimitedLog:
    """Warnings of a recurring cause (a dependency down: every call fails alike) at most once per
    ``every_s`` per cause: the first at once, the next ones held back and counted in the next warning
    let through. :meth:`resolved` says once that the causes are gone, with the count still held back."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._log = logger
        self.every_s = every_s
        self._clock = clock
        self._causes: dict[Hashable, _Cause] = {}

    def warning(self, cause: Hashable, msg: str, *args: object) -> None:
        self.log(logging.WARNING, cause, msg, *args)

    def log(self, level: int, cause: Hashable, msg: str, *args: object) -> None:
        """As :meth:`warning`, at ``level`` (e.g. INFO for a transition back to normal, rate-limited alike)."""
        now = self._clock()
        state = self._causes.get(cause)
        if state is not None and now < state.quiet_until:
            state.held += 1
            return
        self._causes[cause] = _Cause(now + self.every_s)
        if state is not None and state.held:
            self._log.log(level, msg + " (and %d more like it in the %.0f s before)", *args, state.held, self.every_s)
        else:
            self._log.log(level, msg, *args)

    def resolved(self, msg: str, *args: object) -> None:
        """Every cause is gone (e.g. a call succeeded): log ``msg`` once, if anything was warned."""
        if not self._causes:
            return
        held = sum(state.held for state in self._causes.values())
        self._causes.clear()
        self._log.info(msg + " (%d warnings held back)", *args, held)
