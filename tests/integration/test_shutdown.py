"""SIGTERM to `event worker`: exit 0 within the grace period, every message handled or still queued."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import Isolation, Probe, eventually

from event import Publisher

APPS = Path(__file__).parent / "apps"


def journal_ids(path: Path, word: str) -> list[int]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [int(line.split()[1]) for line in lines if line.startswith(word + " ")]


@pytest.mark.parametrize(
    ("concurrency", "pause", "grace", "started_before_term"),
    [
        (200, 2.0, 10.0, 200),  # all 200 in flight: they finish and are acked
        (20, 0.5, 10.0, 20),  # 20 running, 180 prefetched: the running finish, the rest go back
        (50, 30.0, 1.0, 50),  # handlers outlast the grace period: cancelled, their messages go back
    ],
    ids=["all-in-flight", "some-waiting", "grace-expires"],
)
async def test_sigterm_drains_and_loses_nothing(
    pool_kwargs: dict[str, Any],
    iso: Isolation,
    probe: Probe,
    tmp_path: Path,
    concurrency: int,
    pause: float,
    grace: float,
    started_before_term: int,
) -> None:
    journal = tmp_path / "journal"
    env = {
        **os.environ,
        "AMQP_URL": pool_kwargs["url"],
        "EVENT_TEST_NAMESPACE": iso.namespace,
        "EVENT_TEST_EXCHANGE": iso.exchange,
        "EVENT_TEST_CONCURRENCY": str(concurrency),
        "EVENT_TEST_GRACE": str(grace),
        "EVENT_TEST_SLEEP": str(pause),
        "EVENT_TEST_JOURNAL": str(journal),
        "PYTHONPATH": str(APPS),
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event.cli", "worker", "slow_app:pool", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    queue = f"{iso.namespace}:slow"
    try:

        async def consuming() -> bool:
            try:
                channel = await probe.channel()
                return (await channel.queue_declare(queue, passive=True)).consumer_count == 1
            except Exception:
                return False

        await eventually(consuming, timeout=30)
        async with Publisher(**pool_kwargs) as publisher:
            await asyncio.gather(*(publisher.publish("app.slow", {"id": n}) for n in range(200)))
        await eventually(lambda: len(journal_ids(journal, "start")) >= started_before_term, timeout=30)
        worker.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        output, _ = await asyncio.wait_for(worker.communicate(), timeout=grace + 15)
        took = time.monotonic() - sent_at
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

    assert worker.returncode == 0, output.decode()
    assert took <= grace + 5, f"exit took {took:.1f} s with a grace of {grace} s"
    done = journal_ids(journal, "done")
    started = journal_ids(journal, "start")
    queued = [int(m.body.decode().split(":")[1].rstrip("}")) for m in await probe.take_all(queue)]
    assert len(done) == len(set(done)), "a message was handled twice"
    assert set(done).isdisjoint(queued), "a handled message is still queued: its ack was lost"
    assert sorted([*done, *queued]) == list(range(200)), "a message was lost"
    half_done = set(started) - set(done)
    if pause < grace:
        assert not half_done, f"handlers cut short although the grace period sufficed: {sorted(half_done)}"
        assert set(started) == set(done)
    else:
        assert half_done, "the grace period should have cut the sleeping handlers short"
        assert half_done <= set(queued), "a cancelled handler's message did not go back to the queue"
