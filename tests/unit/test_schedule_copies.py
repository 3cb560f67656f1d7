"""Which copy of a hutch-schedule message a pool runs (event/schedule_copies.py), on a fake broker view."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from support import examples

from event import wire
from event.schedule_copies import ScheduleCopies

EXCHANGE = "hutch"


class BrokerView:
    """Which delay and park queues exist, and which namespaces the management API lists as bound."""

    def __init__(self, ruby: set[str], event: set[str], *, api: bool = True) -> None:
        self.ruby, self.event, self.api = set(ruby), set(event), api
        self.unbound: set[str] = set()  # delay queues that exist but are no longer bound
        self.asked = 0

    async def exists(self, queue: str) -> bool:
        self.asked += 1
        for namespace in self.ruby | self.event | self.unbound:
            if queue == wire.delay_queue_name(namespace, EXCHANGE, 5):
                return True
            if namespace in self.event and queue == wire.park_queue_name(namespace, EXCHANGE, 5):
                return True
        return False

    async def bound(self) -> set[str]:
        if not self.api:
            raise ConnectionError("no management API")
        return self.ruby | self.event


def copies(view: BrokerView, clock: list[float] | None = None) -> ScheduleCopies:
    now = clock if clock is not None else [0.0]
    return ScheduleCopies(EXCHANGE, view.exists, view.bound, clock=lambda: now[0])


def test_a_ruby_namespaces_copy_is_run_and_the_others_are_not() -> None:
    async def main() -> None:
        view = BrokerView({"billing", "mail"}, {"old-py"})
        pool = copies(view)
        ran = [
            await pool.take("q", origin, f"m{n}") for n, origin in enumerate(["old-py", "mail", "billing"])
        ]
        assert ran == [False, False, True]  # Ruby before event, then by name

    asyncio.run(main())


def test_one_worker_runs_one_copy_of_a_publish_while_it_learns() -> None:
    async def main() -> None:
        view = BrokerView({"b", "c"}, set(), api=False)
        pool = copies(view)
        # Without the API, the first copy seen is run; the window drops the other copies of that publish.
        assert [await pool.take("q", origin, "m1") for origin in ["c", "b"]] == [True, False]
        assert [await pool.take("q", origin, "m2") for origin in ["c", "b"]] == [False, True]
        assert await pool.take("other queue", "b", "m2")  # each queue runs its own copy

    asyncio.run(main())


def test_an_unbound_namespace_ranks_last_and_a_gone_one_is_forgotten() -> None:
    async def main() -> None:
        clock = [0.0]
        view = BrokerView({"a", "b"}, set())
        pool = copies(view, clock)
        assert await pool.take("q", "a", "m1")
        view.ruby.discard("a")
        view.unbound.add("a")  # being unbound: its queues drain, its copies still arrive
        clock[0] = 31.0
        assert await pool.take("q", "b", "m2")
        assert not await pool.take("q", "a", "m2")
        view.unbound.clear()  # deleted
        clock[0] = 62.0
        assert await pool.take("q", "b", "m3")
        assert pool.known["a"].rank[0] == 2  # ranks after every namespace bound, until checked again
        assert await pool.take("q", "a", "m4")  # gone: no rule can tell, so it runs (never a loss)
        assert "a" not in pool.known

    asyncio.run(main())


def test_a_copy_is_run_when_the_broker_cannot_be_asked() -> None:
    async def main() -> None:
        async def broken(queue: str) -> bool:
            raise ConnectionError("connection lost")

        pool = ScheduleCopies(EXCHANGE, broken)
        assert await pool.take("q", "a", "m1")
        assert not await pool.take("q", "b", "m1")  # but the window still holds

    asyncio.run(main())


namespaces = st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1)


@settings(max_examples=examples(200), deadline=None)
@given(
    ruby=namespaces,
    event=st.sets(st.sampled_from(["p", "q", "r"])),
    workers=st.integers(1, 4),
    api=st.booleans(),
    data=st.data(),
)
def test_no_message_is_lost_and_with_the_api_none_runs_twice(
    ruby: set[str], event: set[str], workers: int, api: bool, data: st.DataObject
) -> None:
    async def main() -> None:
        view = BrokerView(ruby, event, api=api)
        pools = [copies(view) for _ in range(workers)]
        bound = sorted(ruby | event)
        for message in range(4):
            order = data.draw(st.permutations(bound))  # how the copies reach the queue's workers
            to = [data.draw(st.integers(0, workers - 1)) for _ in order]
            runs = 0
            for origin, worker in zip(order, to, strict=True):
                runs += await pools[worker].take("q", origin, f"m{message}")
            assert runs >= 1
            if api or workers == 1:
                assert runs == 1

    asyncio.run(main())
