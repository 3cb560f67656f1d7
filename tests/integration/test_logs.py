"""`--log-format json`: one record per failure with the message's context; none per success."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from support import Isolation, Probe, eventually

from event import Publisher, wire

APPS = Path(__file__).parent / "apps"


async def test_json_logs_name_the_failed_message_and_stay_quiet_on_success(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    stderr = tmp_path / "stderr"
    env = {**os.environ, "AMQP_URL": pool_kwargs["url"], "EVENT_TEST_NAMESPACE": iso.namespace,
           "EVENT_TEST_EXCHANGE": iso.exchange, "PYTHONPATH": str(APPS)}  # fmt: skip
    with stderr.open("w") as sink:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "event.cli", "--log-format", "json", "worker", "failing_app:pool",
            env=env, stderr=sink,
        )  # fmt: skip
        try:
            await eventually(lambda: "consuming" in stderr.read_text(), timeout=30)
            async with Publisher(**pool_kwargs) as publisher:
                for n in range(20):
                    await publisher.publish("app.work", {"n": n})
                await publisher.publish("app.work", {"fail": "this"}, message_id="bad-1")

            async def dead() -> bool:
                return await probe.depth(wire.dead_queue_name(iso.namespace, iso.exchange)) == 1

            await eventually(dead)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(worker.wait(), timeout=30) == 0
    records = [json.loads(line) for line in stderr.read_text().splitlines()]
    failures = [r for r in records if r["level"] == "error"]
    assert len(failures) == 1
    [failure] = failures
    assert failure["message_id"] == "bad-1"
    assert failure["routing_key"] == "app.work"
    assert failure["queue"] == f"{iso.namespace}:work"
    assert failure["attempt"] == 1
    assert "ValueError: cannot do this" in failure["exception"]
    assert len(records) <= 4, records  # start, stop: nothing per successful message
