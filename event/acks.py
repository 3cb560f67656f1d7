"""Acknowledgement batching: one ``multiple`` ack for the finished prefix, single acks for the rest.

Handlers finish out of order; the broker's ``multiple`` flag acknowledges every outstanding tag up to
the one named, so it may only name a tag below which every delivery has finished. That prefix is what
makes acking cheap on the hot path (one frame for a whole batch), but it must never cost liveness: the
broker counts a finished-but-unacked message against the prefetch, so a finished tag held behind one
slow message would stop the consumer as surely as the slow message itself. So a flush also acks, one
by one, every finished tag behind an unfinished one: at any moment the broker holds unacked exactly the
deliveries still running, plus what finished since the last flush (at most one batch, at most one
interval old).

:class:`AckLedger` keeps that bookkeeping (pure, property-tested); :class:`AckTracker` adds the sending,
batched by count and by a short timer, and is the one place a consumer's acks, rejects and their
batching are decided: :func:`tracker_for` builds it from a channel and the consumer's prefetch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

SendAck = Callable[[int, bool], None]  # (delivery tag, multiple): a channel's basic_ack
SendReject = Callable[[int], None]  # a channel's basic_reject with requeue


class AckLedger:
    """Which delivery tags of one channel are finished, and how the broker may be told.

    Every finished tag leaves by exactly one of three ways: covered by a ``multiple`` ack (the
    contiguous finished prefix), acked alone by :meth:`take` (finished behind an unfinished tag), or
    settled alone by the caller (a reject, an ack sent at once: :meth:`finish` with ``alone``). A
    ``multiple`` ack must name a tag the broker still holds: a tag settled alone may be covered by it,
    never named, or the broker closes the channel (406 unknown delivery tag).
    """

    __slots__ = ("_alone", "_behind", "_finished", "_outstanding", "ackable_upto", "ready")

    def __init__(self) -> None:
        self._outstanding: deque[int] = deque()  # delivered, in delivery (= tag) order
        self._finished: set[int] = set()  # finished, but behind an unfinished tag
        self._behind: set[int] = set()  # of those, the ones the broker has not been told of yet
        self._alone: set[int] = set()  # of those, the ones already settled alone
        self.ackable_upto = 0  # highest tag of the finished prefix not settled alone
        self.ready = 0  # finished prefix tags the next multiple-ack will cover

    def delivered(self, tag: int) -> None:
        """Record a new delivery; tags arrive in increasing order on a channel."""
        self._outstanding.append(tag)

    def finish(self, tag: int, *, alone: bool = False) -> None:
        """Record that ``tag``'s handling ended; ``alone``: the broker has settled it already."""
        outstanding = self._outstanding
        if outstanding and outstanding[0] == tag:
            outstanding.popleft()
            if not alone:
                self.ackable_upto = tag
                self.ready += 1
            if self._finished:
                self._advance()
        else:
            self._finished.add(tag)
            if alone:
                self._alone.add(tag)
            else:
                self._behind.add(tag)

    def _advance(self) -> None:
        """The head finished: the tags finished behind it join the prefix."""
        outstanding, finished, alone, behind = self._outstanding, self._finished, self._alone, self._behind
        while outstanding and outstanding[0] in finished:
            head = outstanding.popleft()
            finished.discard(head)
            if head in alone:
                alone.discard(head)
            else:
                behind.discard(head)
                self.ackable_upto = head
                self.ready += 1

    @property
    def pending(self) -> int:
        """Finished tags the broker still counts as unacked: what the next :meth:`take` settles."""
        return self.ready + len(self._behind)

    def take(self) -> tuple[int | None, list[int]]:
        """What to send now: the tag for a multiple-ack (or None), and the tags to ack one by one.

        Marks them as sent: the single ones count as settled alone from now on."""
        upto = None
        if self.ready:
            self.ready = 0
            upto = self.ackable_upto
        singles: list[int] = []
        if self._behind:
            singles = sorted(self._behind)
            self._alone.update(singles)
            self._behind.clear()
        return upto, singles

    @property
    def held(self) -> int:
        """Tags the broker counts as unacked: the unfinished ones and the finished not yet acked."""
        return len(self._outstanding) - len(self._alone) + self.ready

    @property
    def unfinished(self) -> int:
        """How many delivered tags have not finished."""
        return len(self._outstanding) - len(self._finished)


