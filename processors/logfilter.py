"""A process-wide limit on repeated log lines.

A flood of one failure (every failed ``accept()`` at the descriptor limit, every refused
connection to a dead broker) must not fill the disk or drown the one line that matters. The
worker installs a ``RepeatFilter`` on each handler of the root logger: lines of one logger and
one message *template* (``record.msg`` before its arguments are filled in) beyond ``burst`` per
``interval_s`` are counted instead of written, and all lines beyond ``10 * burst`` per interval
in total (a flood of distinct templates). When an interval with suppressed lines ends, one
line says how many were suppressed and of what (at the next line of that template, or at the
next ``flush()``, which the worker calls every interval and on exit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from lukhas_context.processors.exceptions import InvalidWorkerConfigError

#: Set on the summary lines this filter writes (they are never suppressed themselves).
SUMMARY_ATTR = "lukhas_repeat_summary"
#: Templates remembered at most (the oldest windows are dropped first).
MAX_KEYS = 10_000
_ALL = ("*", "*")


@dataclass(slots=True)
class _Window:
    start: float
    lines: int = 0
    suppressed: int = 0
    level: int = logging.WARNING


class RepeatFilter(logging.Filter):
    """Rate-limits the lines of one handler (see the module doc)."""

    def __init__(
        self,
        handler: logging.Handler,
        burst: int = 50,
        interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_suppressed: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        if burst < 1 or not interval_s > 0:
            raise InvalidWorkerConfigError(
                f"burst must be >= 1 and interval_s > 0, got {burst}, {interval_s}"
            )
        self.handler = handler
        self.burst = burst
        self.total_burst = 10 * burst
        self.interval_s = interval_s
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self.suppressed = 0
        #: Called with the number of lines each time lines are suppressed (e.g. a metric).
        self.on_suppressed = on_suppressed

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, SUMMARY_ATTR, False):
            return True
        now = self._clock()
        key = (record.name, str(record.msg))
        window = self._window(key, now, record.levelno)
        total = self._window(_ALL, now, record.levelno)
        window.lines += 1
        if window.lines <= self.burst:
            total.lines += 1
            if total.lines <= self.total_burst:
                return True
            window = total  # over the budget of all templates: counted there
        window.suppressed += 1
        window.level = max(window.level, record.levelno)
        self.suppressed += 1
        if self.on_suppressed is not None:
            self.on_suppressed(1)
        return False

    def flush(self, force: bool = False) -> None:
        """Writes the summary of every window that ended (all of them with ``force``) and
        forgets the windows that suppressed nothing."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if force or now - window.start >= self.interval_s:
                self._close(key, window, now)
                del self._windows[key]

    def _window(self, key: tuple[str, str], now: float, level: int) -> _Window:
        window = self._windows.get(key)
        if window is not None and now - window.start < self.interval_s:
            return window
        if window is not None:
            self._close(key, window, now)
            del self._windows[key]  # re-inserted last: the dict stays oldest first
        elif len(self._windows) >= MAX_KEYS:
            oldest = next(iter(self._windows))
            self._close(oldest, self._windows.pop(oldest), now)
        window = self._windows[key] = _Window(now, level=level)
        return window

    def _close(self, key: tuple[str, str], window: _Window, now: float) -> None:
        if not window.suppressed:
            return
        name, template = key
        if key == _ALL:
            text = (
                f"suppressed {window.suppressed} log lines in {now - window.start:.0f} s "
                f"(more than {self.total_burst} lines in an interval)"
            )
        else:
            text = (
                f"suppressed {window.suppressed} repeats of {name}: {template[:200]!r} in "
                f"{now - window.start:.0f} s (more than {self.burst} per {self.interval_s:.0f} s)"
            )
        summary = logging.LogRecord(
            "lukhas_context.logs", window.level, __file__, 0, text, None, None
        )
        setattr(summary, SUMMARY_ATTR, True)
        self.handler.handle(summary)


def install(burst: int, interval_s: float) -> list[RepeatFilter]:
    """Installs a filter on every handler of the root logger (on Python's last-resort
    handler when there is none) and returns them; ``uninstall`` takes them off."""
    handlers = list(logging.getLogger().handlers)
    if not handlers and logging.lastResort is not None:
        handlers = [logging.lastResort]
    filters = []
    for handler in handlers:
        f = RepeatFilter(handler, burst, interval_s)
        handler.addFilter(f)
        filters.append(f)
    return filters


def uninstall(filters: list[RepeatFilter]) -> None:
    """Writes the pending summaries and removes the filters."""
    for f in filters:
        f.flush(force=True)
        f.handler.removeFilter(f)
