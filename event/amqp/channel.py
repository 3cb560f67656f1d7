"""One AMQP channel of :class:`event.amqp.connection.AMQPConnection`: RPCs, consumers, publishes.

The connection's protocol hands each frame of this channel to :meth:`AMQPChannel.on_method`,
:meth:`~AMQPChannel.on_header` or :meth:`~AMQPChannel.on_body` straight from its receive buffer. A
``Basic.Deliver`` whose header and body have arrived with it (the usual case) is decoded and handed to
its consumer's callback in one step; otherwise the delivery completes with its last body frame. Either
way the callback runs there and then, in delivery order. Everything sent goes through the
connection's :meth:`~AMQPConnection.send`, which writes once per loop turn.

Publisher confirms are matched by delivery tag (``multiple`` honoured); a ``Basic.Return`` is matched
to the publish it belongs to by the confirm that follows it (see :meth:`AMQPChannel._match_returns`).

Held to the protocol, with bounded time and memory whatever the broker sends (each violation raises
:class:`event.amqp.frames.Violation`, and the connection closes with its code):

- a confirm of a tag never published is 503 COMMAND_INVALID (RabbitMQ answers a client's ack of an
  unknown tag with 406 on the channel; a broker confirming what was never sent is broken, not the
  channel, so the connection ends); settling a confirm walks only tags published, each once;
- a method where a content header or body was due, a content header or body with no method or header
  before it, is 505 UNEXPECTED_FRAME; more body than the header's ``body_size`` (or a ``body_size``
  above :data:`BODY_MAX`) is 501 FRAME_ERROR: nothing reaches a handler that its frames do not fully
  and consistently describe;
- a delivery tag not above the last one (of a delivery to be acked: direct reply-to repeats its tag to
  its no_ack consumer), or a ``Basic.GetOk`` with no ``Basic.Get`` asked, or any other
  method not due, is 503 COMMAND_INVALID; a delivery for a consumer tag we do not know is rejected
  with requeue (as pika does) and logged;
- a publish that timed out or whose caller was cancelled is forgotten at once (body included); a
  ``Basic.Return`` that no pending mandatory publish could claim is dropped when it arrives, and the
  returns kept never outnumber the mandatory publishes pending;
- read back-pressure: the deliveries in hand (delivered to a consumer that acks, not yet acked,
  nacked or rejected) are counted per channel; past :data:`HOLD_FACTOR` times the prefetch its
  consumers were given plus :data:`HOLD_MARGIN`, the connection stops reading until they drain back
  to the prefetch. A broker that honours ``basic.qos`` never sends more than the prefetch, so this
  only bounds a peer that ignores it; a consumer with prefetch 0 (unlimited) or ``no_ack`` sets no
  bound. The prefetch counted is each consumer's at its ``ConsumeOk`` (RabbitMQ applies a
  ``basic.qos`` to the consumers that come after it), and a cancelled consumer's share is kept, so
  that the deliveries it leaves unsettled never make the channel pause.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pamqp.frame
from pamqp import base
from pamqp import commands as spec

from event import driver
from event.amqp import frames

if TYPE_CHECKING:
    from event.amqp.connection import AMQPConnection

log = logging.getLogger(__name__)

Frame = TypeVar("Frame", bound=base.Frame)

# What a channel is receiving after a method that carries content.
_NOTHING, _DELIVER, _GET, _RETURN = 0, 1, 2, 3

CLOSE_TIMEOUT = 10.0  # seconds to wait for the broker's Channel.CloseOk
PUBLISH_METHODS_KEPT = 512  # Basic.Publish frames a channel keeps for reuse
BODY_MAX = 512 * 1024 * 1024  # the largest message body accepted: RabbitMQ's own hard limit (512 MiB)
# Reading pauses past HOLD_FACTOR x the prefetch allowance + HOLD_MARGIN deliveries in hand, and resumes
# at the allowance: room for a broker that is a little late with its qos, none for one that ignores it.
HOLD_FACTOR = 2
HOLD_MARGIN = 64
_NO_LIMIT = 1 << 62


def retrieve(future: asyncio.Future[Any]) -> None:
    """A done callback so that a ``closing`` future nobody awaited never logs "exception was never
    retrieved": a channel's or connection's end is news to whoever watches it, not an error to log."""
    if not future.cancelled():
        future.exception()


def _copied(buf: bytearray, start: int, end: int) -> bytes:
    """``buf[start:end]`` as bytes. A large body frame (up to ``frame_max``, 128 KiB) leaves the receive
    buffer in one copy, through a view (8 → 3.6 µs for 128 KiB here), where ``bytes(buf[start:end])``
    copies twice (a bytearray slice first); a small one the plain way, which costs less than making the
    views (260 against 600 ns). The views are gone when this returns: the buffer may resize at once."""
    if end - start < 4096:
        return bytes(buf[start:end])
    with memoryview(buf) as view:
        return bytes(view[start:end])


