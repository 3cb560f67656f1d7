"""Runners from a TOML file (`event worker --config`) and from `event exec`'s command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import Isolation, Probe, eventually, http_app

from event import ConfigurationError, Publisher
from event import workers_file as files

SCRIPT = '#!/bin/sh\nprintf "%s\\n" "$EVENT_ROUTING_KEY" "$@" > "$1/ran"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workers.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("concurrency = 3\n", "has no [[proxy]] or [[exec]] table"),
        ("colour = 'blue'\n[[exec]]\nrouting_keys = ['a']\ncommand = ['sh']\n", "unknown key(s) ['colour']"),
        ("[[proxy]]\nrouting_keys = ['a']\n", "[[proxy]] number 1 needs to = ..."),
        ("[[proxy]]\nrouting_keys = ['a']\nto = 'ftp://x/'\n", "must be an http(s):// URL"),
        ("[[exec]]\nrouting_keys = []\ncommand = ['sh']\n", "routing_keys must be a non-empty list"),
        ("[[exec]]\nrouting_keys = ['a']\ncommand = ['/no/such/tool']\n", "is not an executable file"),
        ("[[exec]]\nrouting_keys = ['a']\ncommand = ['sh']\nretry = 3\n", "unknown key(s) ['retry']"),
        ("proxy = 3\n", "proxy must be an array of tables"),
        ("[[exec]\n", "is not valid TOML"),
    ],
)
def test_a_bad_workers_file_is_refused_with_the_place_named(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        files.load(write(tmp_path, text))
    assert error in str(raised.value)


def test_a_workers_file_builds_one_pool_with_every_runner(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
namespace = "shop"
concurrency = 7
on_dead = "http://127.0.0.1:9/dead"

[[proxy]]
routing_keys = ["shop.resize", "shop.crop"]
to = "http://127.0.0.1:8000/jobs/{routing_key}"
timeout = 5
retries = 2
headers = { Authorization = "Bearer x" }

[[exec]]
routing_keys = ["shop.report.*"]
command = ["sh", "-c", "exit 0"]
queue = "reports"
max_concurrency = 2
""",
    )
    runners = files.load(path)
    pool = runners.pool
    assert (pool.namespace, pool.concurrency) == ("shop", 7)
    assert [(c.queue, c.routing_keys, c.retries, c.max_concurrency) for c in pool.consumers] == [
        ("shop:shop.resize", ("shop.resize", "shop.crop"), 2, 0),
        ("shop:reports", ("shop.report.*",), 3, 2),
    ]
    assert pool.on_dead is not None and len(runners.closers) == 2


async def test_event_worker_config_and_event_exec_run_their_runners(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    got: list[str] = []

    async def job(request: web.Request) -> web.Response:
        got.append(request.headers["X-Event-Routing-Key"])
        return web.Response(text="ok")

    app = contextlib.AsyncExitStack()
    port = await app.enter_async_context(http_app(job))
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    config = write(
        tmp_path,
        f"""
namespace = "{iso.namespace}"
exchange = "{iso.exchange}"
[[proxy]]
routing_keys = ["app.web"]
to = "http://127.0.0.1:{port}/jobs"
""",
    )
    names = ["--namespace", iso.namespace, "--exchange", iso.exchange]
    commands = [
        ["worker", "--config", str(config)],
        ["exec", "app.cmd", *names, "--timeout", "5", "--", str(script), str(tmp_path)],
    ]
    env = {**os.environ, "AMQP_URL": pool_kwargs["url"]}
    workers = [
        await asyncio.create_subprocess_exec(sys.executable, "-m", "event.cli", *argv, env=env,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        for argv in commands
    ]  # fmt: skip
    try:

        async def consuming() -> bool:
            try:
                channel = await probe.channel()
                for queue in ("app.web", "app.cmd"):
                    ok = await channel.queue_declare(f"{iso.namespace}:{queue}", passive=True)
                    if ok.consumer_count != 1:
                        return False
                return True
            except Exception:
                return False

        await eventually(consuming, timeout=30)
        async with Publisher(**pool_kwargs) as publisher:
            await publisher.publish("app.web", {"n": 1})
            await publisher.publish("app.cmd", {"args": ["one arg", "two"]})
        await eventually(lambda: got == ["app.web"] and (tmp_path / "ran").exists(), timeout=20)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        outputs = [(await asyncio.wait_for(w.communicate(), timeout=30))[0] for w in workers]
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        await app.aclose()
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert (tmp_path / "ran").read_text() == f"app.cmd\n{tmp_path}\none arg\ntwo\n"
