"""Requests sent for their answer, over RabbitMQ's direct reply-to: the caller's end and the servicer's.

The caller (:class:`Requester`) consumes the pseudo-queue ``amq.rabbitmq.reply-to`` (no-ack) on its own
channel and publishes each request on that same channel, as direct reply-to requires, with
``reply_to=amq.rabbitmq.reply-to`` (the broker rewrites it to the channel's address) and a fresh
``correlation_id``. The servicer (:class:`Replier`) publishes the answer to the default exchange with the
address as routing key; the caller matches it to its request by correlation id. No queue holds replies.

A handler sees a delivery's headers, not its ``reply_to`` and ``correlation_id`` properties, so the
request repeats them in headers (:data:`H_REPLY_TO`, :data:`H_CORRELATION_ID`). The address the broker
writes is learnt once per channel: the caller publishes an empty message with
``reply_to=amq.rabbitmq.reply-to`` to a server-named queue of its own and reads the address back. Other
clients following the AMQP convention (``reply_to`` and ``correlation_id`` properties only) are not
answered by a servicer of event (see docs/protobuf-services.md).

Time limits: a request carries its deadline (:data:`H_REPLY_BY`, epoch milliseconds) and expires from
its queue then (``expiration``), so a servicer that was down does not work on requests nobody waits for
any more; past its timeout the caller raises :class:`ReplyTimeout`. A reply that comes after its caller
stopped waiting is dropped (counted in :attr:`Requester.late`); one whose caller's channel is gone is
dropped by the broker. Replies are at most once: a caller that needs the answer sends the request again.

The servicer publishes replies without ``mandatory``: RabbitMQ before 4.2 returns every mandatory
publish to a reply-to address, delivered or not (the pseudo-queue counts as no queue), and 4.2 counts it
as routed whether or not the caller is still there; on neither does a return say the caller has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from event import driver
from event.config import DEFAULT_EXCHANGE, redact_url
from event.connect import Channel, Connection, Connector, close_quietly, connect, open_channel
from event.errors import ConnectionFailed, PublishNacked, RemoteError, ReplyTimeout, Unroutable
from event.sending import new_message_id, properties

log = logging.getLogger(__name__)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
"""The pseudo-queue a caller consumes for its replies, and the ``reply_to`` its requests carry."""

H_REPLY_TO = "event-reply-to"
"""Header of a request: the address its reply goes to (the ``reply_to`` the broker wrote)."""

H_CORRELATION_ID = "event-correlation-id"
"""Header of a request: the correlation id its reply carries."""

H_REPLY_BY = "event-reply-by"
"""Header of a request: epoch milliseconds after which nobody waits for its reply."""

H_REPLY_ERROR = "event-reply-error"
"""Header of a reply: ``Type: message`` of the exception the servicer raised instead of answering."""

DEFAULT_REPLY_TIMEOUT_S = 30.0

# A request is worked on a little past its deadline (clocks of two machines differ), not much.
CLOCK_SKEW_MS = 1000


def reply_address(headers: Mapping[str, Any]) -> str | None:
    """The address a request's reply goes to, or None when none is wanted (or it is not a reply-to one:
    a servicer never publishes to any other queue for a header's sake)."""
    address = headers.get(H_REPLY_TO)
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    if isinstance(address, str) and address.startswith(DIRECT_REPLY_TO + "."):
        return address
    return None


def expired(headers: Mapping[str, Any], now: float) -> bool:
    """Whether a request's caller stopped waiting before ``now`` (epoch seconds)."""
    reply_by = headers.get(H_REPLY_BY)
    return isinstance(reply_by, int) and now * 1000 > reply_by + CLOCK_SKEW_MS


class _OwnChannel:
    """A connection and a channel of a requester's or a replier's own: opened at first use, and again
    after either was lost; :meth:`_open` says what the channel is made for."""

    def __init__(self, url: str, connector: Connector, name: str) -> None:
        self.url = url
        self.connector = connector
        self.name = name
        self._connection: Connection | None = None
        self._channel: Channel | None = None
        self._opening = asyncio.Lock()

    async def _ready(self) -> Channel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._opening:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            if self._connection is None or self._connection.is_closed:
                await close_quietly(self._connection)
                self._connection = await self.connector(self.url, name=self.name)
            self._channel = await self._open(self._connection)
            return self._channel

    async def _open(self, connection: Connection) -> Channel:
        raise NotImplementedError