class _Rpc:
    """A synchronous method sent (or waiting its turn) and the reply it waits for."""

    __slots__ = ("convert", "future", "method", "replies")

    def __init__(
        self,
        method: base.Frame,
        replies: tuple[type[base.Frame], ...],
        future: asyncio.Future[Any],
        convert: Callable[[Any], Any] | None,
    ) -> None:
        self.method = method
        self.replies = replies
        self.future = future
        self.convert = convert


class _ConsumerCallbacks:
    __slots__ = ("acks", "on_cancel", "on_delivery")

    def __init__(self, on_delivery: driver.OnDelivery, on_cancel: driver.OnCancel | None, acks: bool) -> None:
        self.on_delivery = on_delivery
        self.on_cancel = on_cancel
        self.acks = acks  # its deliveries stay in hand until acked (not no_ack)


def _arguments(arguments: driver.Arguments | None) -> dict[str, Any]:
    return dict(arguments) if arguments else {}


class AMQPChannel:
    """A :class:`event.driver.Channel` on our own protocol."""

    def __init__(self, connection: AMQPConnection, number: int, *, confirms: bool) -> None:
        self._connection = connection
        self._loop = connection.loop
        self._payload_max = connection.payload_max  # negotiated before any channel opens
        self._number = number
        self._confirms = confirms
        self._closed = False  # no more use: we began closing it, or it is gone
        self._close_ok: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] = self._loop.create_future()
        self._closing.add_done_callback(retrieve)
        self._ended: Callable[[], BaseException] | None = None  # makes the error it closed with
        self._rpcs: deque[_Rpc] = deque()  # the head is in flight, the rest wait their turn
        self._consumers: dict[str, _ConsumerCallbacks] = {}
        # Flow control: the broker's Channel.Flow; publishes wait while it is off.
        self._flow = True
        self._flow_on = asyncio.Event()
        self._flow_on.set()
        # Publisher confirms: delivery tag -> the publish's future, in tag order (inserted so).
        self._published = 0
        self._lowest = 1  # no unconfirmed tag below this
        self._unconfirmed: dict[int, asyncio.Future[None]] = {}
        # Mandatory publishes not yet confirmed: tag -> (exchange, routing key, body), and the returns
        # that arrived since the last confirm (the broker sends a Return just before its Ack).
        self._mandatory: dict[int, tuple[str, str, bytes]] = {}
        self._returns: list[driver.ReturnedMessage] = []
        self._returned: dict[int, driver.ReturnedMessage] = {}
        # The Basic.Publish frames sent lately, by (exchange, routing key, mandatory): most publishers
        # send to a handful of routing keys, and the frame is the same for each.
        self._publish_methods: dict[tuple[str, str, bool], bytes] = {}
        # The deadlines of publishes awaiting their confirm with a timeout, earliest first, as
        # (loop time, delivery tag), and the one timer that fails those past theirs (see _expire).
        self._deadlines: deque[tuple[float, int]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        # The message being received: what announced it, its properties, size and body so far.
        self._in_kind = _NOTHING
        self._in_method: Any = None
        self._in_properties: driver.Properties | None = None
        self._in_size = 0
        self._in_parts: list[bytes] | None = None
        self._in_got = 0
        self._last_tag = 0  # the last delivery tag received (Deliver or GetOk): they only go up
        # Read back-pressure: the delivery tags in hand (in tag order), the prefetch in force (at the
        # last QosOk), the allowance of the consumers so far, and where reading pauses and resumes.
        self._in_hand: dict[int, None] = {}
        self._prefetch = 0
        self._allowance = 0
        self._pause_at = _NO_LIMIT
        self._holding = False

    # --- the driver.Channel protocol --------------------------------------------------------------

    @property
    def number(self) -> int:
        return self._number

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def closing(self) -> asyncio.Future[None]:
        return self._closing

    @property
    def awaits_broker(self) -> bool:
        """Whether something waits for the broker here: an RPC's reply, a publish's confirm, a CloseOk."""
        return bool(self._rpcs or self._unconfirmed) or (
            self._close_ok is not None and not self._close_ok.done()
        )

    async def close(self) -> None:
        """Close the channel (``Channel.Close``, then the broker's ``CloseOk``); publishes still
        unconfirmed fail with :class:`~event.driver.ChannelInvalidState`."""
        if self._closing.done():
            return
        if self._close_ok is None:
            self._closed = True
            self._close_ok = self._loop.create_future()
            self._connection.send(
                pamqp.frame.marshal(spec.Channel.Close(200, "Normal shutdown", 0, 0), self._number)
            )
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self._close_ok)
        except TimeoutError:
            self.finish(None)  # the broker never answered: forget the channel on our side

    async def basic_qos(self, prefetch_count: int) -> None:
        def took(_: spec.Basic.QosOk) -> None:
            self._prefetch = prefetch_count  # for the consumers that come after it

        await self._call(spec.Basic.Qos(prefetch_count=prefetch_count), spec.Basic.QosOk, took)

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: driver.Arguments | None = None,
    ) -> None:
        method = spec.Exchange.Declare(
            exchange=exchange,
            exchange_type=exchange_type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=_arguments(arguments),
        )
        await self._call(method, spec.Exchange.DeclareOk)

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await self._call(spec.Exchange.Delete(exchange=exchange, if_unused=if_unused), spec.Exchange.DeleteOk)

    async def exchange_bind(
        self, destination: str, source: str, routing_key: str = "", arguments: driver.Arguments | None = None
    ) -> None:
        method = spec.Exchange.Bind(
            destination=destination, source=source, routing_key=routing_key, arguments=_arguments(arguments)
        )
        await self._call(method, spec.Exchange.BindOk)

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: driver.Arguments | None = None,
    ) -> driver.QueueInfo:
        method = spec.Queue.Declare(
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=_arguments(arguments),
        )
        ok = await self._call(method, spec.Queue.DeclareOk)
        return driver.QueueInfo(str(ok.queue), int(ok.message_count or 0), int(ok.consumer_count or 0))

    async def queue_bind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: driver.Arguments | None = None
    ) -> None:
        method = spec.Queue.Bind(
            queue=queue, exchange=exchange, routing_key=routing_key, arguments=_arguments(arguments)
        )
        await self._call(method, spec.Queue.BindOk)

    async def queue_unbind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: driver.Arguments | None = None
    ) -> None:
        method = spec.Queue.Unbind(
            queue=queue, exchange=exchange, routing_key=routing_key, arguments=_arguments(arguments)
        )
        await self._call(method, spec.Queue.UnbindOk)

    async def queue_delete(self, queue: str, *, if_unused: bool = False, if_empty: bool = False) -> int:
        method = spec.Queue.Delete(queue=queue, if_unused=if_unused, if_empty=if_empty)
        ok = await self._call(method, spec.Queue.DeleteOk)
        return int(ok.message_count or 0)

    async def queue_purge(self, queue: str) -> int:
        ok = await self._call(spec.Queue.Purge(queue=queue), spec.Queue.PurgeOk)
        return int(ok.message_count or 0)

    async def basic_consume(
        self,
        queue: str,
        on_delivery: driver.OnDelivery,
        *,
        consumer_tag: str = "",
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: driver.Arguments | None = None,
        on_cancel: driver.OnCancel | None = None,
    ) -> str:
        consumer = _ConsumerCallbacks(on_delivery, on_cancel, not no_ack)

        def register(ok: spec.Basic.ConsumeOk) -> str:
            # In the read path, before any delivery that follows the ConsumeOk in the same read.
            tag = str(ok.consumer_tag)
            self._consumers[tag] = consumer
            if not no_ack:
                if self._prefetch == 0:  # unlimited: the broker may send it everything
                    self._allowance = _NO_LIMIT
                elif self._allowance < _NO_LIMIT:
                    self._allowance += self._prefetch
                    self._pause_at = HOLD_FACTOR * self._allowance + HOLD_MARGIN
                if self._allowance >= _NO_LIMIT:
                    self._pause_at = _NO_LIMIT
                if self._holding and len(self._in_hand) <= self._allowance:
                    self._let_go()
            return tag

        method = spec.Basic.Consume(
            queue=queue,
            consumer_tag=consumer_tag,
            no_ack=no_ack,
            exclusive=exclusive,
            arguments=_arguments(arguments),
        )
        tag: str = await self._call(method, spec.Basic.ConsumeOk, register)
        return tag

    async def basic_cancel(self, consumer_tag: str) -> None:
        def drop(ok: spec.Basic.CancelOk) -> None:
            self._consumers.pop(consumer_tag, None)

        await self._call(spec.Basic.Cancel(consumer_tag=consumer_tag), spec.Basic.CancelOk, drop)

    async def basic_get(self, queue: str, *, no_ack: bool = False) -> driver.Delivery | None:
        # A GetOk completes this RPC only once its content has arrived (see _complete); a GetEmpty at once.
        def empty(_: spec.Basic.GetEmpty) -> None:
            return None

        got: driver.Delivery | None = await self._call(
            spec.Basic.Get(queue=queue, no_ack=no_ack), spec.Basic.GetEmpty, empty, also=spec.Basic.GetOk
        )
        return got

    def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        if self._closed:
            raise driver.ChannelInvalidState(f"channel {self._number} is closed")
        self._connection.send(frames.encode_ack(self._number, delivery_tag, multiple))
        if self._in_hand:
            self._settle(delivery_tag, multiple)

    def basic_nack(self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True) -> None:
        if self._closed:
            raise driver.ChannelInvalidState(f"channel {self._number} is closed")
        self._connection.send(frames.encode_nack(self._number, delivery_tag, multiple, requeue))
        if self._in_hand:
            self._settle(delivery_tag, multiple)

    def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        if self._closed:
            raise driver.ChannelInvalidState(f"channel {self._number} is closed")
        self._connection.send(frames.encode_reject(self._number, delivery_tag, requeue))
        if self._in_hand:
            self._settle(delivery_tag, False)

    def _settle(self, delivery_tag: int, multiple: bool) -> None:
        """Deliveries the user settled are no longer in hand; reading resumes once few enough are."""
        in_hand = self._in_hand
        if not multiple:
            in_hand.pop(delivery_tag, None)
        elif delivery_tag == 0 or next(reversed(in_hand)) <= delivery_tag:  # 0: every one (the spec)
            in_hand.clear()
        else:
            settled = []
            for tag in in_hand:  # in tag order: only those settled are walked
                if tag > delivery_tag:
                    break
                settled.append(tag)
            for tag in settled:
                del in_hand[tag]
        if self._holding and len(in_hand) <= self._allowance:
            self._let_go()

    def _let_go(self) -> None:
        self._holding = False
        self._connection.release(self._number)

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: driver.Properties | None = None,
        mandatory: bool = False,
        timeout: float | None = None,
    ) -> None:
        if self._closed:
            raise driver.ChannelInvalidState(f"channel {self._number} is closed")
        connection = self._connection
        if connection.blocked is not None or connection.paused or not self._flow:
            if timeout is None:
                await self._publishable()
            else:  # rare: the wait for the broker counts against the publish's timeout
                waited = self._loop.time()
                async with asyncio.timeout(timeout):
                    await self._publishable()
                timeout = max(0.0, timeout - (self._loop.time() - waited))
        method = self._publish_methods.get((exchange, routing_key, mandatory))
        if method is None:
            method = frames.encode_publish_method(self._number, exchange, routing_key, mandatory)
            if len(self._publish_methods) >= PUBLISH_METHODS_KEPT:
                self._publish_methods.clear()
            self._publish_methods[exchange, routing_key, mandatory] = method
        connection.send(method)
        if len(body) < frames.LARGE_BODY:
            connection.send(frames.encode_content(self._number, properties, body, connection.frame_max))
        else:  # its frames written around the body's own bytes, not joined into a copy of it
            connection.send_parts(
                frames.encode_content_parts(self._number, properties, body, connection.frame_max)
            )
        if not self._confirms:
            return
        self._published += 1
        tag = self._published
        confirmed: asyncio.Future[None] = self._loop.create_future()
        self._unconfirmed[tag] = confirmed
        if mandatory:
            self._mandatory[tag] = (exchange, routing_key, body)
        if timeout is not None:
            self._expire_at(self._loop.time() + timeout, tag)
        try:
            await confirmed
        except asyncio.CancelledError:
            self._forget(tag)  # nobody waits for its confirm: keep neither the future nor the body
            raise

    def _forget(self, tag: int) -> None:
        """Drop the bookkeeping of a publish nobody waits for; its late confirm is then ignored."""
        self._unconfirmed.pop(tag, None)
        if self._mandatory:
            self._mandatory.pop(tag, None)
            self._returned.pop(tag, None)
            if self._returns:
                self._drop_unclaimed_returns()

    async def _publishable(self) -> None:
        # While the broker blocks the connection, our writes back up, or the broker turned flow off.
        connection = self._connection
        while connection.blocked is not None or connection.paused or not self._flow:
            await connection.publishable(self._flow_on)
            if self._closed:  # while it waited: fail as a publish in flight does
                raise (
                    self._ended()
                    if self._ended is not None
                    else driver.ChannelInvalidState(f"channel {self._number} was closed")
                )

    # --- confirm deadlines: one timer per channel, not one per publish ------------------------------

    def _expire_at(self, deadline: float, tag: int) -> None:
        """Fail the publish of ``tag`` with TimeoutError if it is still unconfirmed at ``deadline``."""
        # The timer, when there is one, fires at the earliest deadline or before (it re-arms itself).
        deadlines = self._deadlines
        sweep = self._sweep
        if deadlines and deadline >= deadlines[-1][0]:
            deadlines.append((deadline, tag))  # the usual case: one timeout for every publish
            if sweep is not None:
                return
        else:
            bisect.insort(deadlines, (deadline, tag))  # a shorter timeout than those before it
            if sweep is not None:
                if sweep.when() <= deadline:
                    return
                sweep.cancel()
        self._sweep = self._loop.call_at(deadlines[0][0], self._expire)

    def _expire(self) -> None:
        """The timer: fail the publishes past their deadline, forget the confirmed, re-arm for the next."""
        self._sweep = None
        now = self._loop.time()
        deadlines = self._deadlines
        unconfirmed = self._unconfirmed
        while deadlines:
            deadline, tag = deadlines[0]
            confirmed = unconfirmed.get(tag)
            if confirmed is not None and deadline > now:
                break
            deadlines.popleft()
            if confirmed is not None:
                # Forgotten at once, body and all: its late confirm (or a return) is then ignored.
                self._forget(tag)
                if not confirmed.done():
                    confirmed.set_exception(TimeoutError(f"no confirm of delivery tag {tag} in time"))
        if deadlines:
            self._sweep = self._loop.call_at(deadlines[0][0], self._expire)

    # --- what the connection calls ------------------------------------------------------------------

    async def open(self) -> None:
        """``Channel.Open``, and ``Confirm.Select`` for a confirm channel."""
        await self._call(spec.Channel.Open(), spec.Channel.OpenOk)
        if self._confirms:
            await self._call(spec.Confirm.Select(), spec.Confirm.SelectOk)

    def on_method(self, buf: bytearray, start: int, end: int, total: int) -> int:
        """A method frame of this channel, its payload at ``buf[start:end]`` (``total``: how much of
        ``buf`` has arrived). Returns where the next frame starts: past this one, or past the whole
        message when a ``Basic.Deliver`` has its content header and body right behind it."""
        if self._in_kind != _NOTHING:
            raise frames.Violation(
                frames.UNEXPECTED_FRAME, f"a method frame on channel {self._number} where content was due"
            )
        index = frames.METHOD_ID.unpack_from(buf, start)[0]
        if index == frames.DELIVER:
            deliver = frames.decode_deliver(buf, start + 4, end)
            return self._on_deliver(deliver, buf, end + 1, total)
        if index == frames.ACK:
            tag, multiple = frames.decode_ack(buf, start + 4, end)
            self._confirm(tag, multiple, None)
        elif index == frames.NACK:
            tag, multiple, _ = frames.decode_nack(buf, start + 4, end)
            self._confirm(tag, multiple, driver.Nacked)
        elif index == frames.RETURN:
            self._in_method = frames.decode_return(buf, start + 4, end)
            self._in_kind = _RETURN
        elif index == frames.GET_OK:
            self._in_method = frames.decode_get_ok(buf, start + 4, end)
            if not self._rpcs or spec.Basic.GetOk not in self._rpcs[0].replies:
                raise frames.Violation(
                    frames.COMMAND_INVALID, f"Basic.GetOk on channel {self._number} unasked"
                )
            self._in_kind = _GET
        else:
            frame = pamqp.frame.unmarshal(bytes(buf[start - 7 : end + 1]))[2]
            assert isinstance(frame, base.Frame)  # a method frame decodes to a method
            self._on_frame(frame)
        return end + 1

    def _on_deliver(
        self, deliver: tuple[str, int, bool, str, str], buf: bytearray, at: int, total: int
    ) -> int:
        """A ``Basic.Deliver``: when its content header and single body frame have arrived behind it (the
        usual case), decode them and hand the delivery over here, without a turn of the frame loop per
        frame; otherwise wait for them frame by frame (:meth:`on_header`, :meth:`on_body`)."""
        kind: int
        number: int
        size: int
        if total - at >= 8:
            kind, number, size = frames.HEAD.unpack_from(buf, at)
            end = at + 7 + size
            payload_max = self._payload_max
            if (
                kind == frames.FRAME_HEADER
                and number == self._number
                and end < total
                and size <= payload_max
                and buf[end] == frames.FRAME_END
            ):
                body_size, properties = frames.decode_header(buf, at + 7, end)
                if body_size > BODY_MAX:
                    raise frames.Violation(
                        frames.FRAME_ERROR, f"a body of {body_size} bytes, above {BODY_MAX}"
                    )
                at = end + 1
                if body_size == 0:
                    self._deliver(deliver, properties, b"")
                    return at
                if total - at >= 8:
                    kind, number, size = frames.HEAD.unpack_from(buf, at)
                    end = at + 7 + size
                    whole = kind == frames.FRAME_BODY and number == self._number and size == body_size
                    if whole and end < total and size <= payload_max and buf[end] == frames.FRAME_END:
                        self._deliver(deliver, properties, bytes(buf[at + 7 : end]))
                        return end + 1
                self._in_method = deliver
                self._in_kind = _DELIVER
                self._in_properties = properties
                self._in_size = body_size
                self._in_parts = None
                return at
        # Not (all) here yet, or not what follows a Deliver: the frame loop judges it.
        self._in_method = deliver
        self._in_kind = _DELIVER
        return at

    def on_header(self, buf: bytearray, start: int, end: int) -> None:
        """A content header of this channel."""
        if self._in_kind == _NOTHING or self._in_properties is not None:
            raise frames.Violation(
                frames.UNEXPECTED_FRAME, f"a content header on channel {self._number} where none was due"
            )
        size, properties = frames.decode_header(buf, start, end)
        if size > BODY_MAX:
            raise frames.Violation(frames.FRAME_ERROR, f"a body of {size} bytes, above {BODY_MAX}")
        if size == 0:
            self._complete(properties, b"")
        else:
            self._in_properties = properties
            self._in_size = size
            self._in_parts = None

    def on_body(self, buf: bytearray, start: int, end: int) -> None:
        """A body frame of this channel."""
        size = end - start
        parts = self._in_parts
        if parts is None:
            if self._in_properties is None:
                raise frames.Violation(
                    frames.UNEXPECTED_FRAME, f"a body frame on channel {self._number} with no content header"
                )
            if size >= self._in_size:
                if size > self._in_size:
                    self._too_long(size)
                properties, self._in_properties = self._in_properties, None
                self._complete(properties, _copied(buf, start, end))
                return
            if size:  # an empty body frame adds nothing (and must not grow the list)
                self._in_parts = [_copied(buf, start, end)]
                self._in_got = size
            return
        got = self._in_got + size
        if got >= self._in_size:
            if got > self._in_size:
                self._too_long(got)
            whole, self._in_properties, self._in_parts = self._in_properties, None, None
            assert whole is not None
            parts.append(_copied(buf, start, end))
            self._complete(whole, b"".join(parts))
        elif size:
            parts.append(_copied(buf, start, end))
            self._in_got = got

    def _too_long(self, got: int) -> None:
        raise frames.Violation(
            frames.FRAME_ERROR,
            f"{got} bytes of body on channel {self._number} where the content header said {self._in_size}",
        )

    def finish(self, exc: Callable[[], BaseException] | None, *, answered: bool = False) -> None:
        """The channel is gone: ``exc`` makes the error for its ``closing`` and every pending call
        (``None``: we closed it; pending calls get :class:`~event.driver.ChannelInvalidState`)."""
        if self._closing.done():
            return
        self._closed = True
        self._ended = exc
        # Our Channel.Close was sent and not answered (a timeout, or the broker's Close crossed it):
        # its CloseOk may still come.
        self._connection.forget(self._number, close_ok_due=self._close_ok is not None and not answered)
        make = exc or (lambda: driver.ChannelInvalidState(f"channel {self._number} was closed"))
        while self._rpcs:
            rpc = self._rpcs.popleft()
            if not rpc.future.done():
                rpc.future.set_exception(make())
        for confirmed in self._unconfirmed.values():
            if not confirmed.done():
                confirmed.set_exception(make())
        self._unconfirmed.clear()
        self._mandatory.clear()
        self._returns.clear()
        self._returned.clear()
        self._in_hand.clear()
        self._holding = False
        self._in_parts = None
        self._deadlines.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._consumers.clear()
        self._flow_on.set()  # wake publishes waiting for flow: they see the channel closed
        if self._close_ok is not None and not self._close_ok.done():
            self._close_ok.set_result(None)
        if exc is None:
            self._closing.set_result(None)
        else:
            self._closing.set_exception(exc())

    # --- inside -------------------------------------------------------------------------------------

    async def _call(
        self,
        method: base.Frame,
        reply: type[Frame],
        convert: Callable[[Frame], Any] | None = None,
        *,
        also: type[base.Frame] | None = None,
    ) -> Any:
        """Send ``method`` once the RPCs before it have their answers, and wait for ``reply``.

        The RPC stays queued until its reply arrives even if its caller stops waiting, so that a late
        reply is never taken for the answer to the next one."""
        if self._closed:
            raise driver.ChannelInvalidState(f"channel {self._number} is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        replies: tuple[type[base.Frame], ...] = (reply,) if also is None else (reply, also)
        self._rpcs.append(_Rpc(method, replies, future, convert))
        if len(self._rpcs) == 1:
            self._connection.send(pamqp.frame.marshal(method, self._number))
        return await future

    def _answer(self, frame: base.Frame | driver.Delivery) -> None:
        """The reply to the RPC in flight: settle it and send the next one."""
        rpc = self._rpcs.popleft()
        result: Any = frame
        if rpc.convert is not None and isinstance(frame, base.Frame):
            result = rpc.convert(frame)
        if not rpc.future.done():
            rpc.future.set_result(result)
        if self._rpcs and not self._closed:
            self._connection.send(pamqp.frame.marshal(self._rpcs[0].method, self._number))

    def _on_frame(self, frame: base.Frame) -> None:
        """Every method but the per-message ones decoded in :meth:`on_method`."""
        if isinstance(frame, spec.Channel.Close):
            # Answered even when it crosses a Close of ours: the broker waits for it either way.
            self._connection.send(pamqp.frame.marshal(spec.Channel.CloseOk(), self._number))
            code, text = int(frame.reply_code or 0), str(frame.reply_text)
            self.finish(lambda: driver.channel_closed(code, text))
        elif isinstance(frame, spec.Channel.CloseOk):
            if self._close_ok is None:
                raise frames.Violation(
                    frames.COMMAND_INVALID, f"Channel.CloseOk on channel {self._number} unasked"
                )
            self.finish(None, answered=True)
        elif isinstance(frame, spec.Channel.Flow):
            self._flow = bool(frame.active)
            if self._flow:
                self._flow_on.set()
            else:
                self._flow_on.clear()
            self._connection.send(pamqp.frame.marshal(spec.Channel.FlowOk(active=self._flow), self._number))
        elif isinstance(frame, spec.Basic.Cancel):
            tag = str(frame.consumer_tag)
            consumer = self._consumers.pop(tag, None)
            if not frame.nowait:
                self._connection.send(
                    pamqp.frame.marshal(spec.Basic.CancelOk(consumer_tag=tag), self._number)
                )
            if consumer is not None and consumer.on_cancel is not None:
                try:
                    consumer.on_cancel(tag)
                except Exception:  # a callback's failure must not end the read loop of every channel
                    log.exception("the on_cancel callback of consumer %s failed", tag)
        elif self._rpcs and isinstance(frame, self._rpcs[0].replies):
            self._answer(frame)
        else:
            raise frames.Violation(frames.COMMAND_INVALID, f"{frame.name} on channel {self._number} unasked")

    def _complete(self, properties: driver.Properties, body: bytes) -> None:
        """The last piece of a message arrived: hand it over."""
        kind, self._in_kind = self._in_kind, _NOTHING
        if kind == _DELIVER:
            self._deliver(self._in_method, properties, body)
        elif kind == _GET:
            delivery_tag, redelivered, exchange, routing_key, count = self._in_method
            if delivery_tag <= self._last_tag:
                self._tag_not_above(delivery_tag)
            self._last_tag = delivery_tag
            got = driver.Delivery(
                delivery_tag, redelivered, exchange, routing_key, properties, body, "", count
            )
            if self._rpcs:
                self._answer(got)
        elif kind == _RETURN:
            code, text, exchange, routing_key = self._in_method
            if not self._confirms:
                log.debug("channel %d: %s returned with no confirm to report it on", self._number, code)
                return
            returned = driver.ReturnedMessage(code, text, exchange, routing_key, properties, body)
            if len(self._returns) >= len(self._mandatory) or not self._claimable(returned):
                log.warning(
                    "channel %d: a message returned from %r with routing key %r matches no pending publish",
                    self._number,
                    exchange,
                    routing_key,
                )
                return
            self._returns.append(returned)

    def _deliver(
        self, deliver: tuple[str, int, bool, str, str], properties: driver.Properties, body: bytes
    ) -> None:
        """A whole ``Basic.Deliver`` (method, properties, body): hand it to its consumer."""
        consumer_tag, delivery_tag, redelivered, exchange, routing_key = deliver
        consumer = self._consumers.get(consumer_tag)
        # Only a delivery that will be acked must have a tag above the last: RabbitMQ's direct
        # reply-to hands a no_ack consumer its replies under one tag, again and again (seen on 3.10).
        if consumer is None or consumer.acks:
            if delivery_tag <= self._last_tag:
                self._tag_not_above(delivery_tag)
            self._last_tag = delivery_tag
        if self._closed:
            return  # closing: the broker requeues it when the channel closes
        if consumer is None:
            self._unclaimed(consumer_tag, delivery_tag)
            return
        if consumer.acks:
            in_hand = self._in_hand
            in_hand[delivery_tag] = None
            if len(in_hand) > self._pause_at and not self._holding:
                self._holding = True
                self._connection.hold(self._number)
        try:
            consumer.on_delivery(
                driver.Delivery(
                    delivery_tag, redelivered, exchange, routing_key, properties, body, consumer_tag
                )
            )
        except Exception:  # a callback's failure must not end the read loop of every channel
            log.exception("the on_delivery callback of consumer %s failed", consumer_tag)

    def _tag_not_above(self, delivery_tag: int) -> None:
        raise frames.Violation(
            frames.COMMAND_INVALID,
            f"delivery tag {delivery_tag} on channel {self._number} not above the last one, {self._last_tag}",
        )

    def _unclaimed(self, consumer_tag: str, delivery_tag: int) -> None:
        """A delivery for a consumer we do not have: back to the queue, as pika does, not held unacked
        until the channel closes."""
        log.warning(
            "channel %d: a delivery for unknown consumer %r; rejected with requeue",
            self._number,
            consumer_tag,
        )
        self._connection.send(frames.encode_reject(self._number, delivery_tag, True))

    def _claimable(self, returned: driver.ReturnedMessage) -> bool:
        """Whether a pending mandatory publish not yet returned could be the one ``returned`` is."""
        key = (returned.exchange, returned.routing_key, returned.body)
        claimed = self._returned
        return any(sent == key and tag not in claimed for tag, sent in self._mandatory.items())

    def _drop_unclaimed_returns(self) -> None:
        """Publishes were forgotten: the returns waiting for a confirm that none could claim go too."""
        kept = [returned for returned in self._returns if self._claimable(returned)]
        self._returns[:] = kept[: len(self._mandatory)]

    def _confirm(self, tag: int, multiple: bool, error: type[driver.Nacked] | None) -> None:
        """``Basic.Ack`` (``error`` None) or ``Basic.Nack`` of ``tag``, and of every tag below it if
        ``multiple``.

        A tag above the last one published is refused before any walk, so a walk from the lowest tag
        possibly unconfirmed up to ``tag`` covers only tags published, and each tag is walked past
        once (the mark only goes up): amortized O(1) a publish, never O(the tag's value)."""
        top = self._published
        if tag > top or (tag == 0 and not multiple):
            raise frames.Violation(
                frames.COMMAND_INVALID,
                f"a confirm of delivery tag {tag} on channel {self._number}, where {top} were published",
            )
        if self._returns:
            self._match_returns(tag or top, multiple)
        unconfirmed = self._unconfirmed
        if multiple:
            if tag == 0:  # the spec's "every outstanding message"
                tag = top
            tags: range | tuple[int] = range(self._lowest, tag + 1)
            self._lowest = max(self._lowest, tag + 1)
        else:
            tags = (tag,)
        for one in tags:
            confirmed = unconfirmed.pop(one, None)
            if confirmed is None:
                continue  # confirmed before, or forgotten (timed out, cancelled): nothing waits for it
            if self._mandatory:
                self._mandatory.pop(one, None)
            returned = self._returned.pop(one, None) if self._returned else None
            if confirmed.done():
                continue  # its publisher stopped waiting
            if error is not None:
                confirmed.set_exception(error(f"the broker nacked the publish (delivery tag {one})"))
            elif returned is not None:
                confirmed.set_exception(driver.Returned(returned))
            else:
                confirmed.set_result(None)
        if not multiple:
            lowest = self._lowest
            while lowest <= top and lowest not in unconfirmed:
                lowest += 1
            self._lowest = lowest
        deadlines = self._deadlines  # the confirmed no longer need theirs (bounded memory at a high rate)
        while deadlines and deadlines[0][1] not in unconfirmed:
            deadlines.popleft()

    def _match_returns(self, tag: int, multiple: bool) -> None:
        """Give each return received since the last confirm to the publish it belongs to.

        The broker returns an unroutable mandatory message just before the confirm that covers it, so
        it is the oldest mandatory publish with the same exchange, routing key and body among those
        this confirm covers (and not already returned), else the oldest pending one alike (the confirm
        of a publish may come after that of a later one it was returned before). Message ids are not
        compared: a caller may reuse one, and nothing obliges a message to have one."""
        for returned in self._returns:
            key = (returned.exchange, returned.routing_key, returned.body)
            chosen = None
            fallback = None
            for one, sent in self._mandatory.items():
                if sent != key or one in self._returned:
                    continue
                if one == tag or (multiple and one < tag):
                    chosen = one
                    break
                if fallback is None:
                    fallback = one
            chosen = chosen if chosen is not None else fallback
            if chosen is None:
                log.warning(
                    "channel %d: a message returned from %r with routing key %r matches no publish",
                    self._number,
                    returned.exchange,
                    returned.routing_key,
                )
                continue
            self._returned[chosen] = returned
        self._returns.clear()
