"""One scenario suite, run against RabbitMQ and against the in-memory TestBroker: they must agree.

Time is real on RabbitMQ and virtual on TestBroker (``wait`` sleeps, or advances the clock). The
scenarios say what a user sees (attempt numbers, headers, delivery times), not which queue a copy
passes through. The in-memory half needs no broker: ``pytest tests/integration/test_scenarios.py -k
memory`` passes with nothing listening at $AMQP_URL (its RabbitMQ half then fails, saying so).
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support import DEFAULT_URL, eventually

from event import Message, Publisher, WorkerPool
from event.connect import connect
from event.dead import DeadQueue
from event.driver import Channel, Connection, Delivery, PreconditionFailed, Properties
from event.testing import TestBroker


class Harness:
    def __init__(self, kind: str, pool_kwargs: dict[str, Any]) -> None:
        self.kind = kind
        self.kwargs = pool_kwargs
        self.broker: TestBroker | None = None
        self._connections: list[Connection] = []

    @contextlib.asynccontextmanager
    async def run(self, pool: WorkerPool) -> AsyncIterator[Publisher]:
        publisher = Publisher(**self.kwargs)
        if self.kind == "memory":
            async with TestBroker(pool, publisher) as broker:
                self.broker = broker
                yield publisher
                await self._close_channels()
        else:
            async with pool.running(), publisher:
                yield publisher
                await self._close_channels()

    @contextlib.asynccontextmanager
    async def bare(self) -> AsyncIterator[None]:
        """The broker alone, for scenarios that speak AMQP as any client would."""
        if self.kind == "memory":
            async with TestBroker() as broker:
                self.broker = broker
                yield
        else:
            yield
        await self._close_channels()

    async def _close_channels(self) -> None:
        for connection in self._connections:
            await connection.close()
        self._connections.clear()

    async def channel(self) -> Channel:
        """A raw AMQP channel of the driver seam on a connection of its own (closed with ``bare``): the
        in-memory broker's, or event.amqp's on RabbitMQ; the scenarios speak the same protocol to both."""
        if self.broker is not None:
            connection: Connection = await self.broker.connect(self.kwargs["url"], name="scenario")
        else:
            connection = await connect(self.kwargs["url"], name="scenario")
        self._connections.append(connection)
        return await connection.channel()

    def queue(self, name: str) -> str:
        """A queue name inside this test's namespace (cleaned up with it)."""
        return f"{self.kwargs['namespace']}:{name}"

    async def settle(self, check: Callable[[], bool], timeout: float = 20) -> None:
        if self.broker is not None:
            await self.broker.drain()
            assert check()
        else:
            await eventually(check, timeout=timeout)

    async def wait(self, seconds: float) -> None:
        if self.broker is not None:
            await self.broker.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    def now(self) -> float:
        """Epoch seconds: the virtual clock on TestBroker, the real one on RabbitMQ."""
        return self.broker.now if self.broker is not None else time.time()

    def dead_queue(self) -> DeadQueue:
        dead = DeadQueue(
            self.kwargs["url"], namespace=self.kwargs["namespace"], exchange=self.kwargs["exchange"]
        )
        if self.broker is not None:
            dead.connector = self.broker.connect
        return dead


@pytest.fixture(params=["rabbitmq", "memory"])
def harness(request: pytest.FixtureRequest) -> Harness:
    if request.param == "memory":  # no broker, no management API: names of its own, never dialled
        namespace = f"t{uuid.uuid4().hex[:10]}"
        url = os.environ.get("AMQP_URL") or DEFAULT_URL
        return Harness("memory", {"url": url, "namespace": namespace, "exchange": f"ex-{namespace}"})
    return Harness("rabbitmq", request.getfixturevalue("pool_kwargs"))


async def take_all(channel: Channel, queue: str) -> list[Delivery]:
    taken = []
    while True:
        got = await channel.basic_get(queue, no_ack=True)
        if got is None:
            return taken
        taken.append(got)


async def depth(channel: Channel, queue: str) -> int:
    return (await channel.queue_declare(queue, passive=True)).message_count