class AckChannel(Protocol):
    """What acking needs of a channel (a driver's Channel has it)."""

    def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None: ...

    def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None: ...


class AckTracker:
    """Sends the acks of one channel in batches; forgets everything once its channel is gone.

    Settling is a plain call, not a coroutine: the driver writes an ack with the next batch of outgoing
    frames and the broker sends no answer, so nothing here ever waits (and the hot path never suspends
    for an ack)."""

    __slots__ = ("_reject", "_send", "_timer", "alive", "batch", "interval", "ledger", "window")

    def __init__(
        self, send: SendAck, reject: SendReject, *, batch: int, interval: float, window: int = 0
    ) -> None:
        self._send = send
        self._reject = reject
        self.batch = max(1, batch)
        self.interval = interval
        # The channel's prefetch (0: none). The broker sends nothing more while every slot of it is
        # taken, by running handlers or by acks we owe: see _settled for how the batch follows it.
        self.window = window
        self.ledger = AckLedger()
        self._timer: asyncio.TimerHandle | None = None
        self.alive = True

    def delivered(self, tag: int) -> None:
        """Record a delivery (call it in delivery order, before any await)."""
        self.ledger.delivered(tag)

    def ack(self, tag: int) -> None:
        """Mark ``tag`` handled; the ack goes out with the batch, at the latest after ``interval``."""
        if self.alive:
            self._settled(tag)

    def ack_now(self, tag: int) -> None:
        """Ack ``tag`` alone and at once, not with the batch: for a delivery just replaced by a copy
        that may come back (and kill the worker) before the batch would have gone out."""
        if not self.alive:
            return
        try:
            self._send(tag, False)
        except Exception as exc:
            log.debug("ack of tag %d not sent: %s", tag, exc)
            self.abandon()
            return
        self._settled(tag, alone=True)

    def _settled(self, tag: int, *, alone: bool = False) -> None:
        ledger = self.ledger
        ledger.finish(tag, alone=alone)
        pending = ledger.pending
        # A batch is a quarter of the window the broker has left to send in: of the whole prefetch when
        # handlers keep up, of what slow messages leave free when they hold most of it (else the pipe
        # runs dry between round trips), and at once when nothing is left.
        if pending >= self.batch or (self.window and 4 * pending >= self.window - ledger.unfinished):
            self.flush()
        elif pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._on_timer)

    def reject(self, tag: int) -> None:
        """Hand ``tag`` back to the broker for redelivery (sent at once, before the prefix moves past it)."""
        if not self.alive:
            return
        try:
            self._reject(tag)
        except Exception as exc:
            log.debug("reject of tag %d not sent: %s", tag, exc)
            self.abandon()
            return
        # Settled now: a later multiple-ack may cover it (the broker skips settled tags), not name it.
        self._settled(tag, alone=True)

    def _on_timer(self) -> None:
        self._timer = None
        if self.alive:
            self.flush()

    def flush(self) -> None:
        """Ack everything finished so far: the prefix with one multiple-ack, the rest one by one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.alive:
            return
        upto, singles = self.ledger.take()
        try:
            if upto is not None:
                self._send(upto, True)
            for tag in singles:
                self._send(tag, False)
        except Exception as exc:  # the channel died: its tags died with it, the broker redelivers
            log.debug("acks not sent (up to %s, %d alone): %s", upto, len(singles), exc)
            self.abandon()

    def close(self) -> None:
        """Final flush at shutdown, then stop acking."""
        self.flush()
        self.abandon()

    def abandon(self) -> None:
        """Stop acking: the channel is gone, so its delivery tags mean nothing on any other channel."""
        self.alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def tracker_for(channel: AckChannel, *, prefetch: int, interval: float) -> AckTracker:
    """The tracker of a consumer's channel.

    A batch is a quarter of the prefetch: the broker may send the next quarter while this one's ack is
    on its way, and never more than a quarter of the window is finished-but-unacked. When slow messages
    take most of the window, the acks go as soon as the window is full (see :class:`AckTracker`)."""

    def send_ack(tag: int, multiple: bool) -> None:
        channel.basic_ack(tag, multiple=multiple)

    def send_reject(tag: int) -> None:
        channel.basic_reject(tag, requeue=True)

    return AckTracker(send_ack, send_reject, batch=max(1, prefetch // 4), interval=interval, window=prefetch)
