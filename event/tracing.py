"""OpenTelemetry tracing: a producer span per publish, a consumer span per delivery, trace context in headers.

With ``opentelemetry-api`` installed (``pip install "rabbit-event[otel]"``) and a tracer provider set up
by the application (the SDK and an exporter), every message is traced:

- Each publish is a ``PRODUCER`` span ``publish {exchange}:{routing key}``: :meth:`event.Publisher.publish`,
  ``publish_in``/``publish_at``, and the copies a pool makes (retries, dead copies, re-parks) or
  ``event dead requeue`` sends. Its context goes into the message's headers through the configured
  propagators: W3C ``traceparent`` and ``tracestate`` by default (and ``baggage``, when there is some).
  Its parent is the current span; with none (a worker's copy is always made in a consumer span, so this
  is a tool's publish), the context the message already carries, so a requeued dead message stays in
  its trace.
- Each delivery a worker processes is a ``CONSUMER`` span ``process {exchange}:{routing key}:{queue}``.
  Its parent is the context the message carries (the publish that made it), also added as a link, as the
  conventions ask; the span is current while the middleware and the handler run, so spans they open are
  its children, and so is the publish of a retry or dead copy. A handler that fails marks it failed.

So one trace runs publish → process → publish (the retry) → process → publish (to the dead queue).

The attributes follow OpenTelemetry's messaging semantic conventions for RabbitMQ (in development status
there): ``messaging.system`` ``rabbitmq``, ``messaging.operation.name`` (``publish``/``process``),
``messaging.operation.type`` (``send``/``process``), ``messaging.destination.name``,
``messaging.rabbitmq.destination.routing_key``, ``messaging.rabbitmq.message.delivery_tag``,
``messaging.message.id``, ``messaging.message.conversation_id`` (the correlation id),
``messaging.message.body.size``, and ``error.type`` (the exception's class) on failure. The exchange
and routing key are those the broker used: a retry arrives from ``<exchange>.unpark`` with its park
queue's name as routing key. Two of event's own: ``event.routing_key``, the event's routing key whatever
path it took, and ``event.attempt`` on consumer spans.

Without opentelemetry, :data:`ENABLED` is false and the decorators below hand back the very functions
they decorate: the hot path runs the code it runs without this module. With it, the package is imported
at the first span, not with ``event``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from event import wire
from event.driver import Delivery, Properties

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)


def _installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):  # a parent package set to None in sys.modules, or a broken one
        return False


ENABLED: bool = _installed()
"""Whether ``opentelemetry-api`` is installed: decided once, at import, without importing it."""

SYSTEM = "rabbitmq"
_DEFAULT_DESTINATION = "amq.default"  # the destination name of the default exchange with no routing key

Send = TypeVar("Send", bound=Callable[..., Awaitable[None]])
Handle = TypeVar("Handle", bound=Callable[..., Coroutine[Any, Any, None]])


class Consuming(Protocol):
    """What a consumer span needs of the consumer (an :class:`event.consumer.Consumer`)."""

    @property
    def queue(self) -> str: ...

    @property
    def routing_keys(self) -> tuple[str, ...]: ...


class Dispatching(Protocol):
    """What a consumer span needs of the dispatcher whose delivery it covers."""

    @property
    def consumer(self) -> Consuming: ...

    @property
    def exchange(self) -> str: ...


def producer_destination(exchange: str, routing_key: str) -> str:
    """``messaging.destination.name`` of a publish: ``{exchange}:{routing key}``, either alone if the other
    is empty, ``amq.default`` if both are."""
    if exchange and routing_key:
        return f"{exchange}:{routing_key}"
    return exchange or routing_key or _DEFAULT_DESTINATION


def consumer_destination(exchange: str, routing_key: str, queue: str) -> str:
    """``messaging.destination.name`` of a delivery: ``{exchange}:{routing key}:{queue}``, empty parts
    left out, the routing key once when it is the queue's name (a copy sent straight to its queue)."""
    if routing_key == queue:
        return producer_destination(exchange, routing_key)
    if exchange and routing_key and queue:  # a delivery's three parts are most often all there
        return f"{exchange}:{routing_key}:{queue}"
    return ":".join(part for part in (exchange, routing_key, queue) if part) or _DEFAULT_DESTINATION


