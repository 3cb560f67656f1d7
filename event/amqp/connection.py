"""The connection: an ``asyncio.Protocol`` that parses frames straight from its receive buffer.

``data_received`` appends to one ``bytearray`` and walks every complete frame in it, handing each to
its channel (channel 0 is the connection's own); the per-message frames are decoded by the lean
codecs of :mod:`event.amqp.frames`, the rest by pamqp. Nothing is queued between the socket and a
consumer's callback, and no task is made per frame.

Writes are coalesced: :meth:`AMQPConnection.send` appends to a list, flushed with one
``transport.write`` at the next turn of the loop, so the acks, publishes and RPCs of one turn leave in
one system call. A large body is not joined into that write: :meth:`AMQPConnection.send_parts` queues
its frames as pieces (the body's bytes by reference), and the flush hands them to the transport as
they are, with ``writelines`` where the transport writes a list without joining it (uvloop's, TLS,
Python 3.12's own), else piece by piece, the small ones between large ones joined, and only while the
transport does not ask for a pause: the rest waits in the list for ``resume_writing``.

What the broker sends is held to the protocol (a buggy or hostile peer must not hang, bloat or
mislead the process): a frame larger than the negotiated ``frame_max`` is refused as soon as its
7-byte header is in, a ``frame_max`` below 4096 at ``Connection.Tune`` is refused, a method out of
sequence or a frame for a channel that is not open ends the connection. Every violation
(:class:`event.amqp.frames.Violation`, or bytes the decoders refuse) is answered the same way:
``Connection.Close`` with the reply code (501-505, 530) goes to the broker, the socket is closed
without waiting for its ``CloseOk`` (the peer is not trusted to send it), and every pending publish,
RPC and the connection's ``closing`` fail with a :class:`~event.driver.ConnectionClosed` naming the
code. No exception leaves :meth:`AMQPConnection.data_received`.

Reading pauses (``transport.pause_reading()``) while a channel holds more unsettled deliveries than
its consumers' prefetch allows with a margin (see :mod:`event.amqp.channel`), and resumes when they
drain; the missed-heartbeat detector does not count the silence of a pause of ours, and while a channel
waits for the broker (a confirm, a reply) one read is let in every :data:`HOLD_PROBE` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import ssl
import struct
from typing import Any, cast

import pamqp.exceptions
import pamqp.frame
from pamqp import base
from pamqp import commands as spec
from pamqp.header import ProtocolHeader

from event import driver
from event.amqp import frames, reasons
from event.amqp.channel import AMQPChannel, retrieve
from event.amqp.url import Params, parse
from event.config import redact_url
from event.errors import ConfigurationError, ConnectionFailed

log = logging.getLogger(__name__)

FRAME_MAX = 131072  # what we accept at most (RabbitMQ's default too), and our cap when the broker says 0
FRAME_MIN = 4096  # the protocol's minimum frame_max: a broker's lower value is refused
CLOSE_TIMEOUT = 5.0  # seconds to wait for the broker's Connection.CloseOk
# While reading is paused for too many deliveries in hand, every HOLD_PROBE seconds one more read is let
# in if a channel waits for the broker (a confirm, an RPC reply, a CloseOk): a handler that publishes a
# confirmed copy before it acks would otherwise wait for ever on a confirm we no longer read.
HOLD_PROBE = 0.25

CAPABILITIES = {
    "publisher_confirms": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "basic.nack": True,
    "authentication_failure_close": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
}

_HEAD = frames.HEAD
_END = frames.FRAME_END
_METHOD, _HEADER, _BODY, _HEARTBEAT = frames.FRAME_METHOD, frames.FRAME_HEADER, frames.FRAME_BODY, 8

# Where the handshake is: what we sent last and wait an answer to.
_START, _TUNE, _OPEN, _READY, _CLOSING, _CLOSED = range(6)

_CLOSE_OK = spec.Channel.CloseOk.index
# What the decoders raise on bytes they cannot read (a timestamp out of range raises OverflowError or
# OSError, a table nested too deep for pamqp RecursionError): the stream cannot be trusted past them.
_UNDECODABLE = (
    ValueError,
    IndexError,
    struct.error,
    OverflowError,
    OSError,
    RecursionError,
    pamqp.exceptions.PAMQPException,
)


class _Refused(Exception):
    """The handshake failed in a way the broker explained (or implied by hanging up after the login)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "login", "mechanism", "vhost" or "other"
        self.detail = detail


