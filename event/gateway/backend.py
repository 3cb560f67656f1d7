"""What the gateway does on the broker, without HTTP: publish, queue figures, the dead queue, commands.

Each operation reuses the library's own piece (:class:`event.Publisher`, :class:`event.dead.DeadQueue`,
:class:`event.management.ManagementApi`, :mod:`event.control`); this class only holds them together
for one namespace and exchange, and keeps the long-lived connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote

import orjson

from event import control, driver, wire
from event.config import DEFAULT_EXCHANGE, redact_url, resolve_url
from event.connect import Channel, Connection, Connector, close_quietly, connect, open_channel
from event.dead import DeadMessage, DeadQueue, RequeueReport
from event.errors import ConfigurationError, ConnectionFailed, EventError, Unroutable
from event.gateway.history import History
from event.gateway.morgue import DeadFilter, Fingerprint, Morgue, dead_key
from event.gateway.pull import PullQueues
from event.management import ManagementApi
from event.publisher import Publisher
from event.sending import Sender, properties

# How long a publish may wait for a lost connection to come back before the client gets a 503: an HTTP
# client can retry, and a request held for the Publisher's usual 30 s helps nobody.
RECONNECT_TIMEOUT_S = 3.0
CONFIRM_TIMEOUT_S = 10.0
BODY_SHOWN_BYTES = 256 * 1024  # of a dead message opened; the list shows event.dead's short preview
# A pause takes a moment to reach the workers: until then the queue may still show its consumers.
PAUSE_SETTLE_S = 10.0
# How long the workers have to answer a report request (all of them answered: sooner).
REPORT_WAIT_S = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Where the gateway publishes and what it looks after."""

    url: str
    namespace: str = ""
    exchange: str = DEFAULT_EXCHANGE
    management_url: str | None = None
    pull: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (queue name, routing keys) HTTP workers pull from

    @classmethod
    def create(
        cls,
        url: str | None = None,
        *,
        namespace: str = "",
        exchange: str = DEFAULT_EXCHANGE,
        management_url: str | None = None,
        pull: tuple[tuple[str, tuple[str, ...]], ...] = (),
    ) -> GatewayConfig:
        """A config with ``url`` resolved as everywhere else ($AMQP_URL, then the local broker)."""
        return cls(resolve_url(url), namespace, exchange, management_url, pull)

    @property
    def shown_url(self) -> str:
        """The broker URL without its password, for pages and logs."""
        return redact_url(self.url)

    @property
    def dead_queue(self) -> str:
        """The namespace's dead queue."""
        return wire.dead_queue_name(self.namespace, self.exchange)

    @property
    def queue_prefix(self) -> str:
        """What every queue of the namespace starts with."""
        prefix = wire.sanitize_namespace(self.namespace)
        return f"{prefix}:" if prefix else f"{self.exchange}_"


ROLES = ("consumer", "dead", "park", "delay", "control")


def level_queues(config: GatewayConfig) -> dict[str, tuple[str, int]]:
    """The namespace's park and hutch-schedule delay queues: name -> (role, level in seconds)."""
    found: dict[str, tuple[str, int]] = {}
    for level in wire.LEVELS:
        found[wire.park_queue_name(config.namespace, config.exchange, level)] = ("park", level)
        found[wire.delay_queue_name(config.namespace, config.exchange, level)] = ("delay", level)
    return found


def queue_role(name: str, config: GatewayConfig) -> str:
    """``dead``, ``park``, ``delay`` or ``consumer``: what a queue of the namespace is for.

    (``control``, a worker's own command queue, has a server-made name: known from its binding only.)
    """
    if name == config.dead_queue:
        return "dead"
    if wire.is_park_queue_name(name, config.exchange):
        return "park"
    if wire.is_delay_queue_name(name, config.exchange):
        return "delay"
    return "consumer"


def dead_summary(message: DeadMessage) -> dict[str, Any]:
    """A dead message as a row of the list shows it: the tool's view and the start of the body."""
    view = message.as_dict()
    view["key"] = dead_key(message)
    view["size"] = len(message.body)
    return view


