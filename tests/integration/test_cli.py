"""The `event` command: exit codes and messages for the paths users hit first."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from support import Isolation, Probe


def event(*args: str, url: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if url is not None:
        env["AMQP_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "event.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_help_lists_the_commands() -> None:
    result = event("--help")
    assert result.returncode == 0
    assert "worker" in result.stdout and "publish" in result.stdout


def test_worker_with_an_unknown_pool_path_exits_2_naming_it() -> None:
    result = event("worker", "no_such_module:pool")
    assert result.returncode == 2
    assert "cannot import module 'no_such_module'" in result.stderr
    result = event("worker", "json")
    assert result.returncode == 2
    assert "package.module:pool" in result.stderr
    result = event("worker", "json:dumps")
    assert result.returncode == 2
    assert "is a function, not a WorkerPool" in result.stderr


def test_publish_with_bad_json_exits_2() -> None:
    result = event("publish", "app.a", "{not json")
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr


def test_publish_to_an_unreachable_broker_exits_69_without_the_password() -> None:
    result = event("publish", "app.a", "{}", url="amqp://guest:hunter2@127.0.0.1:1/")
    assert result.returncode == 69
    assert "amqp://guest:***@127.0.0.1:1/" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


async def test_publish_delivers_with_headers(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    channel = await probe.channel()
    queue = f"{iso.namespace}:cli"
    await channel.exchange_declare(iso.exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(queue, durable=True)
    await channel.queue_bind(queue, iso.exchange, routing_key="app.cli")
    result = event(
        "publish",
        "app.cli",
        '{"n": 1}',
        "--exchange",
        iso.exchange,
        "--namespace",
        iso.namespace,
        "--header",
        "trace=abc",
        url=pool_kwargs["url"],
    )
    assert result.returncode == 0, result.stderr
    [got] = await probe.take_all(queue)
    assert got.body == b'{"n":1}'
    assert got.header.properties.headers == {"trace": "abc"}