class AMQPConnection(asyncio.Protocol):
    """A :class:`event.driver.Connection` on our own ``asyncio.Protocol``."""

    def __init__(self, params: Params, *, name: str, node: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._params = params
        self._name = name
        self._node = node
        self._open_frame = pamqp.frame.marshal(spec.Connection.Open(virtual_host=params.vhost), 0)
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list[bytes | memoryview] = []
        self._flush_scheduled = False
        self._out_parts = False  # a large body's pieces are in _out: flushed without joining them
        self._writelines = False  # the transport writes a list without joining it first
        self._state = _START
        self._channels: dict[int, AMQPChannel] = {}
        self.opened: asyncio.Future[None] = loop.create_future()
        self.opened.add_done_callback(retrieve)
        self._closing: asyncio.Future[None] = loop.create_future()
        self._closing.add_done_callback(retrieve)
        self._close_ok: asyncio.Future[None] | None = None
        self.server_properties: dict[str, Any] = {}
        self.frame_max = 4096  # until Tune: the protocol's minimum
        # The largest frame payload we accept: until Tune, our own cap (a broker's Start may carry
        # large server properties); then the negotiated frame_max less the frame's 8 bytes of overhead.
        self.payload_max = FRAME_MAX - frames.FRAME_OVERHEAD
        self.channel_max = 65535
        self.heartbeat = 0
        # Flow control: the broker's Connection.Blocked, and the transport's own back-pressure.
        self._blocked: str | None = None
        self.paused = False
        self._publishable = asyncio.Event()
        self._publishable.set()
        # Heartbeats: whether anything came or went since the last tick, and silent ticks in a row.
        self._heard = False
        self._wrote = False
        self._silent_ticks = 0
        self._beat: asyncio.TimerHandle | None = None
        self._closers: set[asyncio.Task[None]] = set()
        # Channels closed on our side whose CloseOk may still come (a close that timed out, or crossed
        # the broker's): their late frames are dropped, and their numbers not reused meanwhile.
        self._abandoned: set[int] = set()
        # Channels holding more unsettled deliveries than their prefetch allows: reading is paused,
        # but for one read every HOLD_PROBE seconds while a channel waits for the broker.
        self._holding: set[int] = set()
        self._probe: asyncio.TimerHandle | None = None

    # --- the driver.Connection protocol -----------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._state >= _CLOSING

    @property
    def closing(self) -> asyncio.Future[None]:
        return self._closing

    @property
    def node(self) -> str:
        return self._node

    @property
    def blocked(self) -> str | None:
        return self._blocked

    @property
    def buffered(self) -> int:
        """Bytes received and not yet processed: the part of a frame still arriving (at most a frame)."""
        return len(self._buf)

    async def channel(self, *, confirms: bool = False) -> AMQPChannel:
        if self._state != _READY:
            raise driver.ChannelInvalidState(f"the connection to {self._node} is closed")
        taken, abandoned = self._channels, self._abandoned
        number = next((n for n in range(1, self.channel_max + 1) if n not in taken and n not in abandoned), 0)
        if not number:
            raise driver.ChannelInvalidState(f"all {self.channel_max} channels of the connection are open")
        channel = AMQPChannel(self, number, confirms=confirms)
        self._channels[number] = channel
        try:
            await channel.open()
        except asyncio.CancelledError:
            # The broker opens it anyway: close it once its answers arrive, so the number is free again.
            closer = self.loop.create_task(channel.close())
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)
            raise
        return channel

    async def close(self) -> None:
        """``Connection.Close``, the broker's ``CloseOk`` (or :data:`CLOSE_TIMEOUT`), then the socket."""
        if self._state == _CLOSED:
            return
        if self._state != _CLOSING:
            if self._state != _READY:  # mid-handshake: nothing to say to the broker yet
                self._finish(None)
                return
            self._state = _CLOSING
            self._close_ok = self.loop.create_future()
            self.send(pamqp.frame.marshal(spec.Connection.Close(200, "Normal shutdown", 0, 0), 0))
        assert self._close_ok is not None
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self._close_ok)
        except TimeoutError:
            pass
        self._finish(None)

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's or uvloop's, which is not an asyncio.Transport subclass).
        self._transport = cast(asyncio.Transport, transport)
        # asyncio's WriteTransport.writelines joins the list (Python 3.11's socket transport keeps it);
        # uvloop's, the TLS transport's and 3.12's own write the pieces themselves.
        self._writelines = type(self._transport).writelines is not asyncio.WriteTransport.writelines
        self._transport.write(ProtocolHeader().marshal())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _CLOSED:
            return
        if not self.opened.done():
            if exc is None and self._state == _TUNE:
                # The broker hung up after our login without a word: what brokers that do not know
                # authentication_failure_close do with a bad password.
                exc = _Refused("login", "the broker closed the connection after the login")
            elif exc is None:
                exc = ConnectionResetError("the broker closed the connection during the handshake")
            self.opened.set_exception(exc)
        reason = f"the connection was lost: {exc}" if exc else "the broker closed the connection"
        self._finish(lambda: driver.ConnectionClosed(0, reason))

    def pause_writing(self) -> None:
        self.paused = True
        self._publishable.clear()

    def resume_writing(self) -> None:
        self.paused = False
        if self._blocked is None:
            self._publishable.set()
        if self._out and not self._flush_scheduled:  # large pieces held back while the transport was full
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        buf = self._buf
        buf += data
        total = len(buf)
        pos = 0
        channels = self._channels
        payload_max = self.payload_max
        try:
            while total - pos >= 7 and self._state != _CLOSED:
                kind, number, size = _HEAD.unpack_from(buf, pos)
                if size > payload_max:  # refused before buffering it: a 4 GiB header is no wait for 4 GiB
                    raise frames.Violation(
                        frames.FRAME_ERROR,
                        f"a frame of {size + frames.FRAME_OVERHEAD} bytes on channel {number}, above "
                        f"frame_max {self.frame_max if self._state > _TUNE else FRAME_MAX}",
                    )
                end = pos + 7 + size
                if end >= total:
                    break
                if buf[end] != _END:
                    raise ValueError("a frame does not end with the frame-end octet")
                start = pos + 7
                if number:
                    channel = channels.get(number)
                    if channel is None:
                        self._stray(kind, number, buf, start, end)
                    elif kind == _BODY:
                        channel.on_body(buf, start, end)
                    elif kind == _METHOD:
                        pos = channel.on_method(buf, start, end, total)
                        continue
                    elif kind == _HEADER:
                        channel.on_header(buf, start, end)
                    else:
                        raise ValueError(f"frame type {kind} on channel {number}")
                elif kind == _METHOD:
                    frame = pamqp.frame.unmarshal(bytes(buf[pos : end + 1]))[2]
                    assert isinstance(frame, base.Frame)
                    self._on_method(frame)
                    payload_max = self.payload_max  # Tune may have changed it
                elif kind != _HEARTBEAT:
                    raise ValueError(f"frame type {kind} on channel 0")
                pos = end + 1
        except frames.Violation as exc:
            self._violation(exc.reply_code, exc.reply_text)
        except _UNDECODABLE as exc:
            self._frame_error(buf[pos:], exc)
        except Exception as exc:  # a fault of ours: the stream's state is unknown, so it ends too
            log.exception("%s: failed to process what the broker sent", self._node)
            self._violation(541, f"INTERNAL_ERROR - the client failed on a frame: {exc!r}")
        if self._state == _CLOSED:
            buf.clear()
        else:
            del buf[:pos]
            if self._holding:  # the one read a probe let in, or the read that began the hold
                self._pause()

    def _stray(self, kind: int, number: int, buf: bytearray, start: int, end: int) -> None:
        """A frame for channel ``number``, which is not open: a late one of a channel we abandoned is
        dropped (its CloseOk ends the wait for it); anything else is a channel error."""
        if number not in self._abandoned:
            raise frames.Violation(frames.CHANNEL_ERROR, f"a frame on channel {number}, which is not open")
        if kind == _METHOD and end - start >= 4 and frames.METHOD_ID.unpack_from(buf, start)[0] == _CLOSE_OK:
            self._abandoned.discard(number)

    # --- what channels call -----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the next write (one per turn of the loop)."""
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """Queue a large message's pieces (:func:`event.amqp.frames.encode_content_parts`) for the
        next write, in order with everything else, without copying them into one string."""
        self._out += parts
        self._out_parts = True
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def forget(self, number: int, *, close_ok_due: bool = False) -> None:
        """Channel ``number`` is closed: the number is free again, or once the broker's ``CloseOk``
        comes if ``close_ok_due`` (till then its late frames are dropped, not taken as a violation)."""
        self._channels.pop(number, None)
        if close_ok_due and self._state < _CLOSING:
            self._abandoned.add(number)
        self.release(number)

    def hold(self, number: int) -> None:
        """Channel ``number`` holds too many unsettled deliveries: stop reading until it lets go."""
        self._holding.add(number)
        self._pause()
        if self._probe is None:
            self._probe = self.loop.call_later(HOLD_PROBE, self._peek)

    def release(self, number: int) -> None:
        """Channel ``number`` no longer holds too many deliveries: read again if no channel does."""
        holding = self._holding
        if number in holding:
            holding.discard(number)
            if not holding:
                if self._probe is not None:
                    self._probe.cancel()
                    self._probe = None
                self._resume()

    def _pause(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def _resume(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _peek(self) -> None:
        """While reading is held: let one read in if a channel waits for the broker (data_received
        pauses again after it), so that a wait for a confirm or a reply never becomes a deadlock."""
        self._probe = None
        if not self._holding or self._state == _CLOSED:
            return
        if any(channel.awaits_broker for channel in self._channels.values()) or self._close_ok is not None:
            self._resume()
        self._probe = self.loop.call_later(HOLD_PROBE, self._peek)

    async def publishable(self, flow_on: asyncio.Event) -> None:
        """Wait until the broker lets this connection publish (and the channel's flow, ``flow_on``)."""
        await self._publishable.wait()
        await flow_on.wait()

    # --- inside ---------------------------------------------------------------------------------------

    def _flush(self, *, hold: bool = True) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if not self._out_parts:
                transport.write(out[0] if len(out) == 1 else b"".join(out))
            elif self._writelines:
                transport.writelines(out)
            else:
                written = self._write_each(transport, out, hold)
                self._wrote = True
                if written < len(out):  # the rest waits for resume_writing, in order, not copied
                    del out[:written]
                    return
            self._wrote = True
        self._out_parts = False
        out.clear()

    def _write_each(self, transport: asyncio.Transport, out: list[bytes | memoryview], hold: bool) -> int:
        """``out`` written piece by piece, for a transport that would join a list: each large piece as
        it is, the small ones between them joined. With ``hold``, writing stops once the transport
        asks for a pause (its buffer above the high-water mark): what Python 3.11's socket transport
        does not send at once it copies into one growing buffer, some 2 ms a MiB of a 300 MiB burst,
        so the rest is kept here, by reference, until it drains. Returns how many pieces were written."""
        small: list[bytes | memoryview] = []
        for k, part in enumerate(out):
            if len(part) < frames.LARGE_BODY:
                small.append(part)
                continue
            if hold and self.paused:
                return k - len(small)  # the small pieces before it wait with it
            if small:
                transport.write(small[0] if len(small) == 1 else b"".join(small))
                small.clear()
            transport.write(part)
        if small:
            transport.write(small[0] if len(small) == 1 else b"".join(small))
        return len(out)

    def _frame_error(self, rest: bytes | bytearray, exc: Exception) -> None:
        """Bytes we cannot decode: the stream cannot be trusted past them, so the connection ends.
        pamqp, the reference decoder, names the fault when it can."""
        detail = str(exc) or type(exc).__name__
        if not isinstance(exc, RecursionError):  # pamqp would recurse as deep again
            try:
                pamqp.frame.unmarshal(bytes(rest[: self.payload_max + frames.FRAME_OVERHEAD]))
            except Exception as reference:
                detail = str(reference) or detail
        self._violation(frames.FRAME_ERROR, f"FRAME_ERROR - {detail}")

    def _violation(self, code: int, text: str) -> None:
        """The broker broke the protocol: tell it with ``Connection.Close`` (``code``, ``text``), close
        the socket once that is written, and fail everything pending with the same code and words."""
        if self._state == _CLOSED:
            return
        log.error(
            "%s: protocol violation by the broker, closing the connection: %s %s", self._node, code, text
        )
        said = text.encode()[:255].decode("utf-8", "ignore")  # a short string on the wire
        self.send(pamqp.frame.marshal(spec.Connection.Close(code, said, 0, 0), 0))
        if not self.opened.done():
            self.opened.set_exception(driver.ConnectionClosed(code, text))
        self._finish(lambda: driver.ConnectionClosed(code, text))

    def _on_method(self, frame: base.Frame) -> None:
        """A method of channel 0: the handshake, then close, blocked and unblocked."""
        if isinstance(frame, spec.Connection.Start | spec.Connection.Tune | spec.Connection.OpenOk):
            due = {_START: spec.Connection.Start, _TUNE: spec.Connection.Tune, _OPEN: spec.Connection.OpenOk}
            if not isinstance(frame, due.get(self._state, ())):  # e.g. a Start once open: no second login
                raise frames.Violation(frames.COMMAND_INVALID, f"{frame.name} when it was not due")
        if isinstance(frame, spec.Connection.Start):
            self._on_start(frame)
        elif isinstance(frame, spec.Connection.Tune):
            self._on_tune(frame)
        elif isinstance(frame, spec.Connection.OpenOk):
            self._state = _READY
            if self.heartbeat:
                self._beat = self.loop.call_later(self.heartbeat / 2, self._tick)
            if not self.opened.done():
                self.opened.set_result(None)
        elif isinstance(frame, spec.Connection.Close):
            self._on_close(frame)
        elif isinstance(frame, spec.Connection.CloseOk):
            if self._close_ok is not None and not self._close_ok.done():
                self._close_ok.set_result(None)
        elif isinstance(frame, spec.Connection.Blocked):
            self._blocked = str(frame.reason or "blocked")
            self._publishable.clear()
            log.warning("%s blocks publishing: %s", self._node, self._blocked)
        elif isinstance(frame, spec.Connection.Unblocked):
            self._blocked = None
            if not self.paused:
                self._publishable.set()
            log.info("%s unblocked publishing", self._node)
        else:
            raise frames.Violation(frames.COMMAND_INVALID, f"{frame.name} on channel 0")

    def _on_start(self, start: spec.Connection.Start) -> None:
        self.server_properties = dict(start.server_properties or {})
        mechanisms = str(start.mechanisms or "").split()
        if "PLAIN" not in mechanisms:
            self._fail_handshake(_Refused("mechanism", f"we speak PLAIN, the broker offers {mechanisms}"))
            return
        params = self._params
        start_ok = spec.Connection.StartOk(
            client_properties={
                "connection_name": self._name,
                "product": "event (Python)",
                "platform": f"Python {platform.python_version()}",
                "capabilities": dict(CAPABILITIES),
            },
            mechanism="PLAIN",
            response=f"\0{params.user}\0{params.password}",
            locale="en_US",
        )
        self._state = _TUNE
        self.send(pamqp.frame.marshal(start_ok, 0))

    def _on_tune(self, tune: spec.Connection.Tune) -> None:
        theirs_max = int(tune.frame_max or 0)  # 0: the broker sets no limit, ours (FRAME_MAX) holds
        if 0 < theirs_max < FRAME_MIN:
            # Refused as RabbitMQ refuses a client's frame_max below the minimum (530 NOT_ALLOWED):
            # with 8, every publish would fail; with 5, a publish would send a header and no body.
            raise frames.Violation(
                frames.NOT_ALLOWED, f"frame_max {theirs_max} is below the protocol's minimum of {FRAME_MIN}"
            )
        self.channel_max = min(int(tune.channel_max or 65535), 65535)
        self.frame_max = min(theirs_max or FRAME_MAX, FRAME_MAX)
        self.payload_max = self.frame_max - frames.FRAME_OVERHEAD
        ours, theirs = self._params.heartbeat, int(tune.heartbeat or 0)
        self.heartbeat = theirs if theirs and theirs < ours else ours
        tune_ok = spec.Connection.TuneOk(
            channel_max=self.channel_max, frame_max=self.frame_max, heartbeat=self.heartbeat
        )
        self._state = _OPEN
        self.send(pamqp.frame.marshal(tune_ok, 0))
        self.send(self._open_frame)

    def _on_close(self, close: spec.Connection.Close) -> None:
        code, text = int(close.reply_code or 0), str(close.reply_text)
        self.send(pamqp.frame.marshal(spec.Connection.CloseOk(), 0))
        self._flush()
        if not self.opened.done():
            if code == 403:
                kind = "login"
            elif code == 530:
                kind = "vhost"
            else:
                kind = "other"
            self.opened.set_exception(_Refused(kind, f"{code} {text}"))
        self._finish(lambda: driver.ConnectionClosed(code, text))

    def _fail_handshake(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self._finish(lambda: driver.ConnectionClosed(0, str(exc)))

    def _tick(self) -> None:
        """Every half heartbeat interval: beat if we sent nothing since the last tick; after two whole
        intervals without a byte from the broker, the connection is lost."""
        transport = self._transport
        if self._state == _CLOSED or transport is None:
            return
        if not self._wrote:
            transport.write(frames.HEARTBEAT)
        self._wrote = False
        if self._heard or self._holding:  # paused by us: the silence is ours, not the broker's
            self._silent_ticks = 0
        else:
            self._silent_ticks += 1
        self._heard = False
        if self._silent_ticks > 4:  # > 4 half intervals in a row: at least 2 intervals of silence
            log.error("%s: missed heartbeats from the broker; the connection is lost", self._node)
            self._finish(lambda: driver.ConnectionClosed(0, "missed heartbeats from the broker"), abort=True)
            return
        self._beat = self.loop.call_later(self.heartbeat / 2, self._tick)

    def _finish(self, exc: Any, *, abort: bool = False) -> None:
        """The connection is over: ``exc`` makes its error (``None``: we closed it)."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        if self._beat is not None:
            self._beat.cancel()
        if self._probe is not None:
            self._probe.cancel()
        make = exc or (lambda: driver.ConnectionClosed(0, f"the connection to {self._node} was closed"))
        for channel in list(self._channels.values()):
            channel.finish(make)
        self._channels.clear()
        self._publishable.set()  # wake publishes waiting out a block: they see the connection closed
        if not self.opened.done():
            self.opened.set_exception(make())
        if self._close_ok is not None and not self._close_ok.done():
            self._close_ok.set_result(None)
        if exc is None:
            self._closing.set_result(None)
        else:
            self._closing.set_exception(exc())
        transport = self._transport
        if transport is not None:
            self._flush(hold=False)  # everything still queued goes before the close, as it always did
            if abort:
                transport.abort()
            else:
                transport.close()


async def open_connection(url: str, *, name: str, timeout: float = 10.0) -> driver.Connection:
    """Open a connection to the node at ``url`` (one node; ``amqp://`` or ``amqps://``), named ``name``
    in the broker's connection list, within ``timeout`` seconds.

    Raises :class:`~event.errors.ConnectionFailed` with a reason that says what to fix (see
    :mod:`event.amqp.reasons`), or :class:`~event.errors.ConfigurationError` for a URL it cannot use."""
    params = parse(url)
    shown = redact_url(url)
    loop = asyncio.get_running_loop()
    try:
        connection = AMQPConnection(params, name=name, node=shown, loop=loop)
    except ValueError as exc:  # pamqp refused the Connection.Open: a vhost name too long
        raise ConfigurationError(f"the vhost of {shown} cannot be used: {exc}") from exc
    try:
        context = params.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailed(reasons.tls_failed(shown, f"cannot load the TLS files: {exc}")) from exc
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: connection,
                params.host,
                params.port,
                ssl=context,
                server_hostname=params.host if context is not None else None,
            )
            await connection.opened
    except TimeoutError as exc:
        connection._finish(None, abort=True)
        raise ConnectionFailed(reasons.timed_out(shown, timeout)) from exc
    except _Refused as exc:
        if exc.kind == "login":
            raise ConnectionFailed(reasons.login_refused(shown, exc.detail)) from exc
        if exc.kind == "mechanism":
            raise ConnectionFailed(reasons.mechanism_refused(shown, exc.detail)) from exc
        if exc.kind == "vhost":
            raise ConnectionFailed(reasons.vhost_refused(shown, params.vhost)) from exc
        raise ConnectionFailed(reasons.unreachable(shown, exc.detail)) from exc
    except ssl.SSLError as exc:
        connection._finish(None, abort=True)
        raise ConnectionFailed(reasons.tls_failed(shown, str(exc))) from exc
    except driver.ConnectionClosed as exc:
        connection._finish(None, abort=True)
        if exc.reply_code:  # a protocol violation of the peer's at the handshake
            raise ConnectionFailed(reasons.protocol_violation(shown, str(exc))) from exc
        raise ConnectionFailed(reasons.unreachable(shown, str(exc))) from exc
    except OSError as exc:
        connection._finish(None, abort=True)
        raise ConnectionFailed(reasons.unreachable(shown, str(exc) or type(exc).__name__)) from exc
    except BaseException:  # cancelled: leave no half-open socket behind
        connection._finish(None, abort=True)
        raise
    return connection
