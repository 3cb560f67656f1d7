"""Publishing with confirms, below the hot path: the one way `event` stores a message on the broker.

A :class:`Sender` keeps one confirm channel on a connection and publishes on it for everybody: a
:class:`event.Publisher`'s callers, a pool's retry and dead copies and cron ticks, the dead-queue tools,
the gateway's commands. Publishes are pipelined: each caller awaits only its own confirm, and the
driver matches the broker's confirms (``multiple`` ones too) to them, so many are in flight at once.

Its rules, in this one place:

- The channel is opened once, under a lock, however many publishes find it closed (a channel error,
  such as a queue or exchange deleted under us, closes only the channel); a connection that is gone
  is the :data:`ConnectionSource`'s business: a publisher reconnects, a pool waits for its own.
- A publish the broker nacked was not stored. After a node's death RabbitMQ 3.10 nacks everything a
  channel publishes to a quorum queue still electing its leader, while a new channel is acked at once
  (seen on a three-node cluster): it is sent again on a fresh channel after each of
  :data:`NACK_PAUSES_S`, then :class:`PublishNacked` is raised (a full queue nacks every try too).
- A publish whose connection died before its confirm came is sent again on the next connection while
  ``resend_within`` lasts (same message id: a consumer may see it twice, never zero times).
- A confirm that has not come within ``timeout`` fails its publish with :class:`PublishTimeout`, about
  then: the channel's one timer checks the deadlines of every publish on it (a timer per publish was a
  good part of a publish's cost).
- Every failure is a :class:`PublishError` or :class:`ConnectionFailed` naming the exchange and key.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from event import driver, tracing, wire
from event.config import DEFAULT_PUBLISH_TIMEOUT_S
from event.connect import Channel, Connection, broker_reason, close_quietly, open_channel
from event.errors import ConnectionFailed, PublishNacked, PublishTimeout, Unroutable
from event.metrics import PublishStats

NACK_PAUSES_S = (0.1, 0.5, 1.0, 2.0)  # before each re-send of a nacked publish on a fresh channel
RESEND_PAUSE_S = 0.1  # before a re-send after the connection was lost

# A live connection by ``deadline`` (event-loop time), or ConnectionFailed: what a Sender publishes on.
ConnectionSource = Callable[[float], Awaitable[Connection]]


def properties(
    *,
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    expiration: str | None = None,
    now: float | None = None,
    content_type: str = wire.CONTENT_TYPE,
    priority: int | None = None,
) -> driver.Properties:
    """Hutch's message properties (spec section 3): JSON (or ``content_type``), persistent, a UUID, a
    whole-second timestamp (of ``now``, epoch seconds, if given: the publisher's clock), and the
    ``priority`` property when one is given (none: the broker's 0)."""
    return driver.Properties(
        content_type=content_type,
        delivery_mode=wire.PERSISTENT,
        message_id=message_id or new_message_id(),
        timestamp=_timestamp(int(time.time() if now is None else now)),
        headers=dict(headers) if headers else None,
        expiration=expiration,
        priority=priority,
    )


# Message ids: random version-4 UUIDs, as str(uuid.uuid4()) writes them, made 256 at a time from one
# os.urandom call: uuid4's own UUID object and its formatting cost several times the randomness. A
# list's pop hands each out once, whichever thread asks; a forked child draws its own.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_ids: list[str] = []
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_ids.clear)


def new_message_id() -> str:
    """A new random UUID (version 4) as text, ``xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx``."""
    while True:
        try:
            return _ids.pop()
        except IndexError:
            raw = os.urandom(16 * 256).hex()
            _ids.extend(
                [
                    f"{raw[j : j + 8]}-{raw[j + 8 : j + 12]}-4{raw[j + 13 : j + 16]}-"
                    f"{_VARIANT[raw[j + 16]]}{raw[j + 17 : j + 20]}-{raw[j + 20 : j + 32]}"
                    for j in range(0, len(raw), 32)
                ]
            )


_stamp: tuple[int, datetime] = (0, datetime.fromtimestamp(0, tz=UTC))  # the last second asked for


def _timestamp(second: int) -> datetime:
    # One datetime per second rather than per message: most publishes of a second share it. One tuple,
    # swapped whole, so that a thread never reads one second's number with another's datetime.
    global _stamp
    cached = _stamp
    if cached[0] == second:
        return cached[1]
    stamp = datetime.fromtimestamp(second, tz=UTC)
    _stamp = (second, stamp)
    return stamp


def copy_properties(
    props: driver.Properties, headers: dict[str, Any], level: int | None
) -> driver.Properties:
    """The properties of a copy (retry, re-park, dead, requeue): the original's, persistent, new headers.

    The priority is the original's: a retried message keeps its place before lower priorities.
    ``level`` sets the per-message TTL of a delay queue; a dead copy has none, so it never expires early.
    """
    return driver.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        delivery_mode=wire.PERSISTENT,
        message_id=props.message_id or new_message_id(),
        timestamp=props.timestamp,
        headers=headers,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        expiration=None if level is None else str(level * 1000),
        message_type=props.message_type,
        app_id=props.app_id,
        priority=props.priority,
    )


