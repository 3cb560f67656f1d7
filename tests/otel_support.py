"""The tracing tests' spans: OpenTelemetry's SDK with an in-memory exporter, recording only inside a test.

The global tracer provider can be set once per process, so it is set once, here, for every test that
uses :func:`recording`; between those tests its tracers make only invalid spans, so the rest of the suite
(run in the same process) records nothing, keeps no spans in memory and finds no trace context in the
headers of the messages it looks at.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class _Switch(trace.TracerProvider):
    """The SDK's tracers while on; while off, tracers whose spans are invalid, so nothing is recorded and no
    trace context is written into messages, as without an SDK: other tests see the headers they expect."""

    def __init__(self) -> None:
        self.on = False
        self.sdk = TracerProvider()
        self.sdk.add_span_processor(SimpleSpanProcessor(_exporter))

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _SwitchTracer(self, self.sdk.get_tracer(*args, **kwargs))


class _SwitchTracer(trace.Tracer):
    def __init__(self, switch: _Switch, real: trace.Tracer) -> None:
        self.switch = switch
        self.real = real

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self.real.start_span(*args, **kwargs) if self.switch.on else trace.INVALID_SPAN

    @contextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:
        if not self.switch.on:
            yield trace.INVALID_SPAN
            return
        with self.real.start_as_current_span(*args, **kwargs) as span:
            yield span


_exporter = InMemorySpanExporter()
_switch: _Switch | None = None


def _install() -> _Switch:
    global _switch
    if _switch is None:
        _switch = _Switch()
        trace.set_tracer_provider(_switch)
    return _switch


@contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """Record the spans ended inside the block in the exporter it gives (emptied first)."""
    switch = _install()
    _exporter.clear()
    switch.on = True
    try:
        yield _exporter
    finally:
        switch.on = False


def by_name(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    """The spans whose name starts with ``prefix``, in the order they started."""
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_time or 0)


def traceparent(span: ReadableSpan) -> str:
    """The W3C ``traceparent`` header that carries ``span``'s context."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
