"""The README's first command runs as written: the demo worker and publisher against the broker."""

from __future__ import annotations

import os
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