class Requester(_OwnChannel):
    """Sends requests to ``exchange`` and waits for their replies, on a connection and channel of its own.

    The connection opens at the first request (or :meth:`connect`) and again after it was lost; requests
    waiting when it is lost raise :class:`ConnectionFailed`. Close it with :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        connector: Connector = connect,
        name: str = "event requester",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(url, connector, name)
        self.exchange = exchange
        self.clock = clock
        self.late = 0  # replies that came after their caller stopped waiting
        self._address = ""
        self._pending: dict[str, asyncio.Future[driver.Delivery]] = {}

    def __repr__(self) -> str:
        return f"Requester(url={redact_url(self.url)!r}, exchange={self.exchange!r})"

    @property
    def address(self) -> str:
        """The channel's reply address (``amq.rabbitmq.reply-to.…``), once connected."""
        return self._address

    async def connect(self) -> None:
        """Open the connection and the reply channel now rather than at the first request."""
        await self._ready()

    async def close(self) -> None:
        """Close the connection; requests still waiting raise :class:`ConnectionFailed`."""
        connection, self._connection, self._channel = self._connection, None, None
        self._fail_pending(ConnectionFailed(f"{self!r} was closed"))
        await close_quietly(connection)

    async def request(
        self,
        routing_key: str,
        body: bytes,
        content_type: str,
        *,
        timeout: float = DEFAULT_REPLY_TIMEOUT_S,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> driver.Delivery:
        """Publish ``body`` with ``routing_key`` and return the reply that answers it.

        Raises :class:`Unroutable` when no queue is bound to ``routing_key``, :class:`RemoteError` when the
        servicer raised, :class:`ReplyTimeout` when no reply came within ``timeout`` seconds (the request,
        not consumed by then, expires from its queue).
        """
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        loop = asyncio.get_running_loop()
        correlation_id = new_message_id()
        waiting: asyncio.Future[driver.Delivery] = loop.create_future()
        try:
            async with asyncio.timeout(timeout) as limit:
                channel = await self._ready()
                reply_by = math.ceil((self.clock() + timeout) * 1000)
                props = properties(
                    message_id=message_id,
                    headers={
                        **(headers or {}),
                        H_REPLY_TO: self._address,
                        H_CORRELATION_ID: correlation_id,
                        H_REPLY_BY: reply_by,
                    },
                    expiration=str(math.ceil(timeout * 1000)),
                    now=self.clock(),
                    content_type=content_type,
                )
                props.reply_to = DIRECT_REPLY_TO  # rewritten by the broker: the convention, for others
                props.correlation_id = correlation_id
                self._pending[correlation_id] = waiting
                try:
                    await channel.basic_publish(
                        body,
                        exchange=self.exchange,
                        routing_key=routing_key,
                        properties=props,
                        mandatory=True,
                    )
                except driver.Returned as exc:
                    raise Unroutable(
                        f"no queue is bound to routing key {routing_key!r} on exchange {self.exchange!r}: "
                        f"nothing serves the request ({exc.message.reply_text})"
                    ) from exc
                except driver.Nacked as exc:
                    raise PublishNacked(f"the broker nacked the request to {routing_key!r}") from exc
                except (driver.AMQPError, ConnectionError) as exc:
                    raise ConnectionFailed(f"the request to {routing_key!r} was not sent: {exc}") from exc
                reply = await waiting
        except TimeoutError as exc:
            if not limit.expired():
                raise
            raise ReplyTimeout(
                f"no reply to the request to {routing_key!r} within {timeout:g} s: no servicer consumed "
                f"it in time, or it is slow; the request expires from its queue"
            ) from exc
        finally:
            self._pending.pop(correlation_id, None)
        error = (reply.properties.headers or {}).get(H_REPLY_ERROR)
        if error is not None:
            text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
            kind, _, detail = text.partition(": ")
            raise RemoteError(routing_key, kind, detail)
        return reply

    async def _open(self, connection: Connection) -> Channel:
        channel = await open_channel(connection, confirms=True)
        try:
            await channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, no_ack=True)
            self._address = await _learn_address(channel)
        except BaseException:
            await close_quietly(channel)
            raise
        # Runs a loop turn after the close, when this channel is already _ready's.
        channel.closing.add_done_callback(lambda closing: self._on_closed(channel, closing))
        return channel

    def _on_reply(self, delivery: driver.Delivery) -> None:
        # In the driver's read loop: hand the reply over, never block.
        waiting = self._pending.pop(delivery.properties.correlation_id or "", None)
        if waiting is None or waiting.done():
            self.late += 1
            log.debug("a reply (correlation id %r) came after its caller stopped waiting: dropped",
                      delivery.properties.correlation_id)  # fmt: skip
            return
        waiting.set_result(delivery)

    def _on_closed(self, channel: Channel, closing: asyncio.Future[None]) -> None:
        # The reply channel (or its connection) is gone: so is every reply still to come on it. Not those
        # of a newer channel: this callback runs a loop turn after the close.
        if channel is not self._channel:
            return
        reason = None if closing.cancelled() else closing.exception()
        self._fail_pending(ConnectionFailed(f"{self!r} lost its reply channel: {reason or 'closed'}"))

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            if not waiting.done():
                waiting.set_exception(error)


