"""Logging set up once per process, from __main__; rate-limited warnings for outages.

Two formats (``--log-format``): ``text``, one line ``TIME LEVEL LOGGER: MESSAGE``, and ``json``, one JSON
object per line with ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, plus ``exception`` (the
traceback) when the record carries one and each of :data:`CONTEXT_FIELDS` that a log call passed as
``extra=`` (e.g. the coding group a failure concerns).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a log call may pass with ``extra=``, carried by the JSON lines (the text line has them in its message).
CONTEXT_FIELDS = ("query_id", "group_id", "model")


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a message's newlines are escaped, never split)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str)


@dataclass
class _Cause:
    quiet_until: float
    held: int = 0


class RateLimitedLog:
    """Lines of a recurring cause (a dependency down: every call fails alike) at most once per ``every_s``
    per cause: the first at once, the next ones held back and counted in the next line let through.
    :meth:`resolved` says that the causes are gone, with the count still held back, at most once per
    ``every_s`` too: a dependency that flaps between failing and answering logs at most one warning per
    cause and one "answers again" per period, not a pair per flip."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._log = logger
        self.every_s = every_s
        self._clock = clock
        self._causes: dict[Hashable, _Cause] = {}
        self._unresolved = False  # a line was logged or held since the last resolved line
        self._resolved_quiet_until = -math.inf

    def warning(self, cause: Hashable, msg: str, *args: object) -> None:
        self.log(logging.WARNING, cause, msg, *args)

    def log(self, level: int, cause: Hashable, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        """As :meth:`warning`, at ``level`` (e.g. INFO for a transition back to normal, rate-limited alike);
        ``exc_info``: an exception whose traceback the line carries."""
        now = self._clock()
        self._unresolved = True
        state = self._causes.get(cause)
        if state is not None and now < state.quiet_until:
            state.held += 1
            return
        self._causes[cause] = _Cause(now + self.every_s)
        if state is not None and state.held:
            msg, args = msg + " (and %d more like it in the %.0f s before)", (*args, state.held, self.every_s)
        self._log.log(level, msg, *args, exc_info=exc_info)

    def resolved(self, msg: str, *args: object) -> None:
        """Every cause is gone (e.g. a call succeeded): log ``msg`` once, if anything was logged or held
        since the last time, with the count held back. A cause that comes back within its period stays
        held back (and counted) until the period is over."""
        if not self._unresolved:  # first: this is called on every success
            return
        now = self._clock()
        if now < self._resolved_quiet_until:
            return
        held = sum(state.held for state in self._causes.values())
        self._causes = {c: _Cause(s.quiet_until) for c, s in self._causes.items() if now < s.quiet_until}
        self._unresolved = False
        self._resolved_quiet_until = now + self.every_s
        self._log.info(msg + " (%d failures not logged)", *args, held)