class _Otel:
    """opentelemetry's pieces, imported once (at the first span) and held for the hot path."""

    def __init__(self) -> None:
        from opentelemetry import baggage, context, propagate, trace
        from opentelemetry.context import Context
        from opentelemetry.propagators.textmap import Getter

        class HeaderGetter(Getter[Mapping[str, Any]]):
            # AMQP clients hand a long string header over as bytes or str: wire.header_text reads both.
            def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
                value = wire.header_text(carrier, key)
                return None if value is None else [value]

            def keys(self, carrier: Mapping[str, Any]) -> list[str]:
                return list(carrier)

        self.baggage = baggage
        self.context = context
        self.propagate = propagate
        self.trace = trace
        self.empty = Context
        self.getter = HeaderGetter()
        self.tracer = trace.get_tracer("event", _version())
        self.provided = False  # an application set a tracer provider (spans may record)
        # The loop in whose current turn no provider was set when asked (see passes_nothing_on).
        self._unset_in: asyncio.AbstractEventLoop | None = None
        self._textmap: object = None
        self._fields: frozenset[str] = frozenset()

    def provider_set(self) -> bool:
        """Whether an application set a tracer provider. Without one the API's spans record nothing
        (opentelemetry-api is often installed for another library's sake): they only hand on the context
        they were started in."""
        if not self.provided:
            # Set once for good (the API refuses a second one): from then on only the test above runs.
            self.provided = not isinstance(self.trace.get_tracer_provider(), self.trace.ProxyTracerProvider)
        return self.provided

    def untraced(self, headers: Mapping[str, Any] | None) -> bool:
        """Whether a producer span for a message with ``headers`` would be seen by nobody: no tracer
        provider is set, and neither the current context (no span, no baggage, nothing at all) nor the
        message has a trace context to pass on.
        Then the span would be invalid and inject nothing: the publish goes without one, and its
        properties without the empty header table a span would have added."""
        if self.context.get_current() or self._carries_context(headers):
            return False
        return not self.provider_set()

    def passes_nothing_on(self, headers: Mapping[str, Any] | None) -> bool:
        """Whether a consumer span for a message with ``headers`` would be seen by nobody: no tracer
        provider is set and the message carries no trace context, so its span would have an invalid
        context and nothing to hand on. A message that carries a context still gets its
        (non-recording) span, which hands that context on to the handler's publishes.

        The deliveries of one read are dispatched in one turn of the loop: a provider still unset is
        taken as unset for the rest of that turn (asking the API reads ``os.environ`` each time, some
        tenth of what dispatching a delivery costs); one set since is seen from the next turn on."""
        if headers and self._carries_context(headers):
            return False
        if self.provided:
            return False
        unset_in = self._unset_in
        # The answer stands while the loop that got it runs (its next turn clears it). Not "is it the
        # running loop": asyncio.get_running_loop() costs as much as the question it saves.
        if unset_in is not None and unset_in.is_running():
            return True
        if self.provider_set():
            return False
        loop = asyncio.get_running_loop()
        self._unset_in = loop
        loop.call_soon(self._next_turn)  # forgotten at the next turn
        return True

    def _next_turn(self) -> None:
        self._unset_in = None

    def _carries_context(self, headers: Mapping[str, Any] | None) -> bool:
        # Whether ``headers`` hold any of the configured propagators' fields (traceparent, baggage, ...).
        if not headers:
            return False
        textmap = self.propagate.get_global_textmap()
        if textmap is not self._textmap:  # the application may set other propagators at any time
            self._fields = frozenset(textmap.fields)
            self._textmap = textmap
        return any(field in headers for field in self._fields)

    def extract(self, headers: Mapping[str, Any] | None) -> Context:
        """The context a message carries; an empty base, so that no ambient span becomes its parent."""
        if not headers:
            return self.empty()
        return self.propagate.extract(headers, context=self.empty(), getter=self.getter)

    # The attributes that sampling may look at go in at the start; the others only into a span that
    # records (an SDK's, sampled), so that without an SDK a span costs little more than its context.

    @contextmanager
    def producer(self, exchange: str, routing_key: str, props: Properties, size: int) -> Iterator[None]:
        trace = self.trace
        headers = props.headers
        if headers is None:
            headers = props.headers = {}
        ambient = trace.get_current_span().get_span_context().is_valid
        destination = producer_destination(exchange, routing_key)
        span = self.tracer.start_span(
            f"publish {destination}",
            context=None if ambient else self.extract(headers),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.name": "publish",
                "messaging.operation.type": "send",
                "messaging.destination.name": destination,
            },
        )
        if span.is_recording():
            attributes: dict[str, Any] = {"messaging.message.body.size": size}
            if routing_key:
                attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
            logical = wire.header_text(headers, wire.H_ROUTING_KEY) or routing_key
            span.set_attributes(_message_attributes(attributes, props, logical))
        # The publish's own context is the message's creation context: it replaces the one a copy carried.
        # A span of no SDK has none to give, and then only baggage could be written.
        if span.get_span_context().is_valid or self.baggage.get_all():
            self.propagate.inject(headers, context=trace.set_span_in_context(span))
        try:
            yield
        except Exception as exc:
            self.fail(span, exc)
            raise
        finally:
            span.end()

    @contextmanager
    def consumer(self, dispatcher: Dispatching, delivered: Delivery) -> Iterator[None]:
        trace = self.trace
        props = delivered.properties
        headers: Mapping[str, Any] = props.headers or {}
        exchange = delivered.exchange
        routing_key = delivered.routing_key
        consumer = dispatcher.consumer
        destination = consumer_destination(exchange, routing_key, consumer.queue)
        creation = self.extract(headers)
        made = trace.get_current_span(creation).get_span_context()
        span = self.tracer.start_span(
            f"process {destination}",
            context=creation,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.destination.name": destination,
            },
            links=[trace.Link(made)] if made.is_valid else None,
        )
        if span.is_recording():
            failures = wire.failures(headers, consumer.routing_keys, consumer.queue, dispatcher.exchange)
            attributes: dict[str, Any] = {
                "messaging.rabbitmq.message.delivery_tag": delivered.delivery_tag,
                "messaging.message.body.size": len(delivered.body),
                "event.attempt": failures + 1,
            }
            if routing_key:
                attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
            logical = wire.logical_routing_key(routing_key, headers, dispatcher.exchange)
            span.set_attributes(_message_attributes(attributes, props, logical))
        token = self.context.attach(trace.set_span_in_context(span))
        try:
            yield
        except Exception as exc:
            self.fail(span, exc)
            raise
        finally:
            self.context.detach(token)
            span.end()

    def fail(self, span: Span, error: BaseException) -> None:
        """Mark ``span`` failed by ``error``, as the conventions' error recording asks."""
        if not span.is_recording():
            return
        span.set_attribute("error.type", type(error).__qualname__)
        span.record_exception(error)
        span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _message_attributes(attributes: dict[str, Any], props: Properties, logical: str) -> dict[str, Any]:
    """``attributes`` with those of the message itself added: its id, correlation id, event routing key."""
    if props.message_id:
        attributes["messaging.message.id"] = props.message_id
    if props.correlation_id:
        attributes["messaging.message.conversation_id"] = props.correlation_id
    if logical:
        attributes["event.routing_key"] = logical
    return attributes


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rabbit-event")
    except PackageNotFoundError:
        return None