async def test_topic_routing(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    seen: dict[str, list[str]] = {"star": [], "hash": [], "exact": []}

    @pool.consumer("app.user.*")
    async def star(ctx: object, msg: Message[Any]) -> None:
        seen["star"].append(msg.routing_key)

    @pool.consumer("app.#")
    async def hash_(ctx: object, msg: Message[Any]) -> None:
        seen["hash"].append(msg.routing_key)

    @pool.consumer("app.send_email")
    async def exact(ctx: object, msg: Message[Any]) -> None:
        seen["exact"].append(msg.routing_key)

    async with harness.run(pool) as publisher:
        for key in ("app.user.created", "app.user.deep.key", "app.send_email", "other.thing"):
            await publisher.publish(key, {})
        await harness.settle(lambda: len(seen["hash"]) == 3)
        await harness.wait(0.3)
    assert sorted(seen["star"]) == ["app.user.created"]
    assert sorted(seen["hash"]) == ["app.send_email", "app.user.created", "app.user.deep.key"]
    assert seen["exact"] == ["app.send_email"]


async def test_delayed_message_arrives_at_its_level_not_before(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    arrived: list[float] = []

    @pool.consumer("app.later")
    async def later(ctx: object, msg: Message[Any]) -> None:
        arrived.append(harness.now())

    async with harness.run(pool) as publisher:
        sent = harness.now()
        await publisher.publish_in(3, "app.later", {})
        await harness.wait(4)
        assert arrived == []  # level 5: not at 3 s, not at 4 s
        await harness.wait(2)
        await harness.settle(lambda: len(arrived) == 1)
    assert 5 <= arrived[0] - sent <= 6.5


async def test_retries_then_dead_queue_then_requeue(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    attempts: list[int] = []
    others: list[int] = []
    healthy = False

    @pool.consumer("app.charge", retries=2)
    async def charge(ctx: object, msg: Message[Any]) -> None:
        attempts.append(msg.attempt)
        if not healthy:
            raise RuntimeError("declined")

    @pool.consumer("app.charge")
    async def audit(ctx: object, msg: Message[Any]) -> None:
        others.append(msg.attempt)

    async with harness.run(pool) as publisher:
        await publisher.publish("app.charge", {"amount": 5}, message_id="c-1")
        await harness.settle(lambda: attempts == [1])
        await harness.wait(5.5)
        await harness.settle(lambda: attempts == [1, 2])
        await harness.wait(5.5)
        await harness.settle(lambda: attempts == [1, 2, 3])
        async with harness.dead_queue() as dead:

            async def one_dead() -> bool:
                return await dead.count() == 1

            await eventually(one_dead, timeout=10)
            [message] = await dead.list()
            assert (message.message_id, message.attempts, message.error) == (
                "c-1",
                3,
                "RuntimeError: declined",
            )
            healthy = True
            report = await dead.requeue(everything=True)
            assert report.requeued == ["c-1"]
        await harness.settle(lambda: attempts == [1, 2, 3, 1])
    assert others == [1]


async def test_max_concurrency_is_respected(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    running = peak = 0
    done: list[int] = []

    @pool.consumer("app.work", max_concurrency=2)
    async def work(ctx: object, msg: Message[Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        done.append(msg.body["n"])

    async with harness.run(pool) as publisher:
        await asyncio.gather(*(publisher.publish("app.work", {"n": n}) for n in range(12)))
        await harness.settle(lambda: len(done) == 12)
    assert peak == 2
    assert sorted(done) == list(range(12))


async def test_cc_routes_a_copy_to_each_key(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    seen: dict[str, list[str]] = {"audit": [], "mail": []}

    @pool.consumer("app.audit.*")
    async def audit(ctx: object, msg: Message[Any]) -> None:
        seen["audit"].append(msg.routing_key)

    @pool.consumer("app.mail")
    async def mail(ctx: object, msg: Message[Any]) -> None:
        seen["mail"].append(msg.routing_key)

    async with harness.run(pool) as publisher:
        await publisher.publish("app.mail", {}, headers={"CC": ["app.audit.mail", "nobody.listens"]})
        await harness.settle(lambda: len(seen["audit"]) == 1 and len(seen["mail"]) == 1)
        await harness.wait(0.3)
    assert seen == {"audit": ["app.mail"], "mail": ["app.mail"]}


async def test_header_values_go_through_the_amqp_encoding(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    got: list[dict[str, Any]] = []

    @pool.consumer("app.typed")
    async def typed(ctx: object, msg: Message[Any]) -> None:
        got.append(dict(msg.headers))

    async with harness.run(pool) as publisher:
        for bad in [(1, 2), b"raw", {1}, 2**70]:
            with pytest.raises(TypeError):
                await publisher.publish("app.typed", {}, headers={"bad": bad})
        sent = {
            "float": 0.1,
            "decimal": decimal.Decimal("1.25"),
            "when": datetime(2026, 1, 1, tzinfo=UTC),
            "bytearray": bytearray(b"ab"),
            "list": [1, "a", None],
            "table": {"a": 1},
            "flag": True,
            "big": 2**40,
            "none": None,
        }
        await publisher.publish("app.typed", {}, headers=sent)
        await harness.settle(lambda: len(got) == 1)
        await harness.wait(0.3)
    [headers] = got  # none of the refused publishes was sent
    assert headers["float"] == 0.10000000149011612  # a 32-bit float on the wire
    assert {k: headers[k] for k in sent if k != "float"} == {k: v for k, v in sent.items() if k != "float"}


async def test_retries_carry_attempt_numbers_and_the_dead_queue_names_the_error(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    attempts: list[int] = []

    @pool.consumer("app.flaky", retries=1)
    async def flaky(ctx: object, msg: Message[Any]) -> None:
        attempts.append(msg.attempt)
        raise ValueError(f"attempt {msg.attempt}")

    async with harness.run(pool) as publisher:
        await publisher.publish("app.flaky", {}, message_id="f-1")
        await harness.settle(lambda: attempts == [1])
        await harness.wait(5.5)
        await harness.settle(lambda: attempts == [1, 2])
        async with harness.dead_queue() as dead:

            async def one_dead() -> bool:
                return await dead.count() == 1

            await eventually(one_dead, timeout=10)
            [message] = await dead.list()
    assert (message.message_id, message.attempts, message.error) == ("f-1", 2, "ValueError: attempt 2")
    assert message.routing_key == "app.flaky"


async def test_x_death_from_another_client_counts_as_earlier_attempts(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    attempts: list[int] = []

    @pool.consumer("app.legacy")
    async def legacy(ctx: object, msg: Message[Any]) -> None:
        attempts.append(msg.attempt)

    # What a Ruby worker with hutch-schedule leaves on a message that failed twice.
    x_death = [{"count": 2, "reason": "expired", "queue": "hutch_1s_delay_queue", "exchange": "hutch.delay",
                "routing-keys": ["app.legacy"], "time": datetime(2026, 1, 1, tzinfo=UTC)}]  # fmt: skip
    async with harness.run(pool):
        channel = await harness.channel()
        await channel.basic_publish(
            b"{}",
            exchange=harness.kwargs["exchange"],
            routing_key="app.legacy",
            properties=Properties(content_type="application/json", headers={"x-death": x_death}),
        )
        await harness.settle(lambda: attempts == [3])
        await harness.wait(0.3)
    assert attempts == [3]


async def test_the_smaller_ttl_wins_and_expiry_is_from_the_head(harness: Harness) -> None:
    async with harness.bare():
        channel = await harness.channel()
        dead = harness.queue("dead")
        await channel.queue_declare(dead, durable=True)
        dlx = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
        short = harness.queue("short")
        await channel.queue_declare(short, durable=True, arguments={"x-message-ttl": 1000, **dlx})
        await channel.basic_publish(b"A", routing_key=short, properties=Properties(expiration="60000"))
        await channel.basic_publish(b"B", routing_key=short)
        head = harness.queue("head")
        await channel.queue_declare(head, durable=True, arguments=dlx)
        await channel.basic_publish(b"C", routing_key=head, properties=Properties(expiration="60000"))
        await channel.basic_publish(b"D", routing_key=head, properties=Properties(expiration="500"))
        await harness.wait(2.5)
        assert await depth(channel, short) == 0  # both expired after 1 s, the queue's TTL
        assert await depth(channel, head) == 2  # D expired, but waits behind C, which has not
        got = await channel.basic_get(head, no_ack=True)
        assert got is not None and got.body == b"C"
        await harness.wait(0.3)
        assert await depth(channel, head) == 0  # D, now at the head, is dead-lettered, not delivered
        bodies = [m.body for m in await take_all(channel, dead)]
    assert bodies == [b"A", b"B", b"D"]


async def test_dead_lettering_writes_the_brokers_x_death(harness: Harness) -> None:
    async with harness.bare():
        channel = await harness.channel()
        dead = harness.queue("dead")
        await channel.queue_declare(dead, durable=True)
        ttl = harness.queue("ttl")
        await channel.queue_declare(
            ttl,
            durable=True,
            arguments={"x-message-ttl": 500, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
        )
        props = Properties(expiration="60000", headers={"CC": ["elsewhere"], "k": "v"})
        await channel.basic_publish(b"first", routing_key=ttl, properties=props)
        await harness.wait(1.5)
        [first] = await take_all(channel, dead)
        headers = first.properties.headers
        if harness.kind != "memory" and "x-last-death-queue" in headers:
            pytest.skip(
                "TestBroker writes x-death as RabbitMQ 3.10 does; 4.x also adds x-last-death-* and keeps CC "
                "when a dead-letter routing key is set (docs/testing.md)"
            )
        [entry] = headers["x-death"]
        died_at = entry.pop("time")
        assert abs(died_at.timestamp() - harness.now()) < 3
        assert entry == {"count": 1, "reason": "expired", "queue": ttl, "exchange": "",
                         "routing-keys": [ttl, "elsewhere"], "original-expiration": "60000"}  # fmt: skip
        assert {k: v for k, v in headers.items() if k != "x-death"} == {
            "k": "v",  # CC is gone: the dead-letter routing key replaced every key
            "x-first-death-exchange": "",
            "x-first-death-queue": ttl,
            "x-first-death-reason": "expired",
        }
        assert list(headers) == sorted(headers)  # the table written back in key order
        assert list(entry) == ["count", "reason", "queue", "exchange", "routing-keys", "original-expiration"]
        assert first.properties.expiration is None

        # A message that arrives with an x-death (here, another client's) gets no x-first-death-*.
        other = [
            {"count": 3, "reason": "expired", "queue": "elsewhere", "exchange": "", "routing-keys": ["x"]}
        ]
        await channel.basic_publish(b"second", routing_key=ttl, properties=Properties(
            headers={"x-death": other}))  # fmt: skip
        await harness.wait(1.5)
        [second] = await take_all(channel, dead)
        headers = second.properties.headers
        assert sorted(headers) == ["x-death"]
        mine, theirs = headers["x-death"]
        assert list(mine) == sorted(mine) and list(theirs) == sorted(theirs)  # RabbitMQ sorts the keys
        assert (mine["count"], mine["queue"], mine["reason"], "original-expiration" in mine) == (
            1, ttl, "expired", False
        )  # fmt: skip
        assert theirs == {
            "count": 3,
            "exchange": "",
            "queue": "elsewhere",
            "reason": "expired",
            "routing-keys": ["x"],
        }

        # Dead again in the same queue for the same reason: that entry's count goes up, its time stays.
        await channel.basic_publish(b"third", routing_key=ttl, properties=Properties(
            headers=headers, expiration="200"))  # fmt: skip
        await harness.wait(1.5)
        [third] = await take_all(channel, dead)
        again, theirs_again = third.properties.headers["x-death"]
        assert again == {**mine, "count": 2}  # no original-expiration added, the time kept
        assert theirs_again == theirs

        # An x-death that is not a list is replaced, and still no x-first-death-*.
        await channel.basic_publish(b"odd", routing_key=ttl, properties=Properties(
            headers={"x-death": "not a list"}))  # fmt: skip
        await harness.wait(1.5)
        [odd] = await take_all(channel, dead)
        headers = odd.properties.headers
        assert sorted(headers) == ["x-death"]
        [(odd_entry)] = headers["x-death"]
        assert (odd_entry["count"], odd_entry["queue"], odd_entry["reason"]) == (1, ttl, "expired")

        # Rejected without requeue: reason "rejected".
        await channel.basic_publish(b"fourth", routing_key=ttl)
        got = await channel.basic_get(ttl)
        assert got is not None
        channel.basic_reject(got.delivery_tag, requeue=False)
        await harness.wait(0.3)
        [fourth] = await take_all(channel, dead)
        assert fourth.properties.headers["x-first-death-reason"] == "rejected"


async def test_redeclaring_compares_only_some_arguments(harness: Harness) -> None:
    async with harness.bare():
        channel = await harness.channel()
        name = harness.queue("redeclared")
        first = {"x-message-ttl": 1000}
        await channel.queue_declare(name, durable=True, arguments=first)
        for accepted in (
            {**first, "x-note": "hi"},
            {**first, "x-queue-type": "classic"},
            {**first, "x-delivery-limit": 5},
        ):
            await channel.queue_declare(name, durable=True, arguments=accepted)
        for refused in (
            dict(durable=True, arguments={"x-message-ttl": 2000}),
            dict(durable=True, arguments={}),
            dict(durable=True, arguments={**first, "x-max-length": 3}),
            dict(durable=True, arguments={"x-message-ttl": "1000"}),
            dict(durable=False, arguments=first),
        ):
            with pytest.raises(PreconditionFailed):
                await channel.queue_declare(name, **refused)
            channel = await harness.channel()
        await channel.queue_delete(name)


async def test_rate_limit_spaces_messages_on_the_brokers_clock(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    handled: list[float] = []

    @pool.consumer("app.slowly", rate_limit="30/m")
    async def slowly(ctx: object, msg: Message[Any]) -> None:
        handled.append(harness.now())

    async with harness.run(pool) as publisher:
        for _ in range(3):
            await publisher.publish("app.slowly", {})
        await harness.wait(1)
        await harness.settle(lambda: len(handled) == 1)
        await harness.wait(3.5)
        await harness.settle(lambda: len(handled) == 3)
    gaps = [later - earlier for earlier, later in itertools.pairwise(handled)]
    assert all(1.8 <= gap <= 2.5 for gap in gaps), gaps


async def test_a_handler_over_its_timeout_goes_to_the_dead_queue(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    started: list[int] = []

    @pool.consumer("app.slow", timeout=0.2, retries=0)
    async def slow(ctx: object, msg: Message[Any]) -> None:
        started.append(msg.attempt)
        await asyncio.sleep(5)

    async with harness.run(pool) as publisher:
        await publisher.publish("app.slow", {}, message_id="s-1")
        await harness.settle(lambda: started == [1])
        async with harness.dead_queue() as dead:

            async def one_dead() -> bool:
                return await dead.count() == 1

            await eventually(one_dead, timeout=10)
            [message] = await dead.list()
    assert (message.message_id, message.error.split(":")[0]) == ("s-1", "TimeoutError")


async def test_timestamps_and_publish_at_follow_one_clock(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    stamps: list[tuple[float, float]] = []  # (the message's timestamp, the time it was handled)

    @pool.consumer("app.stamped")
    async def stamped(ctx: object, msg: Message[Any]) -> None:
        assert msg.timestamp is not None
        stamps.append((msg.timestamp.timestamp(), harness.now()))

    async with harness.run(pool) as publisher:
        await publisher.publish("app.stamped", {})
        await harness.settle(lambda: len(stamps) == 1)
        await harness.wait(3)
        await publisher.publish("app.stamped", {})
        await harness.settle(lambda: len(stamps) == 2)
        await publisher.publish_at(datetime.now(UTC) + timedelta(seconds=3), "app.stamped", {})
        await harness.wait(2)
        assert len(stamps) == 2  # due in 3 s, and the clocks agree on what "now" is
        await harness.wait(4)
        await harness.settle(lambda: len(stamps) == 3)
    for stamp, handled in stamps[:2]:
        assert handled - 1.5 <= stamp <= handled  # a whole-second timestamp of the same clock
    assert stamps[1][0] - stamps[0][0] >= 2


async def test_a_loop_of_expiries_with_no_reject_is_dropped(harness: Harness) -> None:
    async with harness.bare():
        channel = await harness.channel()
        first, second = harness.queue("loop-a"), harness.queue("loop-b")
        for name, other in ((first, second), (second, first)):
            dlx = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": other}
            await channel.queue_declare(name, durable=True, arguments={"x-message-ttl": 300, **dlx})
        await channel.basic_publish(b"round", routing_key=first)
        await harness.wait(0.5)
        assert (await depth(channel, first), await depth(channel, second)) == (0, 1)
        await harness.wait(1.5)  # back into the first queue would close the loop: dropped
        assert (await depth(channel, first), await depth(channel, second)) == (0, 0)