def dead_view(message: DeadMessage) -> dict[str, Any]:
    """A dead message opened: every header (``x-death`` included), the body as text (at most
    ``BODY_SHOWN_BYTES``) and, when it is JSON, parsed (the page pretty-prints it)."""
    view = dead_summary(message)
    body = message.body[:BODY_SHOWN_BYTES]
    view["body"] = body.decode(errors="replace")
    view["body_truncated"] = len(message.body) > BODY_SHOWN_BYTES
    try:
        view["body_json"] = orjson.loads(message.body)
        view["is_json"] = True
    except orjson.JSONDecodeError:
        view["body_json"] = None
        view["is_json"] = False
    view["headers"] = {str(k): _json_safe(v) for k, v in message.headers.items()}
    return view


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _display_order(row: dict[str, Any]) -> tuple[int, int, str]:
    # Consumers first, then the dead queue, the workers' control queues, and the park and delay queues
    # by their level in seconds (5s before 10s before 10800s, not as text).
    return ROLES.index(row["role"]), row.get("level_s") or 0, row["name"]


DeadSelection = Callable[[DeadMessage], bool] | None


class NoSuchQueue(LookupError):
    """The queue named is not a consumer queue of the namespace."""


class ManagementUnavailable(EventError):
    """The management API, which lists the queues, cannot be used; the text says why and the fix."""


class NotRouted(LookupError):
    """A mandatory publish whose routing key no queue is bound to receive."""


class NotConsumed(LookupError):
    """A pause for a consumer queue that no worker consumes."""


class NoWorker(LookupError):
    """A command reached no running worker of the namespace."""