@tracing.traced_send  # a producer span and trace context in the headers, when opentelemetry is installed
async def publish(
    channel: Channel,
    *,
    exchange: str,
    routing_key: str,
    body: bytes,
    props: driver.Properties,
    mandatory: bool = False,
    timeout: float = DEFAULT_PUBLISH_TIMEOUT_S,
    stats: PublishStats | None = None,
) -> None:
    """Publish one message on a confirm ``channel`` and wait for its confirm, once (no re-send).

    Every failure is a PublishError (:class:`Unroutable`, :class:`PublishNacked`,
    :class:`PublishTimeout`) or :class:`ConnectionFailed` (the channel or connection closed)."""
    started = time.perf_counter()
    try:
        # The channel's one timer bounds the confirm: an asyncio.timeout here cost a timer per publish.
        await channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=props,
            mandatory=mandatory,
            timeout=timeout,
        )
    except Exception as exc:
        error = _failure(exc, f"exchange {exchange!r}, routing key {routing_key!r}", timeout)
        if stats is not None:
            stats.failed(exchange, error)
        if error is exc:
            raise
        raise error from exc
    if stats is not None:
        stats.ok(exchange, time.perf_counter() - started)


def _failure(exc: Exception, where: str, timeout: float) -> Exception:
    if isinstance(exc, driver.Returned):
        return Unroutable(f"message to {where} matched no queue and was returned (mandatory=True)")
    if isinstance(exc, driver.Nacked):
        return PublishNacked(f"the broker nacked the message to {where}: it was not stored")
    if isinstance(exc, TimeoutError):
        return PublishTimeout(f"no confirm for the message to {where} within {timeout:g} s")
    if isinstance(exc, driver.AMQPError | ConnectionError):
        return ConnectionFailed(
            f"could not publish to {where}: the connection or channel is closed ({broker_reason(exc)})"
        )
    return exc  # not the broker's: a header the client cannot encode (TypeError), a bug


