"""OpenTelemetry on the real broker: one trace links publish -> consume -> retry -> consume -> dead."""

from __future__ import annotations

import itertools
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from otel_support import by_name, recording, traceparent
from support import Isolation, Probe, eventually

from event import Context, Message, Publisher, WorkerPool, wire


def _of(spans: list[ReadableSpan], message_id: str) -> list[ReadableSpan]:
    return [s for s in spans if (s.attributes or {}).get("messaging.message.id") == message_id]


async def test_one_trace_links_publish_consume_retry_consume_dead_with_the_conventional_attributes(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    later: list[str] = []

    @pool.consumer("app.charge", retries=1, backoff=lambda failures: 0)  # one retry, at the 5 s level
    async def charge(ctx: Context, msg: Message[Any]) -> None:
        raise RuntimeError("card declined")

    @pool.consumer("app.remind")
    async def remind(ctx: Context, msg: Message[Any]) -> None:
        later.append(msg.routing_key)

    ns, ex = iso.namespace, iso.exchange
    dead_queue = wire.dead_queue_name(ns, ex)
    with recording() as exporter:
        async with pool.running(), Publisher(**pool_kwargs) as publisher:
            with trace.get_tracer("shop").start_as_current_span("checkout") as checkout:
                await publisher.publish("app.charge", {"amount": 5}, message_id="charge-1")
                await publisher.publish_in(1, "app.remind", {}, message_id="remind-1")

            async def dead() -> bool:
                return await probe.depth(dead_queue) == 1

            await eventually(dead, timeout=25)
            await eventually(lambda: later == ["app.remind"], timeout=15)
        spans = list(exporter.get_finished_spans())
    [stored] = await probe.take_all(dead_queue)

    assert {s.context.trace_id for s in spans} == {checkout.get_span_context().trace_id}
    charged = _of(spans, "charge-1")
    publish, retry, to_dead = by_name(charged, "publish ")
    first, second = by_name(charged, "process ")
    chain = [publish, first, retry, second, to_dead]
    assert [s.name for s in chain] == [
        f"publish {ex}:app.charge",
        f"process {ex}:app.charge:{ns}:charge",
        f"publish {ex}.park:app.charge",  # a retry keeps its routing key (docs/wire-format.md)
        f"process {ex}.unpark:app.charge:{ns}:charge",
        f"publish {dead_queue}",
    ]
    assert [s.kind for s in chain] == [
        SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.PRODUCER,
    ]  # fmt: skip
    assert publish.parent is not None and publish.parent.span_id == checkout.get_span_context().span_id
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, child.name
    for process in (first, second):  # the creation context is the parent and, as the conventions ask, a link
        assert [link.context.span_id for link in process.links] == [process.parent.span_id]  # type: ignore[union-attr]
    # The dead copy carries its own publish's context: a requeue of it continues this trace.
    assert stored.header.properties.headers["traceparent"] == traceparent(to_dead)

    for span in (publish, retry, to_dead):
        attributes = dict(span.attributes or {})
        assert attributes["messaging.system"] == "rabbitmq"
        assert attributes["messaging.operation.name"] == "publish"
        assert attributes["messaging.operation.type"] == "send"
        assert attributes["messaging.destination.name"] == span.name.removeprefix("publish ")
        assert attributes["messaging.message.id"] == "charge-1"
        assert attributes["event.routing_key"] == "app.charge"
        assert attributes["messaging.message.body.size"] == len(b'{"amount":5}')
        assert span.status.status_code == StatusCode.UNSET
    assert dict(publish.attributes or {})["messaging.rabbitmq.destination.routing_key"] == "app.charge"
    assert dict(to_dead.attributes or {})["messaging.rabbitmq.destination.routing_key"] == dead_queue

    for attempt, span in enumerate((first, second), start=1):
        attributes = dict(span.attributes or {})
        assert attributes["messaging.system"] == "rabbitmq"
        assert attributes["messaging.operation.name"] == "process"
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["messaging.destination.name"] == span.name.removeprefix("process ")
        assert isinstance(attributes["messaging.rabbitmq.message.delivery_tag"], int)
        assert attributes["messaging.message.id"] == "charge-1"
        assert attributes["event.routing_key"] == "app.charge"
        assert attributes["event.attempt"] == attempt
        assert attributes["error.type"] == "RuntimeError"
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "RuntimeError: card declined"
        assert [event.name for event in span.events] == ["exception"]
    assert dict(first.attributes or {})["messaging.rabbitmq.destination.routing_key"] == "app.charge"
    assert dict(second.attributes or {})["messaging.rabbitmq.destination.routing_key"] == "app.charge"

    # publish_in: the delayed message's process span is the child of its publish into the park queue.
    reminded = _of(spans, "remind-1")
    [delayed], [consumed] = by_name(reminded, "publish "), by_name(reminded, "process ")
    assert delayed.name == f"publish {ex}.park:app.remind"
    assert delayed.parent is not None and delayed.parent.span_id == checkout.get_span_context().span_id
    assert consumed.parent is not None and consumed.parent.span_id == delayed.context.span_id
    assert dict(consumed.attributes or {})["event.routing_key"] == "app.remind"
    assert consumed.status.status_code == StatusCode.UNSET
