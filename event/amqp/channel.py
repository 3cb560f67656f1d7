"""One AMQP channel of :class:`event.amqp.connection.AMQPConnection`: RPCs, consumers, publishes.

The connection's protocol hands each frame of this channel to :meth:`AMQPChannel.on_method`,
:meth:`~AMQPChannel.on_header` or :meth:`~AMQPChannel.on_body` straight from its receive buffer. A
``Basic.Deliver`` whose header and body have arrived with it (the usual case) is decoded and handed to
its consumer's callback in one step; otherwise the delivery completes with its last body frame. Either
way the callback runs there and then, in delivery order. Everything sent goes through the
connection's :meth:`~AMQPConnection.send`, which writes once per loop turn.

Publisher confirms are matched by delivery tag (``multiple`` honoured); a ``Basic.Return`` is matched
to the publish it belongs to by the confirm that follows it (see :meth:`AMQPChannel._match_returns`).
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

log = logging.getLogger("event.amqp")

Frame = TypeVar("Frame", bound=base.Frame)

# What a channel is receiving after a method that carries content.
_NOTHING, _DELIVER, _GET, _RETURN = 0, 1, 2, 3

CLOSE_TIMEOUT = 10.0  # seconds to wait for the broker's Channel.CloseOk
PUBLISH_METHODS_KEPT = 512  # Basic.Publish frames a channel keeps for reuse


def retrieve(future: asyncio.Future[Any]) -> None:
    """A done callback so that a ``closing`` future nobody awaited never logs "exception was never
    retrieved": a channel's or connection's end is news to whoever watches it, not an error to log."""
    if not future.cancelled():
        future.exception()


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


class _Consumer:
    __slots__ = ("on_cancel", "on_delivery")

    def __init__(self, on_delivery: driver.OnDelivery, on_cancel: driver.OnCancel | None) -> None:
        self.on_delivery = on_delivery
        self.on_cancel = on_cancel


def _arguments(arguments: driver.Arguments | None) -> dict[str, Any]:
    return dict(arguments) if arguments else {}