@functools.cache
def _otel() -> _Otel | None:
    try:
        return _Otel()
    except ImportError as exc:  # installed (find_spec found it) but broken: publish and consume untraced
        log.warning("opentelemetry is installed but cannot be imported (%s): messages are not traced", exc)
        return None


def traced_send(send: Send) -> Send:
    """Decorates :func:`event.sending.publish`: a producer span around each publish, its context in the
    message's headers. Without opentelemetry, ``send`` itself; with it but nothing to trace (see
    :meth:`_Otel.untraced`), ``send``'s own coroutine, without a span or a frame of ours around it."""
    if not ENABLED:
        return send

    async def spanned(
        otel: _Otel, channel: Any, exchange: str, routing_key: str, body: bytes, props: Properties, rest: Any
    ) -> None:
        with otel.producer(exchange, routing_key, props, len(body)):
            await send(channel, exchange=exchange, routing_key=routing_key, body=body, props=props, **rest)

    @functools.wraps(send)
    def traced(
        channel: Any,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: Properties,
        **rest: Any,
    ) -> Awaitable[None]:
        otel = _otel()
        if otel is None or otel.untraced(props.headers):
            return send(channel, exchange=exchange, routing_key=routing_key, body=body, props=props, **rest)
        return spanned(otel, channel, exchange, routing_key, body, props, rest)

    return cast(Send, traced)


def traced_delivery(handle: Handle) -> Handle:
    """Decorates a :class:`event.dispatch.Dispatcher` method ``(self, delivered, tag, acks)`` that
    settles one delivery: it runs in a consumer span. Without opentelemetry, ``handle`` itself."""
    if not ENABLED:
        return handle

    async def spanned(
        otel: _Otel, dispatcher: Dispatching, delivered: Delivery, rest: tuple[Any, ...]
    ) -> None:
        with otel.consumer(dispatcher, delivered):
            await handle(dispatcher, delivered, *rest)

    @functools.wraps(handle)
    def traced(dispatcher: Dispatching, delivered: Delivery, *rest: Any) -> Coroutine[Any, Any, None]:
        # A plain function: with nothing to trace, ``handle``'s own coroutine, no frame of ours around it.
        otel = _otel()
        if otel is None or otel.passes_nothing_on(delivered.properties.headers):
            return handle(dispatcher, delivered, *rest)
        return spanned(otel, dispatcher, delivered, rest)

    return cast(Handle, traced)


def failed(error: BaseException) -> None:
    """Mark the current consumer span failed by ``error`` (the dispatcher calls it for a failed handler,
    whose error it catches itself). Without opentelemetry, nothing."""
    if not ENABLED:
        return
    otel = _otel()
    if otel is not None:
        otel.fail(otel.trace.get_current_span(), error)
