"""Tracing without a broker: the destination names, the in-memory broker's traces, and no opentelemetry."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from otel_support import by_name, recording, traceparent

from event import Context, Message, Publisher, Retry, WorkerPool, tracing
from event.testing import TestBroker

URL = "amqp://nobody:nothing@127.0.0.1:1/"  # never dialled: the broker is in memory
FOREIGN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # the W3C spec's example


def test_destination_names_follow_the_rabbitmq_conventions() -> None:
    assert tracing.producer_destination("hutch", "app.x") == "hutch:app.x"
    assert tracing.producer_destination("", "myapp:hutch_dead_queue") == "myapp:hutch_dead_queue"
    assert tracing.producer_destination("hutch", "") == "hutch"
    assert tracing.producer_destination("", "") == "amq.default"
    assert tracing.consumer_destination("hutch", "app.x", "myapp:x") == "hutch:app.x:myapp:x"
    assert tracing.consumer_destination("", "myapp:x", "myapp:x") == "myapp:x"  # a copy sent to its queue


async def test_one_trace_runs_from_the_callers_span_through_a_retry_and_into_a_sync_handlers_span() -> None:
    pool = WorkerPool(URL, namespace="t")
    inner: list[tuple[int, int | None]] = []  # (attempt, parent span id of the handler's own span)

    @pool.consumer("app.job", retries=2)
    def job(ctx: Context, msg: Message[Any]) -> None:  # a sync handler: it runs in a worker thread
        assert threading.current_thread() is not threading.main_thread()
        with trace.get_tracer("app").start_as_current_span("charge") as span:
            parent = span.parent  # type: ignore[attr-defined]  # the SDK's span has one
            inner.append((msg.attempt, parent.span_id if parent else None))
        if msg.attempt == 1:
            raise Retry("later", in_=30)

    publisher = Publisher(URL, namespace="t")
    with recording() as exporter:
        async with TestBroker(pool, publisher) as broker:
            with trace.get_tracer("app").start_as_current_span("checkout") as checkout:
                await publisher.publish("app.job", {"n": 1}, message_id="job-1")
            await broker.drain()
            await broker.advance(30)
        spans = exporter.get_finished_spans()

    publish, retry = by_name(spans, "publish ")
    first, second = by_name(spans, "process ")
    assert {s.context.trace_id for s in spans} == {checkout.get_span_context().trace_id}
    assert publish.parent is not None and publish.parent.span_id == checkout.get_span_context().span_id
    assert [s.kind for s in (publish, first, retry, second)] == [
        SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.PRODUCER, SpanKind.CONSUMER,
    ]  # fmt: skip
    chain = [publish, first, retry, second]
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, child.name
    assert [(a, p) for a, p in inner] == [(1, first.context.span_id), (2, second.context.span_id)]
    assert first.attributes is not None and first.attributes["error.type"] == "Retry"
    assert second.attributes is not None and "error.type" not in second.attributes
    assert [first.attributes["event.attempt"], second.attributes["event.attempt"]] == [1, 2]
    assert retry.attributes is not None
    assert retry.attributes["messaging.destination.name"] == "hutch.park:app.job"  # its own key
    assert [p.headers["traceparent"] for p in broker.log] == [traceparent(publish), traceparent(retry)]


async def test_a_publish_outside_any_span_continues_the_trace_its_headers_carry() -> None:
    pool = WorkerPool(URL, namespace="t")

    @pool.consumer("app.job")
    async def job(ctx: Context, msg: Message[Any]) -> None:
        pass

    publisher = Publisher(URL, namespace="t")
    with recording() as exporter:
        async with TestBroker(pool, publisher) as broker:
            await publisher.publish("app.job", {}, headers={"traceparent": FOREIGN})  # a bridge, a requeue
            raw = await (await broker.connect(URL, name="ruby")).channel()
            # As another service sends it (a Ruby one, traced by its own OpenTelemetry): no span of ours.
            await raw.basic_publish(
                b"{}", exchange="hutch", routing_key="app.job", properties=_props({"traceparent": FOREIGN})
            )
            await broker.drain()
        spans = exporter.get_finished_spans()

    [publish] = by_name(spans, "publish ")
    assert publish.parent is not None and f"{publish.parent.span_id:016x}" == FOREIGN.split("-")[2]
    processed = by_name(spans, "process ")
    parents = sorted(f"{s.parent.span_id:016x}" for s in processed if s.parent is not None)
    assert parents == sorted([f"{publish.context.span_id:016x}", FOREIGN.split("-")[2]])
    assert all(s.context.trace_id == int(FOREIGN.split("-")[1], 16) for s in spans)


def _props(headers: dict[str, Any]) -> Any:
    from aiormq import spec

    return spec.Basic.Properties(content_type="application/json", headers=headers)


NO_OPENTELEMETRY = textwrap.dedent(
    """
    import sys
    sys.modules["opentelemetry"] = None  # as if not installed: any import of it fails
    import asyncio, json
    from event import Message, Publisher, WorkerPool, dispatch, sending, tracing
    from event.testing import TestBroker

    URL = "amqp://nobody:nothing@127.0.0.1:1/"

    async def main():
        pool = WorkerPool(URL, namespace="t")
        seen = []

        @pool.consumer("app.x", retries=1)
        def x(ctx, msg: Message) -> None:
            seen.append(msg.attempt)
            raise RuntimeError("boom")

        sender = Publisher(URL, namespace="t")
        async with TestBroker(pool, sender) as broker:
            await sender.publish("app.x", {"a": 1})
            await sender.publish_in(30, "app.x", {"a": 2})
            await broker.drain()
            await broker.advance(60)
            dead = broker.dead()
            headers = sorted({name for p in broker.log for name in p.headers})
        print(json.dumps({
            "enabled": tracing.ENABLED,
            "send_wrapped": hasattr(sending.publish, "__wrapped__"),
            "process_wrapped": hasattr(dispatch.Dispatcher._process, "__wrapped__"),
            "seen": sorted(seen),
            "dead": len(dead),
            "headers": headers,
            "imported": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
        }))

    asyncio.run(main())
    """
)


def test_without_opentelemetry_nothing_is_traced_and_nothing_fails() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_OPENTELEMETRY], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["enabled"] is False
    assert report["send_wrapped"] is False and report["process_wrapped"] is False  # the functions as written
    assert report["seen"] == [1, 1, 2, 2]  # both messages ran, failed, were retried, and went dead
    assert report["dead"] == 2
    assert not [h for h in report["headers"] if h in ("traceparent", "tracestate", "baggage")]
    assert report["imported"] == ["opentelemetry"]  # only the blocking entry itself


API_ONLY = textwrap.dedent(
    """
    import asyncio, json, sys
    from opentelemetry import trace
    from event import Message, Publisher, WorkerPool
    from event.testing import TestBroker

    URL = "amqp://nobody:nothing@127.0.0.1:1/"
    FOREIGN = sys.argv[1]

    async def main():
        pool = WorkerPool(URL, namespace="t")
        sender = Publisher(URL, namespace="t")
        seen = {}

        @pool.consumer("app.in")
        async def handle(ctx, msg: Message) -> None:
            seen[msg.body["n"]] = trace.get_current_span().get_span_context().trace_id
            await sender.publish("app.out", {"n": msg.body["n"]})

        async with TestBroker(pool, sender) as broker:
            await sender.publish("app.in", {"n": 1}, headers={"traceparent": FOREIGN})
            await sender.publish("app.in", {"n": 2})
            await broker.drain()
            outs = [p for p in broker.log if p.routing_key == "app.out"]
            out = {p.payload["n"]: p.headers.get("traceparent") for p in outs}
        print(json.dumps({"provider": type(trace.get_tracer_provider()).__name__, "seen": seen, "out": out}))

    asyncio.run(main())
    """
)


NO_PROVIDER_YET = textwrap.dedent(
    """
    import asyncio, json
    from opentelemetry import baggage, context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from event import Publisher
    from event.testing import TestBroker

    URL = "amqp://nobody:nothing@127.0.0.1:1/"
    FOREIGN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def main():
        publisher = Publisher(URL, namespace="t")
        exporter = InMemorySpanExporter()
        async with TestBroker(publisher) as broker:
            await publisher.publish("app.x", {"n": "plain"})  # nothing to pass on, nobody to see a span
            token = context.attach(baggage.set_baggage("tenant", "acme"))
            await publisher.publish("app.x", {"n": "baggage"})
            context.detach(token)
            await publisher.publish("app.x", {"n": "carried"}, headers={"traceparent": FOREIGN})
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)  # after the first publishes: seen from the next one on
            await publisher.publish("app.x", {"n": "traced"})
            log = [(json.loads(p.body)["n"], sorted(p.headers)) for p in broker.log]
        print(json.dumps({"log": log, "spans": [s.name for s in exporter.get_finished_spans()]}))

    asyncio.run(main())
    """
)


def test_without_a_tracer_provider_a_message_context_is_handed_on_and_none_is_made_up() -> None:
    # The API alone (installed for another library's sake, no SDK): no span is recorded, but the context a
    # message carries is current in its handler and goes on with the handler's publish, as the API's
    # non-recording spans hand it on; a message with none gets none. A process of its own: the global
    # tracer provider, once set (otel_support sets it), cannot be unset.
    result = subprocess.run(
        [sys.executable, "-c", API_ONLY, FOREIGN], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["provider"] == "ProxyTracerProvider"
    assert report["seen"] == {"1": int(FOREIGN.split("-")[1], 16), "2": 0}
    assert report["out"]["1"] is not None and report["out"]["1"].split("-")[1] == FOREIGN.split("-")[1]
    assert report["out"]["2"] is None


def test_without_a_tracer_provider_only_what_a_message_carries_is_passed_on_and_a_later_one_is_seen() -> None:
    # A fresh interpreter: the provider of the rest of the suite (otel_support's) is not set in it.
    result = subprocess.run(
        [sys.executable, "-c", NO_PROVIDER_YET], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["log"] == [
        ["plain", []],  # no span, no trace context, not even an empty header table
        ["baggage", ["baggage"]],  # the context's baggage goes on without an SDK
        ["carried", ["traceparent"]],  # and the trace a message already belongs to
        ["traced", ["traceparent"]],  # the provider set meanwhile: a span, its context in the headers
    ]
    assert report["spans"] == ["publish hutch:app.x"]


PROVIDER_SET_BETWEEN_DELIVERIES = textwrap.dedent(
    """
    import asyncio, json
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from event import Message, Publisher, WorkerPool
    from event.testing import TestBroker

    URL = "amqp://nobody:nothing@127.0.0.1:1/"
    exporter = InMemorySpanExporter()

    async def deliver(n):
        pool = WorkerPool(URL, namespace="t")
        sender = Publisher(URL, namespace="t")

        @pool.consumer("app.in")
        async def handle(ctx, msg: Message) -> None:
            pass

        async with TestBroker(pool, sender) as broker:
            await sender.publish("app.in", {"n": n})
            await broker.drain()

    def consumer_spans():
        return [s.name for s in exporter.get_finished_spans() if s.name.startswith("process")]

    # Deliveries with no provider set, in a loop that then ends; the provider set; a delivery again.
    asyncio.run(deliver(1))
    before = consumer_spans()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    asyncio.run(deliver(2))
    print(json.dumps({"before": before, "after": consumer_spans()}))
    """
)


def test_a_tracer_provider_set_after_deliveries_without_one_is_seen_by_the_next_delivery() -> None:
    # The consumer side asks whether a provider is set once per turn of the loop, not per delivery: the
    # answer of one turn (here, of a loop since closed) does not stand for a later one.
    result = subprocess.run(
        [sys.executable, "-c", PROVIDER_SET_BETWEEN_DELIVERIES],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["before"] == []
    assert report["after"] == ["process hutch:app.in:t:handle"]
