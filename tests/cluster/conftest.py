"""The three-node cluster of cmd/rabbitmq-cluster, for the tests that kill its nodes.

The tests run against it when it is up (its env file exists: `cmd/rabbitmq-cluster start` writes
it, and CI runs that before pytest), or start it themselves with EVENT_CLUSTER=start; otherwise
they skip, saying how to get one. They never touch the machine's own broker.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import SCRIPT, Cluster
from support import Isolation, broker_answers

BASE = Path(os.environ.get("EVENT_CLUSTER_BASE", "/var/tmp/event-cluster"))
HOW_TO_GET_ONE = (
    "no three-node cluster of cmd/rabbitmq-cluster is up: run `cmd/rabbitmq-cluster start` "
    "(about a minute the first time), or set EVENT_CLUSTER=start to let the tests start it"
)


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs if not key.startswith("#")}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    env_file = BASE / "env"
    if not env_file.exists():
        if os.environ.get("EVENT_CLUSTER") != "start":
            pytest.skip(HOW_TO_GET_ONE)
        subprocess.run([str(SCRIPT), "start"], check=True, timeout=300)
    else:
        # Ours alone: bring back a node a previous run left down (seconds when all three run).
        subprocess.run([str(SCRIPT), "start"], check=True, capture_output=True, timeout=300)
    env = _read_env(env_file)
    found = Cluster(
        urls=env["CLUSTER_URLS"].split(","),
        management_urls=env["CLUSTER_MANAGEMENT_URLS"].split(","),
        nodes=env["CLUSTER_NODES"].split(","),
    )
    deadline = time.monotonic() + 60
    while not all(broker_answers(url) for url in found.urls):
        if time.monotonic() > deadline:
            pytest.fail(f"the cluster's nodes do not all answer: {found.urls}", pytrace=False)
        time.sleep(1)
    yield found


@pytest.fixture
def cluster_iso(cluster: Cluster) -> Iterator[Isolation]:
    """A namespace and exchange of this test's own on the cluster, deleted afterwards."""
    isolation = Isolation(cluster.management(1))
    yield isolation
    cluster.heal()  # a fault may have left node 1 (whose API cleans up) down
    isolation.cleanup()