async def _learn_address(channel: Channel) -> str:
    """The address the broker writes into the ``reply_to`` of what ``channel`` publishes: an empty message
    sent to a queue of our own, read back. Only the broker knows it (it encodes the channel)."""
    declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
    try:
        await channel.basic_publish(
            b"",
            exchange="",
            routing_key=declared.queue,
            properties=driver.Properties(reply_to=DIRECT_REPLY_TO),
        )
        got = await channel.basic_get(declared.queue, no_ack=True)
    finally:
        with contextlib.suppress(driver.AMQPError, ConnectionError):
            await channel.queue_delete(declared.queue)
    address = got.properties.reply_to if got is not None else None
    if not address or not address.startswith(DIRECT_REPLY_TO + "."):
        raise ConnectionFailed(f"the broker did not write a direct reply-to address (got {address!r})")
    log.debug("reply address %s, learnt through the queue %s (deleted)", address, declared.queue)
    return str(address)


class Replier(_OwnChannel):
    """Publishes the servicer's replies to their callers' addresses, on a connection of its own.

    The connection opens at the first reply and again after it was lost. Replies are sent without
    publisher confirms: the broker delivers a reply straight to its caller's channel or drops it, and
    nothing (not even ``mandatory``, see the module's text) says which.
    """

    def __init__(self, url: str, *, connector: Connector = connect, name: str = "event replier") -> None:
        super().__init__(url, connector, name)

    def __repr__(self) -> str:
        return f"Replier(url={redact_url(self.url)!r})"

    async def answer(self, request_headers: Mapping[str, Any], body: bytes, content_type: str) -> None:
        """Send ``body`` as the reply to the request with ``request_headers`` (a no-op when it wants none)."""
        await self._send(request_headers, body, content_type, None)

    async def error(self, request_headers: Mapping[str, Any], exc: BaseException) -> None:
        """Tell the caller of the request with ``request_headers`` that the servicer raised ``exc``."""
        await self._send(request_headers, b"", "", f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        await close_quietly(connection)

    async def _send(
        self, request_headers: Mapping[str, Any], body: bytes, content_type: str, error: str | None
    ) -> None:
        address = reply_address(request_headers)
        if address is None:
            return
        correlation_id = request_headers.get(H_CORRELATION_ID)
        if isinstance(correlation_id, bytes):
            correlation_id = correlation_id.decode(errors="replace")
        props = driver.Properties(
            content_type=content_type or None,
            correlation_id=str(correlation_id) if correlation_id is not None else None,
            headers={H_REPLY_ERROR: error} if error is not None else None,
        )
        channel = await self._ready()
        try:
            await channel.basic_publish(body, exchange="", routing_key=address, properties=props)
        except (driver.AMQPError, ConnectionError) as exc:
            raise ConnectionFailed(f"the reply to {address!r} was not sent: {exc}") from exc

    async def _open(self, connection: Connection) -> Channel:
        return await open_channel(connection, confirms=False)


__all__ = [
    "DEFAULT_REPLY_TIMEOUT_S",
    "DIRECT_REPLY_TO",
    "H_CORRELATION_ID",
    "H_REPLY_BY",
    "H_REPLY_ERROR",
    "H_REPLY_TO",
    "Replier",
    "Requester",
    "expired",
    "reply_address",
]
