"""Every command that talks to the management API finds it by --management-url or the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import Isolation, Management

from event.management import configured_base

UNANSWERED = "http://127.0.0.1:1"
APPS = Path(__file__).parent / "apps"


def event(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("EVENT_MANAGEMENT_URL", "RABBITMQ_MANAGEMENT_URL")
    }
    return subprocess.run(
        [sys.executable, "-m", "event.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def test_the_option_wins_then_ours_then_rabbitmqs_variable() -> None:
    both = {"EVENT_MANAGEMENT_URL": "http://a:1", "RABBITMQ_MANAGEMENT_URL": "http://b:2"}
    assert configured_base("http://c:3", both) == "http://c:3"
    assert configured_base(None, both) == "http://a:1"
    assert configured_base(None, {"RABBITMQ_MANAGEMENT_URL": "http://b:2"}) == "http://b:2"
    assert configured_base(None, {"EVENT_MANAGEMENT_URL": ""}) is None


@pytest.mark.parametrize("variable", ["EVENT_MANAGEMENT_URL", "RABBITMQ_MANAGEMENT_URL"])
def test_queues_goes_where_the_environment_says(
    variable: str, pool_kwargs: dict[str, Any], management: Management
) -> None:
    amqp = {"AMQP_URL": pool_kwargs["url"]}
    astray = event("queues", "--json", env={**amqp, variable: UNANSWERED})
    assert astray.returncode == 69
    assert UNANSWERED in astray.stderr and "EVENT_MANAGEMENT_URL" in astray.stderr
    found = event("queues", "--json", env={**amqp, variable: management.base})
    assert found.returncode == 0, found.stderr
    overridden = event(
        "queues", "--json", "--management-url", management.base, env={**amqp, variable: UNANSWERED}
    )
    assert overridden.returncode == 0, overridden.stderr


def test_topology_check_goes_where_the_environment_says(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management
) -> None:
    env = {
        "AMQP_URL": pool_kwargs["url"],
        "EVENT_TEST_NAMESPACE": iso.namespace,
        "EVENT_TEST_EXCHANGE": iso.exchange,
        "PYTHONPATH": str(APPS),
    }
    astray = event("topology", "topo_app:pool", "--check", env={**env, "EVENT_MANAGEMENT_URL": UNANSWERED})
    assert astray.returncode == 69 and UNANSWERED in astray.stderr
    found = event(
        "topology", "topo_app:pool", "--check", env={**env, "EVENT_MANAGEMENT_URL": management.base}
    )
    assert found.returncode == 1  # the API answered: nothing of this test's pool is declared
    assert f"exchange {iso.exchange!r} is missing" in found.stdout