class Backend:
    """The gateway's broker side for one namespace and exchange (``async with`` or ``start``/``close``)."""

    def __init__(self, config: GatewayConfig, *, connector: Connector = connect) -> None:
        self.config = config
        self.connector = connector
        self.publisher = Publisher(
            config.url,
            namespace=config.namespace,
            exchange=config.exchange,
            timeout=CONFIRM_TIMEOUT_S,
            connection_name="event serve",
            reconnect_timeout=RECONNECT_TIMEOUT_S,
        )
        self.publisher.connector = connector
        self.management = ManagementApi.for_url(config.url, config.management_url)
        self._connect_lock = asyncio.Lock()
        self._publisher_started = False
        self._command_lock = asyncio.Lock()
        self._side_lock = asyncio.Lock()
        self._commands: Connection | None = None
        self._command_sender = Sender(self._side_connection, timeout=CONFIRM_TIMEOUT_S)
        self._control_declared: Connection | None = None  # the side connection it was declared on
        self._inspect_channel: Channel | None = None
        # queue -> when it was paused through this gateway (loop time); resumed or forgotten: absent
        self.requested: dict[str, float] = {}
        self.morgue = Morgue(self._dead, self._dead_fingerprint)
        self.history = History(self.queues, self.reports)
        self.pulled = (
            PullQueues(
                config.url, namespace=config.namespace, exchange=config.exchange, queues=dict(config.pull)
            )
            if config.pull
            else None
        )

    async def close(self) -> None:
        """Close the publisher and the command connection."""
        await self.morgue.close()
        await self.history.close()
        await self.publisher.close()
        await self._command_sender.close()
        await close_quietly(self._inspect_channel)
        await close_quietly(self._commands)
        self._inspect_channel = self._commands = None

    async def _connected_publisher(self) -> Publisher:
        # The first publish connects; afterwards the Publisher reconnects by itself (within
        # RECONNECT_TIMEOUT_S of a publish), so connecting again here would race its reconnection.
        # A gateway that starts while the broker is down starts all the same and answers 503.
        if not self._publisher_started:
            async with self._connect_lock:
                if not self._publisher_started:
                    await self.publisher.connect()
                    self._publisher_started = True
        return self.publisher

    # --- publishing ----------------------------------------------------------------------------------

    async def publish(
        self,
        routing_key: str,
        payload: Any,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        mandatory: bool = False,
    ) -> tuple[str, bool | None]:
        """Publish ``payload`` (JSON); the message id once the broker confirmed it, and whether a queue
        received it (None for a delayed message: it is routed when due).

        Sent mandatory either way, so that the answer can say whether it reached a queue; with
        ``mandatory`` an unroutable key raises :class:`NotRouted` (nothing was stored).
        """
        message_id = str(uuid.uuid4())
        publisher = await self._connected_publisher()
        if at is not None:
            await publisher.publish_at(at, routing_key, payload, message_id=message_id)
            return message_id, None
        if delay is not None and delay > 0:
            await publisher.publish_in(delay, routing_key, payload, message_id=message_id)
            return message_id, None
        try:
            await publisher.publish(routing_key, payload, message_id=message_id, mandatory=True)
        except Unroutable:
            if mandatory:
                raise NotRouted(routing_key) from None
            return message_id, False
        return message_id, True

    async def publish_bytes(
        self, routing_key: str, body: bytes, content_type: str, *, mandatory: bool = False
    ) -> tuple[str, bool]:
        """Publish ``body`` as it is, with its ``content_type``; as :meth:`publish` otherwise."""
        publisher = await self._connected_publisher()
        props = properties(content_type=content_type)
        message_id = props.message_id or ""
        try:
            await publisher.publish_raw(routing_key, body, props, mandatory=True)
        except Unroutable:
            if mandatory:
                raise NotRouted(routing_key) from None
            return message_id, False
        return message_id, True

    # --- queues --------------------------------------------------------------------------------------

    async def queues(self) -> list[dict[str, Any]]:
        """Every queue of the namespace in its role, with its figures (from the management API)."""
        levels = level_queues(self.config)
        try:
            control_queues = await self._control_queues()
            listing = await self.management.queues()
        except ConnectionFailed as exc:
            raise ManagementUnavailable(self.explain_management(exc)) from None
        rows = []
        for queue in listing:
            name = queue.get("name", "")
            if name in control_queues:
                role = "control"
            elif name.startswith(self.config.queue_prefix):
                role = levels[name][0] if name in levels else queue_role(name, self.config)
            else:
                continue
            stats = queue.get("message_stats") or {}
            row: dict[str, Any] = {
                "name": name,
                "role": role,
                "messages": queue.get("messages", 0) or 0,
                "unacked": queue.get("messages_unacknowledged", 0) or 0,
                "consumers": queue.get("consumers", 0) or 0,
                "publish_rate": (stats.get("publish_details") or {}).get("rate", 0.0),
                "deliver_rate": (stats.get("deliver_get_details") or {}).get("rate", 0.0),
                "ack_rate": (stats.get("ack_details") or {}).get("rate", 0.0),
                "paused": False,
            }
            arguments = queue.get("arguments") or {}
            if name in levels:
                row["level_s"] = levels[name][1]
            if role == "dead":
                row["ttl_ms"] = arguments.get("x-message-ttl")
                row["max_length"] = arguments.get("x-max-length")
            if role == "control":
                owner = queue.get("owner_pid_details") or {}
                row["worker"] = owner.get("name") or owner.get("peer_host")
            rows.append(row)
        # The management API's figures lag by its statistics interval (5 s by default); depth and
        # consumers of the queues that matter most are counted live instead.
        live = await self._live_counts([r["name"] for r in rows if r["role"] in ("consumer", "dead")])
        for row in rows:
            if row["name"] in live:
                row["messages"], row["consumers"] = live[row["name"]]
            if row["role"] == "consumer":
                row["paused"] = self._paused(row["name"], row["consumers"])
                # Pausing needs a worker that consumes the queue (or one paused through here).
                row["pausable"] = row["consumers"] > 0 or row["paused"]
        rows.sort(key=_display_order)
        return rows

    async def reports(self) -> list[dict[str, Any]]:
        """The state each running worker of the namespace reports (see :func:`event.control.report`):
        host, pid, version, and per consumer queue its counted outcomes, in flight and paused. Workers
        that do not answer within ``REPORT_WAIT_S`` (older versions, a stalled process) are left out."""
        try:
            expected: int | None = len(await self._control_queues())
        except ConnectionFailed:  # the management API is away: wait out the time instead
            expected = None
        if expected == 0:
            return []
        replies: list[dict[str, Any]] = []
        enough = asyncio.Event()

        def on_reply(delivery: driver.Delivery) -> None:
            try:
                reply = orjson.loads(delivery.body)
            except orjson.JSONDecodeError:
                return
            if isinstance(reply, dict) and isinstance(reply.get("consumers"), dict):
                replies.append(reply)
                if expected is not None and len(replies) >= expected:
                    enough.set()

        await self._declare_control()
        channel = await open_channel(await self._side_connection(), confirms=False)
        try:
            declared = await channel.queue_declare("", exclusive=True, auto_delete=True, durable=False)
            await channel.basic_consume(declared.queue, on_reply, no_ack=True)
            try:
                await control.request_report(
                    self._command_sender,
                    declared.queue,
                    namespace=self.config.namespace,
                    exchange=self.config.exchange,
                )
            except Unroutable:  # no worker listens
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), REPORT_WAIT_S)
        finally:
            await close_quietly(channel)  # its queue goes with it (exclusive, auto-delete)
        return list(replies)

    async def workers(self) -> list[dict[str, Any]]:
        """The namespace's running workers (one per control queue): their connection, the namespace's
        queues each consumes, and the messages each holds unacknowledged (in flight), from the
        management API; with what each worker reports of itself (host name, pid, event's version, and
        per consumer queue its handlers running and whether it is paused), null for a worker that did
        not answer."""
        api = self.management
        vhost = api.quoted_vhost
        try:
            control_queues = await self._control_queues()
            if not control_queues:
                return []
            try:
                reports = {r.get("control_queue"): r for r in await self.reports()}
            except (EventError, driver.AMQPError, ConnectionError) as exc:  # the broker is away
                log.debug("no worker reports: %s", exc)
                reports = {}
            consumers = await api.get(f"/consumers/{vhost}") or []
            found = []
            for name in sorted(control_queues):
                queue = await api.get(f"/queues/{vhost}/{quote(name, safe='')}") or {}
                # channel_details is [] while the broker's statistics have not caught up: skipped until then.
                details = [
                    c["channel_details"]
                    for c in queue.get("consumer_details") or []
                    if isinstance(c.get("channel_details"), dict)
                    and c["channel_details"].get("connection_name")
                ]
                if not details:
                    continue
                connection_name = details[0].get("connection_name", "")
                connection = await api.get(f"/connections/{quote(connection_name, safe='')}") or {}
                channels = await api.get(f"/connections/{quote(connection_name, safe='')}/channels") or []
                properties = connection.get("client_properties") or {}
                consumed = sorted(
                    {
                        c["queue"]["name"]
                        for c in consumers
                        if isinstance(c.get("channel_details"), dict)
                        and c["channel_details"].get("connection_name") == connection_name
                        and c["queue"]["name"].startswith(self.config.queue_prefix)
                    }
                )
                connected_at = connection.get("connected_at")
                report = reports.get(name) or {}
                reported = report.get("consumers") or {}
                found.append(
                    {
                        "connection": connection_name,
                        "name": properties.get("connection_name"),
                        "platform": properties.get("platform"),
                        "host": details[0].get("peer_host"),
                        "port": details[0].get("peer_port"),
                        "connected_at": datetime.fromtimestamp(connected_at / 1000, UTC).isoformat()
                        if isinstance(connected_at, int)
                        else None,
                        "queues": consumed,
                        "in_flight": sum(int(c.get("messages_unacknowledged") or 0) for c in channels),
                        "hostname": report.get("host"),
                        "pid": report.get("pid"),
                        "version": report.get("version"),
                        "consumers": [
                            {
                                "queue": queue,
                                "in_flight": int(state.get("in_flight") or 0),
                                "paused": bool(state.get("paused")),
                            }
                            for queue, state in sorted(reported.items())
                            if isinstance(state, dict)
                        ]
                        if report
                        else None,
                    }
                )
        except ConnectionFailed as exc:
            raise ManagementUnavailable(self.explain_management(exc)) from None
        return found

    def explain_management(self, exc: ConnectionFailed) -> str:
        """What is wrong with the management API, and the fix, from the error reaching it gave."""
        cause = exc.__cause__
        base = self.management.base
        if isinstance(cause, HTTPError) and cause.code == 401:
            return (
                f"the management API at {base} refused the user {self.management.user!r} (401): check the "
                f"user and password in the broker URL, which the management API is asked with too"
            )
        if isinstance(cause, HTTPError) and cause.code == 403:
            return (
                f"the management API at {base} lets the user {self.management.user!r} in but not see the "
                f"queues (403): give it the 'monitoring' or 'management' tag (rabbitmqctl set_user_tags)"
            )
        return str(exc)

    async def check(self) -> list[str]:
        """What is wrong with the broker and its management API now, each with its fix (empty: nothing)."""
        problems = []
        try:
            await self._side_connection()
        except ConnectionFailed as exc:
            problems.append(str(exc))
        try:
            await self.management.get("/overview")
        except ConnectionFailed as exc:
            problems.append(self.explain_management(exc) + "; the queue list stays empty until then")
        return problems

    def _paused(self, name: str, consumers: int) -> bool:
        # Workers publish no state of their own; the broker's consumer count is what they do. A queue
        # paused through this gateway stays "paused" while nothing consumes it; once a consumer is back
        # (a worker restarted, which forgets commands) the pause is over and forgotten here too.
        since = self.requested.get(name)
        if since is None:
            return False
        if consumers > 0 and asyncio.get_running_loop().time() - since > PAUSE_SETTLE_S:
            del self.requested[name]
            return False
        return True

    async def _control_queues(self) -> set[str]:
        """The control queues of the namespace's running workers (one each), from their bindings."""
        path = (
            f"/exchanges/{self.management.quoted_vhost}/"
            f"{quote(wire.control_exchange_name(self.config.exchange), safe='')}/bindings/source"
        )
        bindings = await self.management.get(path) or []
        key = wire.control_routing_key(self.config.namespace)
        return {
            b["destination"]
            for b in bindings
            if b.get("destination_type") == "queue" and b.get("routing_key") == key
        }

    # --- the dead queue ------------------------------------------------------------------------------

    def _dead(self) -> DeadQueue:
        dead = DeadQueue(self.config.url, namespace=self.config.namespace, exchange=self.config.exchange)
        dead.connector = self.connector
        return dead

    async def _dead_fingerprint(self) -> Fingerprint | None:
        """The dead queue's message count (a passive declare: nothing delivered) and the management
        API's count of messages published into it (None when that API does not answer); None when
        there is no dead queue."""
        name = self.config.dead_queue
        counts = await self._live_counts([name])
        if name not in counts:  # no such queue, or no broker: DeadQueue tells which (or raises)
            try:
                async with self._dead() as dead:
                    count = await dead.count()
            except ConfigurationError:
                return None
        else:
            count = counts[name][0]
        try:
            queue = await self.management.queue(name) or {}
        except ConnectionFailed:
            queue = {}
        published = (queue.get("message_stats") or {}).get("publish")
        return count, published if isinstance(published, int) else None

    async def dead(self, *, offset: int, limit: int, where: DeadFilter) -> dict[str, Any]:
        """A page of the dead queue, newest first, of the messages ``where`` lets through (they stay)."""
        snapshot = await self.morgue.snapshot()
        if snapshot is None:  # no dead queue yet: no pool of the namespace has ever started
            return {
                "queue": self.config.dead_queue,
                "exists": False,
                "total": 0,
                "matching": 0,
                "offset": offset,
                "messages": [],
            }
        matching = snapshot.matching(where)
        return {
            "queue": self.config.dead_queue,
            "exists": True,
            "total": len(snapshot.messages),
            "matching": len(matching),
            "offset": offset,
            "read_at": datetime.fromtimestamp(snapshot.read_at, UTC).isoformat(),
            "reads": self.morgue.reads,
            "messages": [dead_summary(m) for m in matching[offset : offset + limit]],
        }

    async def dead_message(self, key: str) -> dict[str, Any] | None:
        """One dead message in full (as last read), or None when there is none with ``key``."""
        snapshot = await self.morgue.snapshot()
        message = snapshot.by_key.get(key) if snapshot is not None else None
        return dead_view(message) if message is not None else None

    async def requeue(self, *, message_id: str | None = None, where: DeadSelection = None) -> RequeueReport:
        """Requeue one dead message by id, the ones ``where`` selects, or all of them (both None)."""
        async with self.morgue.changing(), self._dead() as dead:
            if where is not None:
                report = await dead.requeue(where=where)
            else:
                report = await dead.requeue(message_id=message_id, everything=message_id is None)
        requeued = set(report.requeued)
        self.morgue.forget(lambda m: m.message_id in requeued and (where is None or where(m)))
        return report

    async def discard(self, *, message_id: str | None = None, where: DeadSelection = None) -> int:
        """Delete one dead message by id, the ones ``where`` selects, or all of them (both None);
        returns how many."""
        async with self.morgue.changing(), self._dead() as dead:
            if where is not None:
                deleted = await dead.discard_where(where)
                self.morgue.forget(where)
            elif message_id is None:
                deleted = await dead.purge()
                self.morgue.forget(lambda m: True)
            else:
                deleted = await dead.discard(message_id)
                self.morgue.forget(lambda m: m.message_id == message_id)
        return deleted

    # --- pause / resume ------------------------------------------------------------------------------

    async def command(self, action: str, queue: str) -> None:
        """Send ``action`` (pause or resume) for ``queue`` to every running worker of the namespace."""
        known = {row["name"]: row for row in await self.queues() if row["role"] == "consumer"}
        if queue not in known:
            raise NoSuchQueue(queue)
        # A pause for a queue nothing consumes would be a 202 that changes nothing: say so instead.
        if action == "pause" and not known[queue]["pausable"]:
            raise NotConsumed(queue)
        await self._declare_control()
        try:
            await control.send_command(
                self._command_sender,
                control.Command(action, queue),
                namespace=self.config.namespace,
                exchange=self.config.exchange,
            )
        except Unroutable as exc:  # mandatory, and no worker's control queue is bound
            raise NoWorker(queue) from exc
        if action == "pause":
            self.requested[queue] = asyncio.get_running_loop().time()
        else:
            self.requested.pop(queue, None)

    async def _declare_control(self) -> None:
        # Once per side connection: the control exchange a command goes to.
        async with self._command_lock:
            connection = await self._side_connection()
            if self._control_declared is connection:
                return
            channel = await open_channel(connection, confirms=False)
            try:
                await control.declare_control_exchange(channel, self.config.exchange)
            finally:
                await close_quietly(channel)
            self._control_declared = connection

    async def _side_connection(self, deadline: float | None = None) -> Connection:
        # One connection for commands and live queue counts, apart from the publisher's (and the source
        # of the commands' sender).
        async with self._side_lock:
            if self._commands is None or self._commands.is_closed:
                self._commands = await self.connector(self.config.url, name="event serve (commands)")
            return self._commands

    async def _live_counts(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """Ready messages and consumers of ``names`` right now (passive declares), as far as reachable."""
        found: dict[str, tuple[int, int]] = {}
        try:
            async with self._command_lock:
                channel = self._inspect_channel
                if channel is None or channel.is_closed:
                    channel = self._inspect_channel = await open_channel(
                        await self._side_connection(), confirms=False
                    )
            for name in names:
                declared = await channel.queue_declare(name, passive=True)
                found[name] = (declared.message_count, declared.consumer_count)
        except (EventError, driver.AMQPError, ConnectionError) as exc:
            # A queue deleted since the listing closes the channel; the broker may be gone. The
            # management API's figures stand in for what could not be counted.
            log.debug("live queue counts incomplete: %s", exc)
        return found


def parse_at(text: str) -> datetime:
    """An ISO 8601 time with a time zone (``Z`` allowed); :class:`ValueError` saying what is wrong."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"at={text!r} is not an ISO 8601 time: {exc}") from exc
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"at={text!r} has no time zone: add one, e.g. {text}Z or {text}+00:00")
    return when.astimezone(UTC)
