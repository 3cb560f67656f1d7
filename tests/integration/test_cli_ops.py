"""The operations commands: publish with delays, topology (print and --check), queues; their errors."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from support import Isolation, Management, Probe, eventually

from event import wire

APPS = Path(__file__).parent / "apps"


def event(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "event.cli", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(APPS), **env},
    )  # fmt: skip


@pytest.fixture
def env(pool_kwargs: dict[str, Any], iso: Isolation) -> dict[str, str]:
    return {
        "AMQP_URL": pool_kwargs["url"],
        "EVENT_TEST_NAMESPACE": iso.namespace,
        "EVENT_TEST_EXCHANGE": iso.exchange,
    }


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["worker"],
        ["publish"],
        ["topology"],
        ["queues"],
        ["bench"],
        ["dead", "list"],
        ["dead", "purge"],
        ["cron"],
        ["cron", "list"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = event(*command, "--help", env={})
    assert result.returncode == 0
    assert "usage: event" in result.stdout


async def test_publish_in_and_at_go_to_the_park_queue(
    env: dict[str, str], iso: Isolation, probe: Probe
) -> None:
    where = ["--namespace", iso.namespace, "--exchange", iso.exchange]
    assert event("publish", "app.a", '{"n": 1}', "--in", "7", *where, env=env).returncode == 0
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=400)  # within the two-year horizon
    result = event("publish", "app.a", '{"n": 2}', "--at", at.isoformat(), *where, env=env)
    assert result.returncode == 0, result.stderr
    [seven] = await probe.take_all(wire.park_queue_name(iso.namespace, iso.exchange, 10))
    assert seven.header.properties.headers["CC"] == ["app.a"]
    [far] = await probe.take_all(wire.park_queue_name(iso.namespace, iso.exchange, 10800))
    assert far.header.properties.headers["event-due-at"] == int(at.timestamp()) * 1000


def test_publish_errors(env: dict[str, str], management: Management) -> None:
    def ours() -> set[str]:  # other tests (and other test runs) declare their own queues meanwhile
        namespace = env["EVENT_TEST_NAMESPACE"]
        return {q for q in management.queue_names() if q.startswith(f"{namespace}:") or ":" not in q}

    before = ours()
    naive = event("publish", "app.a", "{}", "--at", "2030-01-01T00:00:00", env=env)
    assert naive.returncode == 2 and "aware datetime" in naive.stderr
    both = event("publish", "app.a", "{}", "--in", "5", "--at", "2030-01-01T00:00:00+00:00", env=env)
    assert both.returncode == 2 and "not both" in both.stderr
    negative = event("publish", "app.a", "{}", "--in", "-3", env=env)
    assert negative.returncode == 2 and "delay must be" in negative.stderr
    wildcard = event("publish", "app.*", "{}", env=env)
    assert wildcard.returncode == 2 and "wildcard" in wildcard.stderr
    assert ours() == before  # refused before connecting: nothing declared


def test_topology_prints_what_the_pool_declares(env: dict[str, str], iso: Isolation) -> None:
    result = event("topology", "topo_app:pool", env=env)
    assert result.returncode == 0, result.stderr
    ns = iso.namespace
    assert f"queue of consumer send_email: {ns}:send_email" in result.stdout
    assert f"    bound to {iso.exchange} with app.user.*" in result.stdout
    assert f"dead queue: {ns}:{iso.exchange}_dead_queue" in result.stdout
    plan = json.loads(event("topology", "topo_app:pool", "--json", env=env).stdout)
    assert len(plan["queues"]) == 21 + 1 + 1  # park, dead, the consumer: no hutch-schedule delay queue
    [mine] = [q for q in plan["queues"] if q["name"] == f"{ns}:send_email"]
    assert mine["arguments"] == {"x-queue-type": "classic"}
    assert {b["routing_key"] for b in mine["bindings"] if b["exchange"] == iso.exchange} == {
        "app.send_email",
        "app.user.*",
        f"{ns}:send_email",
    }
    [parked] = [b for b in mine["bindings"] if b["exchange"] == f"{iso.exchange}.unpark"]
    assert parked["arguments"] == {"x-match": "all", "event-park-to": f"queue:{ns}:send_email"}
    bad = event("topology", "topo_app:not_a_pool", env=env)
    assert bad.returncode == 2 and "is a int, not a WorkerPool" in bad.stderr


async def test_topology_check_finds_missing_and_mismatched(
    env: dict[str, str], iso: Isolation, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = event("topology", "topo_app:pool", "--check", "--json", env=env)
    assert missing.returncode == 1
    report = json.loads(missing.stdout)
    assert report["matches"] is False
    assert f"exchange {iso.exchange!r} is missing" in report["differences"]

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("topo_app_for_check", APPS / "topo_app.py")
    assert spec is not None and spec.loader is not None
    topo_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(topo_app)  # a fresh copy, placed by this test's environment
    async with topo_app.pool.running():
        pass
    assert event("topology", "topo_app:pool", "--check", env=env).returncode == 0

    channel = await probe.channel()
    await channel.queue_unbind(f"{iso.namespace}:send_email", iso.exchange, routing_key="app.user.*")
    drifted = event("topology", "topo_app:pool", "--check", env=env)
    assert drifted.returncode == 1
    assert f"is not bound to '{iso.exchange}' with 'app.user.*'" in drifted.stdout


async def test_queues_shows_the_namespace(env: dict[str, str], iso: Isolation, probe: Probe) -> None:
    channel = await probe.channel()
    await channel.queue_declare(f"{iso.namespace}:jobs", durable=True)
    await probe.publish("", f"{iso.namespace}:jobs", b"{}")

    def listed() -> bool:  # the management API learns of a new queue a moment after it exists
        return bool(
            json.loads(event("queues", "--namespace", iso.namespace, "--json", env=env).stdout or "[]")
        )

    await eventually(listed, timeout=15, interval=0.5)
    result = event("queues", "--namespace", iso.namespace, "--json", env=env)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["name"] == f"{iso.namespace}:jobs"
    assert row["consumers"] == 0
    assert "drain_seconds" in row  # null (infinite) or 0 here: nothing consumes it
    text = event("queues", "--namespace", iso.namespace, env=env)
    assert f"{iso.namespace}:jobs" in text.stdout and "consumers" in text.stdout and "drain" in text.stdout


def test_queues_without_the_management_api_exits_69(env: dict[str, str]) -> None:
    result = event("queues", "--management-url", "http://127.0.0.1:1", env=env)
    assert result.returncode == 69
    assert "rabbitmq-plugins enable rabbitmq_management" in result.stderr


def test_cron_list_prints_each_schedule_with_its_next_run_times(env: dict[str, str]) -> None:
    asked = datetime.now(UTC)
    result = event("cron", "list", "cron_app:pool", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "report: */5 * * * * (UTC) publishes app.report"
    reports = [datetime.fromisoformat(line.strip()) for line in lines[1:4]]
    assert reports[0] > asked and reports[0] - asked <= timedelta(minutes=5)
    assert all(t.minute % 5 == 0 and t.second == 0 for t in reports)
    assert [b - a for a, b in itertools.pairwise(reports)] == [timedelta(minutes=5)] * 2
    assert lines[4] == "standup: 0 9 * * 1-5 (Europe/Berlin) publishes app.standup"
    standups = [datetime.fromisoformat(line.strip()) for line in lines[5:8]]
    berlin = ZoneInfo("Europe/Berlin")
    assert all(t.astimezone(berlin).hour == 9 and t.astimezone(berlin).weekday() < 5 for t in standups)
    assert standups == sorted(set(standups)) and len(lines) == 8

    as_json = event("cron", "list", "cron_app:pool", "--json", "--count", "2", env=env)
    rows = json.loads(as_json.stdout)
    assert [(row["name"], len(row["next"])) for row in rows] == [("report", 2), ("standup", 2)]
    assert rows[1]["tz"] == "Europe/Berlin" and rows[1]["catch_up"] == "skip"


def test_cron_list_errors_and_a_pool_without_schedules(env: dict[str, str]) -> None:
    none = event("cron", "list", "topo_app:pool", env=env)
    assert none.returncode == 0 and "topo_app:pool has no cron schedules" in none.stdout
    zero = event("cron", "list", "cron_app:pool", "--count", "0", env=env)
    assert zero.returncode == 2 and "--count must be at least 1" in zero.stderr
    missing = event("cron", "list", "no_such_app:pool", env=env)
    assert missing.returncode == 2 and "no_such_app" in missing.stderr


async def test_topology_unbind_schedule_moves_the_pools_namespace_off_hutch_schedule(
    env: dict[str, str], iso: Isolation, probe: Probe
) -> None:
    import hutch_schedule

    channel = await probe.channel()
    await hutch_schedule.declare(channel, iso.namespace, iso.exchange)  # what the pool bound before
    alone = event("topology", "topo_app:pool", "--unbind-schedule", env=env)
    assert alone.returncode == 2 and "no other namespace" in alone.stderr  # nothing else would deliver
    iso.extra_queues += await hutch_schedule.declare(channel, f"{iso.namespace}-ruby", iso.exchange)
    moved = event("topology", "topo_app:pool", "--unbind-schedule", env=env)
    assert moved.returncode == 0, moved.stderr
    assert "unbound 21 delay queue(s)" in moved.stdout and "deleted 21 empty" in moved.stdout
    again = event("topology", "topo_app:pool", "--unbind-schedule", env=env)
    assert again.returncode == 0 and "unbound 0" in again.stdout  # idempotent


def closed_pipe(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `event ARGS` with its stdout a pipe nobody reads any more (`event ... | head` once head
    exited): the exit code and what it printed on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # before the command writes: its first write meets a closed pipe
    try:
        result = subprocess.run(
            [sys.executable, "-m", "event.cli", *args], stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(APPS), **env},
        )  # fmt: skip
    finally:
        os.close(write_end)
    return result.returncode, result.stderr


def test_a_closed_pipe_ends_topology_and_queues_quietly(env: dict[str, str]) -> None:
    for command in (["topology", "topo_app:pool"], ["queues"]):
        code, stderr = closed_pipe(*command, env=env)
        assert (code, stderr) == (141, ""), (command, stderr)


def test_a_busy_metrics_port_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = event(
            "worker", "topo_app:pool", "--metrics-port", port, "--metrics-host", "127.0.0.1", env=env
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"cannot serve metrics on 127.0.0.1:{port} (--metrics-port)" in line
    assert "pick another port" in line
