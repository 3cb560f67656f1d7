"""Run N copies of a worker command as child processes: forward signals, restart crashed children.

``event worker --processes N`` uses it so a pool can use every core: each child is an ordinary
``event worker`` with its own connection and its own share of the prefetched messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from event.pacing import RESTART_DELAYS_S, delay_before

log = logging.getLogger(__name__)


def process_count(requested: int) -> int:
    """``requested`` children, or one per core for 0."""
    if requested < 0:
        raise ValueError(f"--processes must be 0 (one per core) or more, not {requested}")
    return requested or (os.cpu_count() or 1)


class Supervisor:
    """Keeps ``count`` children of ``argv`` running until a signal, then stops them and reports."""

    def __init__(
        self, argv: Sequence[str], count: int, *, kill_after: float = 60.0, metrics_ports: Sequence[int] = ()
    ) -> None:
        self.argv = list(argv)
        self.count = count
        self.metrics_ports = list(metrics_ports)  # one per child, or none
        self.kill_after = kill_after
        self.stopping = asyncio.Event()
        self.children: dict[int, asyncio.subprocess.Process] = {}

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns 0 when every child stopped cleanly, else 1."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        try:
            slots = [asyncio.create_task(self._keep(slot)) for slot in range(self.count)]
            codes = await asyncio.gather(*slots)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        return 0 if all(code == 0 for code in codes) else 1

    async def _keep(self, slot: int) -> int:
        restarts = 0
        while True:
            argv = self.argv
            if self.metrics_ports:
                argv = [*argv, "--metrics-host", "127.0.0.1", "--metrics-port", str(self.metrics_ports[slot])]
            child = await asyncio.create_subprocess_exec(
                *argv, env={**os.environ, "EVENT_WORKER_SLOT": str(slot)}
            )
            self.children[slot] = child
            log.info("worker %d started (pid %d)", slot, child.pid)
            stop = asyncio.create_task(self.stopping.wait())
            exited = asyncio.create_task(child.wait())
            await asyncio.wait({stop, exited}, return_when=asyncio.FIRST_COMPLETED)
            if self.stopping.is_set():
                if not exited.done():
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(asyncio.shield(exited), timeout=self.kill_after)
                    except TimeoutError:
                        log.error(
                            "worker %d (pid %d) ignored SIGTERM for %g s: killing it",
                            slot,
                            child.pid,
                            self.kill_after,
                        )
                        child.kill()
                        await exited
                stop.cancel()
                code = exited.result()
                log.info("worker %d (pid %d) exited with %d", slot, child.pid, code)
                return code
            stop.cancel()
            code = exited.result()
            delay = delay_before(restarts, RESTART_DELAYS_S)
            restarts += 1
            log.error(
                "worker %d (pid %d) exited with %d; restarting it in %g s", slot, child.pid, code, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)
            if self.stopping.is_set():
                return 0

    async def metrics(self) -> bytes:
        """The children's metrics added up."""
        answers = await asyncio.gather(*(fetch(port, "/metrics") for port in self.metrics_ports))
        return merge_expositions([body.decode() for status, body in answers if status == 200])

    async def ready(self) -> bool:
        """Whether every child answers ``/readyz`` with 200."""
        answers = await asyncio.gather(*(fetch(port, "/readyz") for port in self.metrics_ports))
        return all(status == 200 for status, _ in answers)


def worker_argv(pool_path: str, grace: float | None, log_level: str, log_format: str) -> list[str]:
    """The command line of one child: this interpreter running ``event worker`` in one process."""
    argv = [sys.executable, "-m", "event.cli", "--log-level", log_level, "--log-format", log_format]
    argv += ["worker", pool_path]
    if grace is not None:
        argv += ["--grace", str(grace)]
    return argv


# --- metrics of all children, served by the supervisor -----------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` ports free on 127.0.0.1 right now, for the children's own metrics endpoints."""
    import socket

    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


async def fetch(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` from a child's endpoint on 127.0.0.1: (status, body); (0, b"") when it does not answer."""
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return 0, b""
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, b""
    return status, body


def merge_expositions(texts: Sequence[str]) -> bytes:
    """One exposition from several: samples with the same name and labels are added up.

    Counters and histograms of the children add up to the supervisor's; so do the in-flight gauges.
    """
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            _, _, samples = families.setdefault(family.name, (family.type, family.documentation, {}))
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value
    lines = []
    for name, (kind, documentation, samples) in families.items():
        lines.append(f"# HELP {name} {documentation}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample_name, labels), value in samples.items():
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample_name}{{{rendered}}} {value!r}" if rendered else f"{sample_name} {value!r}")
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
