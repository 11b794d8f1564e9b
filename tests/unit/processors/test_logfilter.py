"""The process-wide limit on repeated log lines (``processors.logfilter``)."""

from __future__ import annotations

import logging

import pytest

from lukhas_context.processors import logfilter
from lukhas_context.processors.logfilter import RepeatFilter


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@pytest.fixture
def setup() -> tuple[logging.Logger, _Collect, RepeatFilter, _Clock]:
    clock = _Clock()
    handler = _Collect()
    f = RepeatFilter(handler, burst=5, interval_s=10.0, clock=clock)
    handler.addFilter(f)
    logger = logging.getLogger("test.logfilter")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, handler, f, clock


def test_repeats_beyond_the_burst_are_suppressed_then_summarised(setup: tuple) -> None:
    logger, handler, f, clock = setup
    for i in range(1000):
        logger.error("accept failed: %s (fd %d)", "EMFILE", i)
    assert len(handler.lines) == 5  # the template is the key, whatever its arguments
    assert f.suppressed == 995
    clock.now += 10.0
    logger.error("accept failed: %s (fd %d)", "EMFILE", 1000)  # a new interval
    assert (
        "suppressed 995 repeats of test.logfilter: 'accept failed: %s (fd %d)'"
        in (handler.lines[5])
    )
    assert handler.lines[5].startswith("ERROR")  # at the level of what it hides
    assert handler.lines[6] == "ERROR test.logfilter: accept failed: EMFILE (fd 1000)"


def test_templates_and_loggers_are_limited_apart(setup: tuple) -> None:
    logger, handler, f, _ = setup
    other = logging.getLogger("test.logfilter.other")
    for _ in range(20):
        logger.warning("one")
        logger.warning("two")
        other.warning("one")
    assert len(handler.lines) == 15
    assert f.suppressed == 45


def test_flush_writes_the_summary_without_a_further_line(setup: tuple) -> None:
    logger, handler, f, clock = setup
    for _ in range(8):
        logger.info("partition %d opened", 1)
    f.flush()  # the interval has not ended: nothing yet
    assert len(handler.lines) == 5
    clock.now += 11
    f.flush()
    assert handler.lines[-1].startswith("INFO lukhas_context.logs: suppressed 3 repeats")
    f.flush(force=True)  # nothing left to report
    assert len(handler.lines) == 6


def test_a_flood_of_distinct_templates_is_bounded_in_total(setup: tuple) -> None:
    logger, handler, f, clock = setup
    for i in range(5000):
        logger.warning(f"attacker-chosen text {i}")  # the hostile case: no template
    assert len(handler.lines) == 10 * f.burst
    clock.now += 10
    f.flush()
    assert "suppressed 4950 log lines" in handler.lines[-1]
    assert len(f._windows) <= logfilter.MAX_KEYS


def test_install_and_uninstall_on_the_root_handlers() -> None:
    root = logging.getLogger()
    handler = _Collect()
    root.addHandler(handler)
    try:
        filters = logfilter.install(burst=2, interval_s=60)
        assert any(f.handler is handler for f in filters)
        child = logging.getLogger("lukhas_test_install")
        child.propagate = True
        child.setLevel(logging.WARNING)
        for _ in range(10):
            child.warning("flood")  # limited where it is written, whoever logs it
        assert handler.lines.count("WARNING lukhas_test_install: flood") == 2
        logfilter.uninstall(filters)
        assert "suppressed 8 repeats" in handler.lines[-1]
        child.warning("flood")
        assert handler.lines[-1] == "WARNING lukhas_test_install: flood"
    finally:
        root.removeHandler(handler)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        RepeatFilter(_Collect(), burst=0)