class Sender:
    """Publishes with confirms on one channel of the connection ``connection`` gives (see the module).

    ``timeout`` bounds each confirm (and the opening of a channel); ``resend_within`` how long a publish
    may go on being sent again after its connection died (0: it fails at once). ``on_closed`` is told
    when the broker closes the channel under a live connection, ``on_returned`` the exchange and
    routing key of a ``mandatory`` publish that came back, before :class:`Unroutable` is raised.
    """

    def __init__(
        self,
        connection: ConnectionSource,
        *,
        timeout: float = DEFAULT_PUBLISH_TIMEOUT_S,
        resend_within: float = 0.0,
        stats: PublishStats | None = None,
        on_closed: Callable[[BaseException], None] | None = None,
        on_returned: Callable[[str, str], None] | None = None,
    ) -> None:
        self._connection = connection
        self.timeout = timeout
        self.resend_within = resend_within
        self.stats = stats
        self.on_closed = on_closed
        self.on_returned = on_returned
        self._channel: Channel | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def over(cls, connection: Connection, *, timeout: float = DEFAULT_PUBLISH_TIMEOUT_S) -> Sender:
        """A sender on ``connection`` alone (no reconnect): for tools holding one connection."""

        async def source(deadline: float) -> Connection:
            if connection.is_closed:
                raise ConnectionFailed(f"the connection to {connection.node} is closed")
            return connection

        return cls(source, timeout=timeout)

    async def open(self) -> None:
        """Open the channel now, rather than at the first publish (raises :class:`ConnectionFailed`)."""
        await self._ready(asyncio.get_running_loop().time() + (self.resend_within or self.timeout))

    async def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: driver.Properties,
        *,
        mandatory: bool = False,
    ) -> None:
        """Publish one message and return once the broker confirmed it (see the module for the rules)."""
        # The usual case first: an open channel, one publish, its confirm. Only a failure needs the
        # clock, the counters and the loop of the rules (_send_again).
        channel = self._channel
        try:
            if channel is None or channel.is_closed:
                await self._send_again(exchange, routing_key, body, props, mandatory, None, None)
                return
            try:
                await self._publish(channel, exchange, routing_key, body, props, mandatory)
            except (ConnectionFailed, PublishNacked) as exc:
                await self._send_again(exchange, routing_key, body, props, mandatory, channel, exc)
        except Unroutable:
            if self.on_returned is not None:
                self.on_returned(exchange, routing_key)
            raise

    def _publish(
        self,
        channel: Channel,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: driver.Properties,
        mandatory: bool,
    ) -> Awaitable[None]:
        # One try on ``channel``, its coroutine handed back as it is (no frame of ours around it).
        return publish(
            channel,
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            props=props,
            mandatory=mandatory,
            timeout=self.timeout,
            stats=self.stats,
        )

    async def _send_again(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: driver.Properties,
        mandatory: bool,
        channel: Channel | None,
        failed: ConnectionFailed | PublishNacked | None,
    ) -> None:
        # The rules, from the failure of a first try on ``channel`` (or from none: no channel was open).
        # ``resend_within`` runs from here: from the connection's loss, as the class says.
        loop = asyncio.get_running_loop()
        started = loop.time()
        resend_until = started + self.resend_within
        again = False
        nacks = 0
        while True:
            if failed is None:
                channel = self._channel
                if channel is None or channel.is_closed:
                    channel = await self._ready(started + (self.resend_within or self.timeout))
                if again and self.stats is not None:
                    self.stats.resent += 1
                try:
                    await self._publish(channel, exchange, routing_key, body, props, mandatory)
                    return
                except (ConnectionFailed, PublishNacked) as exc:
                    failed = exc
            if isinstance(failed, ConnectionFailed):
                if loop.time() >= resend_until:
                    raise failed
                failed = None
                again = True
                await asyncio.sleep(RESEND_PAUSE_S)
            else:
                if nacks >= len(NACK_PAUSES_S):
                    raise failed
                await asyncio.sleep(NACK_PAUSES_S[nacks])
                nacks += 1
                failed = None
                again = True
                assert channel is not None  # a nack came on a channel
                await self._replace(channel)

    async def _ready(self, deadline: float) -> Channel:
        # Once, however many publishes found the channel closed: the others wait on the lock, and find
        # the new channel open. The connection source keeps to the deadline itself (a publisher's
        # reconnect says why it gave up); the lock and the channel's opening are bounded here.
        try:
            async with asyncio.timeout_at(deadline):
                await self._lock.acquire()
        except TimeoutError:
            raise ConnectionFailed("no channel to publish on: another publish is still opening one") from None
        try:
            while True:
                channel = self._channel
                if channel is not None and not channel.is_closed:
                    return channel
                connection = await self._connection(deadline)
                try:
                    async with asyncio.timeout(self.timeout):
                        channel = await open_channel(connection, confirms=True)
                except TimeoutError:
                    raise ConnectionFailed(
                        f"{connection.node} did not open a channel within {self.timeout:g} s"
                    ) from None
                except ConnectionFailed:
                    if not connection.is_closed:
                        raise
                    continue  # it went meanwhile: the source gives another, or says why not
                channel.closing.add_done_callback(functools.partial(self._closed, connection, channel))
                self._channel = channel
        finally:
            self._lock.release()

    def _closed(self, connection: Connection, channel: Channel, done: asyncio.Future[None]) -> None:
        error = None if done.cancelled() else done.exception()
        if error is None or connection.is_closed or self._channel is not channel:
            return  # closed by us, or with its connection, or replaced already
        if self.on_closed is not None:
            self.on_closed(error)

    async def _replace(self, nacked: Channel) -> None:
        # A fresh channel for the re-sends of publishes a channel nacked: once, however many it nacked;
        # those still in flight on the old one are sent again by their own callers.
        async with self._lock:
            if self._channel is not nacked:
                return
            self._channel = None
        await close_quietly(nacked)

    async def close(self) -> None:
        """Close the channel (not the connection); a later publish opens another."""
        channel, self._channel = self._channel, None
        await close_quietly(channel)


__all__ = [
    "NACK_PAUSES_S",
    "ConnectionSource",
    "Sender",
    "copy_properties",
    "properties",
    "publish",
]