class AMQPChannel:
    """A :class:`event.driver.Channel` on our own protocol."""

    def __init__(self, connection: AMQPConnection, number: int, *, confirms: bool) -> None:
        self._connection = connection
        self._loop = connection.loop
        self._number = number
        self._confirms = confirms
        self._closed = False  # no more use: we began closing it, or it is gone
        self._close_ok: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] = self._loop.create_future()
        self._closing.add_done_callback(retrieve)
        self._ended: Callable[[], BaseException] | None = None  # makes the error it closed with
        self._rpcs: deque[_Rpc] = deque()  # the head is in flight, the rest wait their turn
        self._consumers: dict[str, _Consumer] = {}
        # Flow control: the broker's Channel.Flow; publishes wait while it is off.
        self._flow = True
        self._flow_on = asyncio.Event()
        self._flow_on.set()
        # Publisher confirms: delivery tag -> the publish's future, tags in order.
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
        await self._call(spec.Basic.Qos(prefetch_count=prefetch_count), spec.Basic.QosOk)

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
        consumer = _Consumer(on_delivery, on_cancel)

        def register(ok: spec.Basic.ConsumeOk) -> str:
            # In the read path, before any delivery that follows the ConsumeOk in the same read.
            tag = str(ok.consumer_tag)
            self._consumers[tag] = consumer
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

    def basic_nack(self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True) -> None:
        if self._closed:
            raise driver.ChannelInvalidState(f"channel {self._number} is closed")
        self._connection.send(frames.encode_nack(self._number, delivery_tag, multiple, requeue))

    def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        if self._closed:
            raise driver.ChannelInvalidState(f"channel {self._number} is closed")
        self._connection.send(frames.encode_reject(self._number, delivery_tag, requeue))

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
        connection.send(frames.encode_content(self._number, properties, body, connection.frame_max))
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
        await confirmed

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
            if confirmed is not None and not confirmed.done():
                # Left in _unconfirmed: its late confirm (or a return before it) is matched and dropped.
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
        self._in_method = deliver
        self._in_kind = _DELIVER
        if total - at < 8:
            return at
        kind, number, size = frames.HEAD.unpack_from(buf, at)
        end = at + 7 + size
        if (
            kind != frames.FRAME_HEADER
            or number != self._number
            or end >= total
            or buf[end] != frames.FRAME_END
        ):
            return at  # not (all) here yet, or not what follows a Deliver: the frame loop judges it
        body_size, properties = frames.decode_header(buf, at + 7, end)
        at = end + 1
        if body_size == 0:
            self._complete(properties, b"")
            return at
        if total - at >= 8:
            kind, number, size = frames.HEAD.unpack_from(buf, at)
            end = at + 7 + size
            whole = kind == frames.FRAME_BODY and number == self._number and size == body_size
            if whole and end < total and buf[end] == frames.FRAME_END:
                self._complete(properties, bytes(buf[at + 7 : end]))
                return end + 1
        self._in_properties = properties
        self._in_size = body_size
        self._in_parts = None
        return at

    def on_header(self, buf: bytearray, start: int, end: int) -> None:
        """A content header of this channel."""
        if self._in_kind == _NOTHING:
            raise ValueError(f"a content header on channel {self._number} with no method before it")
        size, properties = frames.decode_header(buf, start, end)
        if size == 0:
            self._complete(properties, b"")
        else:
            self._in_properties = properties
            self._in_size = size
            self._in_parts = None

    def on_body(self, buf: bytearray, start: int, end: int) -> None:
        """A body frame of this channel."""
        parts = self._in_parts
        if parts is None:
            if self._in_properties is None:
                raise ValueError(f"a body frame on channel {self._number} with no content header before it")
            if end - start >= self._in_size:
                properties, self._in_properties = self._in_properties, None
                self._complete(properties, bytes(buf[start:end]))
                return
            self._in_parts = [bytes(buf[start:end])]
            self._in_got = end - start
            return
        parts.append(bytes(buf[start:end]))
        self._in_got += end - start
        if self._in_got >= self._in_size:
            whole, self._in_properties, self._in_parts = self._in_properties, None, None
            assert whole is not None
            self._complete(whole, b"".join(parts))

    def finish(self, exc: Callable[[], BaseException] | None) -> None:
        """The channel is gone: ``exc`` makes the error for its ``closing`` and every pending call
        (``None``: we closed it; pending calls get :class:`~event.driver.ChannelInvalidState`)."""
        if self._closing.done():
            return
        self._closed = True
        self._ended = exc
        self._connection.forget(self._number)
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
            self.finish(None)
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
            log.warning("channel %d: unexpected %s from the broker, ignored", self._number, frame.name)

    def _complete(self, properties: driver.Properties, body: bytes) -> None:
        """The last piece of a message arrived: hand it over."""
        kind, self._in_kind = self._in_kind, _NOTHING
        if kind == _DELIVER:
            consumer_tag, delivery_tag, redelivered, exchange, routing_key = self._in_method
            consumer = self._consumers.get(consumer_tag)
            if consumer is None or self._closed:
                return  # cancelled or closing: the broker requeues it when the channel closes
            delivery = driver.Delivery(
                delivery_tag, redelivered, exchange, routing_key, properties, body, consumer_tag
            )
            try:
                consumer.on_delivery(delivery)
            except Exception:  # a callback's failure must not end the read loop of every channel
                log.exception("the on_delivery callback of consumer %s failed", consumer_tag)
        elif kind == _GET:
            delivery_tag, redelivered, exchange, routing_key, count = self._in_method
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
            self._returns.append(driver.ReturnedMessage(code, text, exchange, routing_key, properties, body))

    def _confirm(self, tag: int, multiple: bool, error: type[driver.Nacked] | None) -> None:
        """``Basic.Ack`` (``error`` None) or ``Basic.Nack`` of ``tag``, and of every tag below it if
        ``multiple``."""
        if self._returns:
            self._match_returns(tag, multiple)
        unconfirmed = self._unconfirmed
        if multiple:
            tags: range | tuple[int] = range(self._lowest, tag + 1)
            self._lowest = max(self._lowest, tag + 1)
        else:
            tags = (tag,)
        for one in tags:
            confirmed = unconfirmed.pop(one, None)
            if confirmed is None:
                continue
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
            lowest, top = self._lowest, self._published
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
        this confirm covers (and not already returned). Message ids are not compared: a caller may
        reuse one, and nothing obliges a message to have one."""
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
