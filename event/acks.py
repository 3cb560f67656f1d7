"""Acknowledgement batching: ack with ``multiple=True`` up to the contiguous finished prefix.

Handlers finish out of order; the broker's ``multiple`` flag acknowledges every outstanding tag up to
the one named, so it may only name a tag below which every delivery has finished. :class:`AckLedger`
keeps that bookkeeping (pure, property-tested); :class:`AckTracker` adds the sending, batched by count
and by a short timer so that no finished message waits long for its ack.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger("event.acks")

SendAck = Callable[[int, bool], None]  # (delivery tag, multiple): a channel's basic_ack
SendReject = Callable[[int], None]  # a channel's basic_reject with requeue


class AckLedger:
    """Which delivery tags of one channel are finished, and up to where a multiple-ack may reach."""

    __slots__ = ("_alone", "_finished", "_outstanding", "ackable_upto", "acked_upto", "ready", "ready_upto")

    def __init__(self) -> None:
        self._outstanding: deque[int] = deque()  # delivered, in delivery (= tag) order
        self._finished: set[int] = set()  # finished, but behind an unfinished tag
        self.ready_upto = 0  # highest tag with every tag up to it finished
        # A multiple-ack must name a tag the broker still holds: one settled alone (a reject, an
        # ack sent at once) may be covered by it, never named, or the broker closes the channel.
        self._alone: set[int] = set()
        self.ackable_upto = 0  # highest tag of that prefix not settled alone
        self.acked_upto = 0  # highest tag a sent multiple-ack covered
        self.ready = 0  # how many finished tags wait for the next multiple-ack

    def delivered(self, tag: int) -> None:
        """Record a new delivery; tags arrive in increasing order on a channel."""
        self._outstanding.append(tag)

    def finish(self, tag: int, *, alone: bool = False) -> None:
        """Record that ``tag``'s handling ended; ``alone``: the broker has settled it already."""
        if alone:
            self._alone.add(tag)
        outstanding = self._outstanding
        if outstanding and outstanding[0] == tag:
            outstanding.popleft()
            self._ready(tag)
            finished = self._finished
            while outstanding and outstanding[0] in finished:
                head = outstanding.popleft()
                finished.discard(head)
                self._ready(head)
        else:
            self._finished.add(tag)

    def _ready(self, tag: int) -> None:
        self.ready_upto = tag
        self.ready += 1
        if tag in self._alone:
            self._alone.discard(tag)
        else:
            self.ackable_upto = tag

    def take(self) -> int | None:
        """The tag for the next multiple-ack, or None when nothing new is ready; marks it as sent."""
        if self.ready_upto <= self.acked_upto:
            return None
        before, self.acked_upto = self.acked_upto, self.ready_upto
        self.ready = 0
        return self.ackable_upto if self.ackable_upto > before else None  # else all settled alone

    def stragglers(self) -> list[int]:
        """Finished tags stuck behind an unfinished one: at shutdown they are acked one by one."""
        tags = sorted(self._finished - self._alone)
        self._finished.clear()
        self._alone.clear()
        return tags

    @property
    def unfinished(self) -> int:
        """How many delivered tags have not finished."""
        return len(self._outstanding) - len(self._finished)


class AckTracker:
    """Sends the acks of one channel in batches; forgets everything once its channel is gone.

    Settling is a plain call, not a coroutine: the driver writes an ack with the next batch of outgoing
    frames and the broker sends no answer, so nothing here ever waits (and the hot path never suspends
    for an ack)."""

    __slots__ = ("_reject", "_send", "_timer", "alive", "batch", "interval", "ledger")

    def __init__(self, send: SendAck, reject: SendReject, *, batch: int, interval: float) -> None:
        self._send = send
        self._reject = reject
        self.batch = max(1, batch)
        self.interval = interval
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
        if ledger.ready >= self.batch:
            self.flush()
        elif ledger.ready and self._timer is None:
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
        """Send the multiple-ack for everything finished in order so far."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        upto = self.ledger.take()
        if upto is None or not self.alive:
            return
        try:
            self._send(upto, True)
        except Exception as exc:  # the channel died: its tags died with it, the broker redelivers
            log.debug("ack of tags up to %d not sent: %s", upto, exc)
            self.abandon()

    def close(self) -> None:
        """Final flush at shutdown: the batch, then every finished tag stuck behind an unfinished one."""
        self.flush()
        for tag in self.ledger.stragglers():
            if not self.alive:
                return
            try:
                self._send(tag, False)
            except Exception as exc:
                log.debug("ack of tag %d not sent: %s", tag, exc)
                self.abandon()
        self.abandon()

    def abandon(self) -> None:
        """Stop acking: the channel is gone, so its delivery tags mean nothing on any other channel."""
        self.alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
