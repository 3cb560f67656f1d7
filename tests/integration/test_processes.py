"""`event worker --processes N`: children share the work, a crashed child comes back, SIGTERM drains all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from support import Isolation, Probe, eventually

from event import Publisher

APPS = Path(__file__).parent / "apps"


def journal(path: Path, word: str) -> list[tuple[int, int]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(p[1]), int(p[2])) for p in (line.split() for line in lines) if p[0] == word]


async def test_two_processes_share_the_work_survive_a_crash_and_drain_on_sigterm(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    path = tmp_path / "journal"
    env = {
        **os.environ,
        "AMQP_URL": pool_kwargs["url"],
        "EVENT_TEST_NAMESPACE": iso.namespace,
        "EVENT_TEST_EXCHANGE": iso.exchange,
        "EVENT_TEST_CONCURRENCY": "10",
        "EVENT_TEST_GRACE": "10",
        "EVENT_TEST_SLEEP": "0.05",
        "EVENT_TEST_JOURNAL": str(path),
        "PYTHONPATH": str(APPS),
    }
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event.cli", "worker", "slow_app:pool", "--processes", "2", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    queue = f"{iso.namespace}:slow"
    try:

        async def two_consumers() -> bool:
            try:
                ok = await (await probe.channel()).queue_declare(queue, passive=True)
                return bool(ok.consumer_count == 2)
            except Exception:
                return False

        await eventually(two_consumers, timeout=30)
        async with Publisher(**pool_kwargs) as publisher:
            await asyncio.gather(*(publisher.publish("app.slow", {"id": n}) for n in range(600)))
        await eventually(lambda: len({pid for _, pid in journal(path, "done")}) == 2, timeout=30)

        victim = journal(path, "done")[0][1]
        os.kill(victim, signal.SIGKILL)  # its unacked messages go back to the queue
        await eventually(lambda: len({pid for _, pid in journal(path, "start")} - {victim}) == 2, timeout=30)

        supervisor.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(supervisor.communicate(), timeout=30)
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()

    assert supervisor.returncode == 0, output.decode()
    assert "restarting it" in output.decode()
    done = {n for n, _ in journal(path, "done")}
    queued = {int(m.body.decode().split(":")[1].rstrip("}")) for m in await probe.take_all(queue)}
    assert done | queued == set(range(600)), "a message was lost"
    unfinished = {n for n, pid in journal(path, "start") if pid != victim} - done
    assert not unfinished, f"handlers of surviving workers cut short: {sorted(unfinished)}"


async def test_the_supervisor_serves_the_metrics_of_all_children(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "AMQP_URL": pool_kwargs["url"],
        "EVENT_TEST_NAMESPACE": iso.namespace,
        "EVENT_TEST_EXCHANGE": iso.exchange,
        "EVENT_TEST_CONCURRENCY": "10",
        "EVENT_TEST_GRACE": "10",
        "EVENT_TEST_SLEEP": "0.01",
        "EVENT_TEST_JOURNAL": str(tmp_path / "journal"),
        "PYTHONPATH": str(APPS),
    }
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event.cli", "worker", "slow_app:pool", "--processes", "2",
        "--metrics-port", str(port), "--metrics-host", "127.0.0.1", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def handled_total() -> float:
        status, text = get("/metrics")
        if status != 200:
            return -1
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "event_messages_handled_total"
        )

    try:

        async def ready() -> bool:
            return (await asyncio.to_thread(get, "/readyz"))[0] == 200

        await eventually(ready, timeout=30, interval=0.5)
        async with Publisher(**pool_kwargs) as publisher:
            await asyncio.gather(*(publisher.publish("app.slow", {"id": n}) for n in range(100)))

        async def all_counted() -> bool:
            return await asyncio.to_thread(handled_total) == 100

        await eventually(all_counted, timeout=30, interval=0.5)
        pids = {pid for _, pid in journal(tmp_path / "journal", "done")}
        assert len(pids) == 2  # both children handled some, and the sum is over both
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(supervisor.wait(), timeout=30) == 0
