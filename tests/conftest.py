"""Settings for the whole suite, loaded before any test module imports the package.

* **Hypothesis:** no per-example deadline (on a shared 2-core machine a slow example is noise,
  not a bug: speed is measured by ``benchmarks/``), and a failure prints the blob that
  reproduces it (``@reproduce_failure``) next to the falsifying example. The seed of a run is
  printed by ``--hypothesis-seed``'s report in the header.
* **The pure-Python path:** with ``LUKHAS_TEST_PURE_PYTHON=1`` the native extension cannot be
  imported, exactly as on a machine without a C compiler, so the suite runs the fold and the
  change decoder in Python (``make test`` runs the unit tests once this way).
* **Markers:** every test under ``tests/integration`` is marked ``integration`` (it needs the
  broker), whether or not its module says so.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("lukhas", deadline=None, print_blob=True)
settings.load_profile("lukhas")

#: The native extensions: the fold's hot loop, the change stream's decoder, and the patch
#: splice and diff on canonical JSON.
NATIVE = (
    "lukhas_context.processors._fastfold",
    "lukhas_context.schemas._fastchange",
    "lukhas_context.schemas._fastjson",
    "lukhas_context.streams._fastrecords",
)
INTEGRATION = Path(__file__).parent / "integration"


class _NoNative(importlib.abc.MetaPathFinder):
    """Makes importing any native extension fail with ImportError."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if fullname in NATIVE:
            raise ImportError(f"{fullname} is switched off (LUKHAS_TEST_PURE_PYTHON=1)")
        return None


if os.environ.get("LUKHAS_TEST_PURE_PYTHON") == "1":
    if early := [name for name in NATIVE if name in sys.modules]:
        raise RuntimeError(f"{early} imported before tests/conftest.py could block them")
    sys.meta_path.insert(0, _NoNative())


def pytest_report_header(config: pytest.Config) -> str:
    pure = os.environ.get("LUKHAS_TEST_PURE_PYTHON") == "1"
    return f"lukhas: native extension {'switched off' if pure else 'used when built'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def spans() -> Iterator[Any]:
    """The package's OpenTelemetry spans of the test, kept by the SDK's in-memory exporter
    (``streams.tracing.set_tracer_provider``; the global provider is never touched)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lukhas_context.streams import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.set_tracer_provider(None)
