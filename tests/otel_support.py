"""The tracing tests' spans: OpenTelemetry's SDK with an in-memory exporter, recording only inside a test.

The global tracer provider can be set once per process, so it is set once, here, for every test that
uses :func:`recording`; between those tests its sampler drops every span, so the rest of the suite
(run in the same process) records nothing and keeps no spans in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult


class _Switch(Sampler):
    """Samples every span while on, none while off."""

    def __init__(self) -> None:
        self.on = False

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        # The SDK starts a span with the attributes the sampler hands back, as its own samplers do.
        if not self.on:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)

    def get_description(self) -> str:
        return "tests/otel_support switch"


_switch = _Switch()
_exporter = InMemorySpanExporter()
_provider: TracerProvider | None = None


def _install() -> None:
    global _provider
    if _provider is None:
        _provider = TracerProvider(sampler=_switch)
        _provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(_provider)


@contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """Record the spans ended inside the block in the exporter it gives (emptied first)."""
    _install()
    _exporter.clear()
    _switch.on = True
    try:
        yield _exporter
    finally:
        _switch.on = False


def by_name(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    """The spans whose name starts with ``prefix``, in the order they started."""
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_time or 0)


def traceparent(span: ReadableSpan) -> str:
    """The W3C ``traceparent`` header that carries ``span``'s context."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
