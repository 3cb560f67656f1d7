"""The README's first command runs as written: the demo worker and publisher against the broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import Isolation

ROOT = Path(__file__).resolve().parents[2]


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && python examples/demo.py" in readme
    assert 'pip install -e ".[test]" && pytest' in readme


def test_demo_runs_and_parks_the_failed_mail(pool_kwargs: dict[str, Any], iso: Isolation) -> None:
    env = {
        **os.environ,
        "AMQP_URL": pool_kwargs["url"],
        "EVENT_DEMO_NAMESPACE": iso.namespace,
        "EVENT_DEMO_EXCHANGE": iso.exchange,
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:-1] == [
        "audit: app.user.signed_up {'user': 'cyd'}",
        "heartbeat",
        "send_email: Dear ada",
        "send_email: Dear dan",
    ]
    assert lines[-1] == f"done; the bounced mail waits in {iso.namespace}:{iso.exchange}_dead_queue"
    assert "Dead: mailbox of bob is full" in result.stderr


def closed_port_url() -> str:
    with socket.socket() as s:  # bound, never listening: a connect is refused
        s.bind(("127.0.0.1", 0))
        return f"amqp://guest:secret-pw@127.0.0.1:{s.getsockname()[1]}/"


def run_demo(**env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "AMQP_URL"} | env
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True, text=True, timeout=60, env=environ,
    )  # fmt: skip


def test_with_no_broker_and_no_amqp_url_the_demo_runs_in_memory_and_says_so() -> None:
    result = run_demo(EVENT_DEMO_LOCAL_URL=closed_port_url())
    assert result.returncode == 0, result.stderr
    first, *lines = result.stdout.splitlines()
    assert "running on event's in-memory broker (event.testing.TestBroker)" in first
    assert "docker run" in first and "secret-pw" not in first
    assert lines[:-1] == [
        "audit: app.user.signed_up {'user': 'cyd'}",
        "heartbeat",
        "send_email: Dear ada",
        "send_email: Dear dan",
    ]
    assert "Traceback" not in result.stderr


def test_an_unreachable_amqp_url_is_one_line_naming_it_and_exit_69() -> None:
    url = closed_port_url()
    result = run_demo(AMQP_URL=url)
    assert result.returncode == 69
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert url.replace("secret-pw", "***") in line and "secret-pw" not in line
    assert "rabbitmq-server" in line and "unset AMQP_URL" in line
