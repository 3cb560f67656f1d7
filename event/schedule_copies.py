"""Which of the copies of a hutch-schedule message a pool runs: exactly one, whoever bound ``hutch.schedule``.

hutch-schedule publishes every delayed message and every Ruby retry to ``<exchange>.schedule``, where each
namespace that ran it has bound its delay queues: N namespaces make N copies, and each copy reaches every
queue bound to the message's key (Ruby does not deduplicate). A pool binds nothing there by default (it
would add a copy for every Ruby queue); it receives the copies the bound namespaces make, which differ
only in the delay queue their last ``x-death`` names, and runs one of them:

- **The elected namespace's copy.** The namespaces are ranked: those without event park queues (Ruby
  services, which hutch-schedule never unbinds) before those with (event namespaces, which
  ``event topology --unbind-schedule`` may be unbinding), then by name. A copy from namespace ``x`` is
  run when no namespace known to this pool ranks before ``x``. The namespaces bound are read from the
  management API's bindings of the schedule exchange (every :data:`RECHECK_S`) when it answers, and
  otherwise learnt from the copies themselves; each is checked on the broker (a passive declare of its
  delay and park queues) when first seen and again after :data:`RECHECK_S`, and one whose delay queue is
  gone (or, by the API, is no longer bound) is forgotten. The copy of the best-ranked namespace bound
  when the message was published is run by whichever worker gets it, so no message is lost. Without
  the API, a worker that has not yet seen that namespace's copy may run one more copy while it learns.
- **Once per worker.** A window of the last :data:`WINDOW` message ids run per queue (all copies of one
  publish share its id) makes one worker run a message once even while it learns.

A check that fails on the broker (the connection is gone) runs the copy: a duplicate, never a loss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from event import wire

log = logging.getLogger(__name__)

RECHECK_S = 30.0
WINDOW = 4096

# Whether a queue exists: True, False, or an exception when the broker could not be asked.
QueueExists = Callable[[str], Awaitable[bool]]
# The namespaces whose delay queues are bound to the schedule exchange now (the management API's view).
BoundNamespaces = Callable[[], Awaitable[set[str]]]


@dataclass(frozen=True, slots=True)
class Known:
    """A namespace seen binding ``hutch.schedule``: its rank, and when the broker last confirmed it."""

    rank: tuple[int, str]
    checked_at: float


class ScheduleCopies:
    """The pool's choice among hutch-schedule copies; :meth:`take` says whether to run one."""

    def __init__(
        self,
        exchange: str,
        exists: QueueExists,
        bound: BoundNamespaces | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        recheck_s: float = RECHECK_S,
        window: int = WINDOW,
    ) -> None:
        self.exchange = exchange
        self.exists = exists
        self.clock = clock
        self.recheck_s = recheck_s
        self.window = window
        self.known: dict[str, Known] = {}
        self._taken: dict[str, OrderedDict[str, None]] = {}  # per queue: message ids run lately
        self._checking: dict[str, asyncio.Task[Known | None]] = {}
        self.bound = bound
        self._listing: asyncio.Task[None] | None = None
        self._listed_at: float | None = None
        self._unlisted_warned = False
        self.listed: set[str] | None = None  # the namespaces bound, as the API last said

    async def take(self, queue: str, origin: str, message_id: str | None) -> bool:
        """Whether ``queue``'s consumer runs this copy, made by namespace ``origin``'s delay queue."""
        taken = self._taken.setdefault(queue, OrderedDict())
        try:
            await self._list()
            mine = await self._known(origin)  # learnt even when the window drops it: the next one counts
            if message_id is not None and message_id in taken:
                return False  # another copy of this very publish ran here already
            better = [name for name, known in self.known.items() if mine is None or known.rank < mine.rank]
            for name in better:
                await self._known(name)  # forget it if it is gone; it may outrank us only while it exists
        except Exception as exc:  # the broker cannot be asked now: run it (a duplicate, never a loss)
            log.warning("could not check the namespaces bound to hutch.schedule (%s); running the copy", exc)
            return message_id is None or (message_id not in taken and self._ran(taken, message_id))
        if message_id is not None and message_id in taken:
            return False  # another copy ran while this one waited for the broker
        if mine is None:  # its delay queue is gone already: no rule can tell, so run it
            return self._ran(taken, message_id)
        if any(known.rank < mine.rank for known in self.known.values()):
            return False
        return self._ran(taken, message_id)

    def _ran(self, taken: OrderedDict[str, None], message_id: str | None) -> bool:
        if message_id is not None:
            taken[message_id] = None
            if len(taken) > self.window:
                taken.popitem(last=False)
        return True

    async def _list(self) -> None:
        # Every recheck_s, the namespaces bound now, if the management API says: one listing at a time.
        if self.bound is None:
            return
        if self._listing is None:
            if self._listed_at is not None and self.clock() - self._listed_at < self.recheck_s:
                return
            self._listed_at = self.clock()
            self._listing = asyncio.ensure_future(self._listed(self.bound))
        listing = self._listing
        await asyncio.shield(listing)

    async def _listed(self, bound: BoundNamespaces) -> None:
        try:
            try:
                names = await bound()
            except Exception as exc:  # no API (or no right to it): learn from the copies
                if not self._unlisted_warned:
                    self._unlisted_warned = True
                    log.warning(
                        "the management API does not list the namespaces bound to hutch.schedule (%s): "
                        "learning them from the copies, so a worker may run a message twice until it has "
                        "seen them all",
                        exc,
                    )
                return
            self.listed = names
            for name, known in list(self.known.items()):
                if (name not in names) != (known.rank[0] == 2):
                    del self.known[name]  # unbound (event topology --unbind-schedule), or bound again
            for name in names:
                await self._known(name)
        finally:
            self._listing = None

    async def _known(self, namespace: str) -> Known | None:
        """What the broker says of ``namespace`` now (cached for ``recheck_s``); None when it is gone."""
        known = self.known.get(namespace)
        if known is not None and self.clock() - known.checked_at < self.recheck_s:
            return known
        checking = self._checking.get(namespace)
        if checking is None:  # one check per namespace at a time, whichever consumers ask
            checking = asyncio.ensure_future(self._check(namespace))
            self._checking[namespace] = checking
            checking.add_done_callback(lambda _: self._checking.pop(namespace, None))
        return await asyncio.shield(checking)

    async def _check(self, namespace: str) -> Known | None:
        level = wire.LEVELS[0]
        if not await self.exists(wire.delay_queue_name(namespace, self.exchange, level)):
            self.known.pop(namespace, None)
            return None
        has_park_queues = await self.exists(wire.park_queue_name(namespace, self.exchange, level))
        # Unbound by now (the API says), its delay queues' copies still waiting there come last.
        unbound = self.listed is not None and namespace not in self.listed
        group = 2 if unbound else 1 if has_park_queues else 0
        known = Known((group, namespace), self.clock())
        if namespace not in self.known:
            kind = "an event namespace" if has_park_queues else "a Ruby namespace"
            log.info("namespace %r binds hutch.schedule (%s)", namespace, kind)
        self.known[namespace] = known
        return known
