"""event.eager: coroutines run at once, a task only for those that really wait, task semantics kept."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from event.eager import EagerRunner, Slots

seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


async def finished(runner: EagerRunner[int]) -> None:
    """Until every worker is done (one left with items may start another)."""
    while runner.tasks:
        await asyncio.wait(set(runner.tasks))
    assert runner.in_hand == 0


async def test_coroutines_that_do_not_suspend_share_one_task_and_start_in_order() -> None:
    started: list[int] = []
    tasks_seen: set[asyncio.Task[object] | None] = set()

    async def quick(n: int) -> None:
        started.append(n)
        tasks_seen.add(asyncio.current_task())

    runner: EagerRunner[int] = EagerRunner(quick)
    for n in range(500):
        runner.submit(n)
    assert runner.in_hand == 500
    await asyncio.sleep(0)
    assert started == list(range(500))
    assert len(tasks_seen) == 1 and None not in tasks_seen  # one worker, and it is a task
    assert runner.in_hand == 0
    await asyncio.sleep(0)
    assert runner.tasks == set()  # the worker is gone once nothing is left


async def test_a_coroutine_that_waits_does_not_hold_back_the_ones_behind_it() -> None:
    gate = asyncio.Event()
    done: list[int] = []

    async def work(n: int) -> None:
        if n == 0:
            await gate.wait()
        done.append(n)

    runner: EagerRunner[int] = EagerRunner(work)
    for n in range(3):
        runner.submit(n)
    for _ in range(3):
        await asyncio.sleep(0)
    assert done == [1, 2]
    assert runner.in_hand == 1 and len(runner.tasks) == 1  # only the waiting one holds a task
    gate.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert done == [1, 2, 0] and runner.in_hand == 0


async def test_a_timeout_opened_before_the_first_await_cancels_only_its_own_coroutine() -> None:
    outcomes: dict[int, str] = {}

    async def work(n: int) -> None:
        try:
            async with asyncio.timeout(0.01 if n == 0 else 5):  # needs a current task at once
                await asyncio.sleep(0.05 if n == 0 else 0.02)
            outcomes[n] = "done"
        except TimeoutError:
            outcomes[n] = "timed out"

    runner: EagerRunner[int] = EagerRunner(work)
    runner.submit(0)
    runner.submit(1)
    await finished(runner)
    assert outcomes == {0: "timed out", 1: "done"}


async def test_each_coroutine_has_a_context_of_its_own() -> None:
    read: list[str] = []

    async def work(n: int) -> None:
        read.append(seen.get())
        seen.set(f"set by {n}")
        if n == 1:
            await asyncio.sleep(0)
            read.append(seen.get())

    runner: EagerRunner[int] = EagerRunner(work)
    for n in range(3):
        runner.submit(n)
    await finished(runner)
    assert read == ["", "", "", "set by 1"]
    assert seen.get() == ""


async def test_cancelling_a_worker_cancels_its_coroutine_and_the_rest_still_start() -> None:
    cancelled: list[int] = []
    started: list[int] = []

    async def work(n: int) -> None:
        started.append(n)
        if n == 0:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(n)
                raise

    runner: EagerRunner[int] = EagerRunner(work)
    runner.submit(0)
    await asyncio.sleep(0)
    [worker] = runner.tasks
    runner.submit(1)  # the waiting worker is not free: another one starts it
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    await finished(runner)
    assert cancelled == [0] and started == [0, 1]


async def test_a_failing_coroutine_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    done: list[int] = []

    async def work(n: int) -> None:
        if n == 0:
            raise ValueError("a bug")
        if n == 1:
            await asyncio.sleep(0)
            raise ValueError("a later bug")
        done.append(n)

    runner: EagerRunner[int] = EagerRunner(work)
    for n in range(3):
        runner.submit(n)
    await finished(runner)
    assert done == [2]
    assert [r.exc_info[1].args[0] for r in caplog.records if r.exc_info and r.exc_info[1]] == [
        "a bug",
        "a later bug",
    ]


async def test_slots_are_taken_without_waiting_while_free_then_handed_on_in_arrival_order() -> None:
    slots = Slots(2)
    assert slots.try_take() and slots.try_take()
    assert slots.locked() and not slots.try_take()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.acquire()
        order.append(name)

    first = asyncio.create_task(wait("first"))
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    slots.release()  # goes to the first waiting, not to a try_take
    assert not slots.try_take()
    await first
    slots.release()
    await second
    assert order == ["first", "second"]
    for _ in range(3):  # both held by the waiters, and the one taken at first: all given back
        slots.release()
    assert not slots.locked()
    assert slots.try_take() and slots.try_take() and slots.try_take() and not slots.try_take()


async def test_a_cancelled_wait_for_a_slot_neither_takes_one_nor_blocks_the_next() -> None:
    slots = Slots(1)
    assert slots.try_take()
    cancelled = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    slots.release()
    assert slots.try_take()  # free again, nobody left waiting
    # Handed a slot and cancelled before it ran: the slot goes on to the next waiting.
    handed = asyncio.create_task(slots.acquire())
    after = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    await asyncio.wait_for(after, 1)
    assert slots.locked()
    slots.release()
    assert slots.try_take()
