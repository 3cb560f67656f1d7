"""At-least-once under faults: a counted stream through publish -> consume while the broker or the
worker is hit. Each row reports sent, confirmed, handled at least once, duplicates and lost; lost
must be 0, and a message is handled twice only if the fault caught it in flight (redelivered) or the
publisher sent it again after a lost confirm.

These tests stop the broker's app, close every connection and raise its memory alarm: run them alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import (
    DEFAULT_URL,
    Isolation,
    Probe,
    Row,
    append_line,
    broker_answers,
    eventually,
    rabbitmqctl_command,
    tally,
)

from event import Publisher, wire

APPS = Path(__file__).parent / "apps"
STREAM = 20_000  # messages per fault, as the issue asks: 6 faults, 120,000 messages in all
REPORT = Path(os.environ.get("EVENT_FAULT_REPORT", "/tmp/event-fault-report.md"))


def rabbitmqctl(*args: str) -> None:
    """``rabbitmqctl`` against the broker under test ($RABBITMQCTL), never another one on the machine."""
    command = rabbitmqctl_command(os.environ.get("AMQP_URL") or DEFAULT_URL)
    subprocess.run([*command, *args], check=True, capture_output=True, timeout=120)


class Worker:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        argv = [sys.executable, "-m", "event.cli", "--log-level", "warning", "worker", "fault_app:pool"]
        self.process = await asyncio.create_subprocess_exec(
            *argv, env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )

    async def signal(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), timeout=60)

    async def stop(self) -> int:
        if self.process is None or self.process.returncode is not None:
            return 0
        return await self.signal(signal.SIGTERM)


def read_journal(path: Path) -> list[tuple[int, bool]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(p[0]), p[1] == "1") for p in (line.split() for line in lines) if len(p) == 3]


async def wait_for_broker(url: str) -> None:
    for _ in range(120):
        if broker_answers(url):
            break
        await asyncio.sleep(0.5)
    await asyncio.to_thread(rabbitmqctl, "await_startup")


async def stop_and_start_app(url: str) -> None:
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await wait_for_broker(url)


async def memory_alarm() -> None:
    await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", "0.0001")
    try:
        await asyncio.sleep(3)
    finally:
        await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", "0.4")


async def run_stream(
    fault: str,
    inject: Callable[[Worker], Awaitable[None]],
    pool_kwargs: dict[str, Any],
    iso: Isolation,
    probe: Probe,
    tmp_path: Path,
    poison: int = 0,
) -> Row:
    journal = tmp_path / "journal"
    env = {
        **os.environ,
        "AMQP_URL": pool_kwargs["url"],
        "EVENT_TEST_NAMESPACE": iso.namespace,
        "EVENT_TEST_EXCHANGE": iso.exchange,
        "EVENT_TEST_JOURNAL": str(journal),
        "PYTHONPATH": str(APPS),
    }
    worker = Worker(env)
    await worker.start()
    queue = f"{iso.namespace}:job"

    async def consuming() -> bool:
        try:
            return bool(
                (await (await probe.channel()).queue_declare(queue, passive=True)).consumer_count == 1
            )
        except Exception:
            return False

    await eventually(consuming, timeout=30)
    confirmed: set[int] = set()
    sent = 0
    poisoned = 0
    at_a_third = asyncio.Event()
    async with Publisher(**pool_kwargs, reconnect_timeout=60) as publisher:

        async def one(n: int) -> None:
            try:
                await publisher.publish("fault.job", {"id": n}, message_id=f"m-{n}")
                confirmed.add(n)
                if len(confirmed) >= STREAM * 0.3:
                    at_a_third.set()
            except Exception:
                pass  # not confirmed: it may or may not be stored; it does not count as lost

        async def injector() -> None:
            await at_a_third.wait()
            await inject(worker)

        task = asyncio.create_task(injector())
        for start in range(0, STREAM, 100):
            batch = range(start, min(start + 100, STREAM))
            sent += len(batch)
            await asyncio.gather(*(one(n) for n in batch))
            if poison and start % 1000 == 0:
                for body, kind in ((b"not json", "application/json"), (b"{}", "text/plain")):
                    props = {"content_type": kind, "delivery_mode": 2, "message_id": f"poison-{poisoned}"}
                    await probe.publish(iso.exchange, "fault.job", body, **props)
                    poisoned += 1
        await task
        republish_attempts = sum(publisher.stats.failures.values())

    def all_handled() -> bool:
        return confirmed <= {n for n, _ in read_journal(journal)}

    await eventually(all_handled, timeout=90, interval=0.5)
    await asyncio.sleep(1)  # late duplicates would show up now
    assert await worker.stop() == 0
    dead = await probe.take_all(wire.dead_queue_name(iso.namespace, iso.exchange)) if poison else []
    row = tally(fault, sent, confirmed, read_journal(journal))
    row = replace(
        row,
        sent=row.sent + poisoned,
        confirmed=row.confirmed + poisoned,
        handled=row.handled + len(dead),
        lost=row.lost + (poisoned - len(dead)),
        poison_dead=len(dead),
    )
    await asyncio.to_thread(append_line, REPORT, row.line())
    assert row.lost == 0, row
    assert row.republished_duplicates <= republish_attempts, row  # only messages the publisher re-sent
    return row


async def no_fault(worker: Worker) -> None:
    pass


async def close_all_connections(worker: Worker) -> None:
    await asyncio.to_thread(rabbitmqctl, "close_all_connections", "fault test")


async def kill_and_restart(worker: Worker) -> None:
    await worker.signal(signal.SIGKILL)
    await worker.start()


async def term_and_restart(worker: Worker) -> None:
    assert await worker.signal(signal.SIGTERM) == 0
    await worker.start()


FAULTS: dict[str, Callable[[Worker], Awaitable[None]]] = {
    "rabbitmqctl close_all_connections": close_all_connections,
    "SIGKILL of the worker, then a new one": kill_and_restart,
    "SIGTERM of the worker, then a new one": term_and_restart,
    "memory alarm on for 3 s, then off": lambda worker: memory_alarm(),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_nothing_is_lost(
    fault: str, pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    await run_stream(fault, FAULTS[fault], pool_kwargs, iso, probe, tmp_path)


async def test_nothing_is_lost_across_a_broker_restart(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    url = pool_kwargs["url"]

    async def restart(worker: Worker) -> None:
        await stop_and_start_app(url)

    try:
        await run_stream(
            "rabbitmqctl stop_app, start_app after 2 s", restart, pool_kwargs, iso, probe, tmp_path
        )
    finally:
        await wait_for_broker(url)


async def test_poison_messages_go_to_the_dead_queue_and_the_stream_goes_on(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    row = await run_stream("poison messages mixed in", no_fault, pool_kwargs, iso, probe, tmp_path, poison=1)
    assert row.poison_dead == 2 * len(range(0, STREAM, 1000))  # a bad body and a bad type per 1000
