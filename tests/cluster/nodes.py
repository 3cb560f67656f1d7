"""The cluster of cmd/rabbitmq-cluster as the tests see it: its nodes and the faults they can inflict."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import Management

SCRIPT = Path(__file__).resolve().parents[2] / "cmd" / "rabbitmq-cluster"


@dataclass
class Cluster:
    """The nodes, numbered 1..3 as the script numbers them, and the faults a test can inflict on them."""

    urls: list[str]
    management_urls: list[str]
    nodes: list[str]

    def script(self, *args: str, timeout: float = 240) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args], check=True, capture_output=True, text=True, timeout=timeout
        )
        return done.stdout

    def number_of(self, node: str) -> int:
        """The script's number (1..3) of a node name such as ``event-c2@localhost``."""
        return self.nodes.index(node) + 1

    def kill(self, n: int) -> None:
        """SIGKILL of node ``n``'s Erlang VM: no goodbye to its peers or clients."""
        os.kill(int(self.script("pid", str(n)).strip()), signal.SIGKILL)

    def ctl(self, n: int, *args: str) -> None:
        """rabbitmqctl ARGS against node ``n``."""
        self.script("ctl", str(n), *args)

    def heal(self) -> None:
        """Start whatever node is down (it rejoins) and wait until all three run."""
        self.script("start")

    def management(self, n: int = 1) -> Management:
        return Management(self.management_urls[n - 1], "guest", "guest")

    def node_of_connection(self, name: str) -> str | None:
        """The node holding the (single, live) connection a client opened under ``name``."""
        for n in range(1, len(self.nodes) + 1):
            api = self.management(n)
            if not api.answers():
                continue
            for conn in api.connections():
                if (conn.get("client_properties") or {}).get("connection_name") == name:
                    node: str = conn["node"]
                    return node
            return None
        return None

    def home_of(self, queue: str) -> str:
        """The node a classic queue lives on, or a quorum queue's leader."""
        for n in range(1, len(self.nodes) + 1):
            api = self.management(n)
            if api.answers():
                found: dict[str, Any] = api.queue(queue)
                return str(found.get("leader") or found["node"])
        raise AssertionError("no node of the cluster answers its management API")
