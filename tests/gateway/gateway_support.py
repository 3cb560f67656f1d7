"""Helpers of the gateway tests: `event serve` and `event worker` as real processes, and a TCP link to
the broker that a test can cut (so the broker becomes unreachable for one client only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from support import Isolation, Management

APPS = Path(__file__).parent / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def journal(path: Path, word: str) -> list[int]:
    """The ids the gateway test worker handled for the consumer ``word`` (work / other)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [int(line.split()[1]) for line in lines if line.startswith(word + " ")]


async def _wait_http(url: str, process: asyncio.subprocess.Process, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            if process.returncode is not None:
                output = await process.stdout.read() if process.stdout else b""
                raise AssertionError(f"{url}: the process exited {process.returncode}:\n{output.decode()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if loop.time() > deadline:
                raise AssertionError(f"{url} did not answer 200 within {timeout} s")
            await asyncio.sleep(0.1)


async def _stop(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.terminate()
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
    return output.decode() if output else ""


@dataclass
class Running:
    """A process of ours with the output it printed (filled in once it stopped)."""

    base: str
    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def gateway(url: str, iso: Isolation, management: Management, *extra: str) -> AsyncIterator[Running]:
    """`event serve` for the test's namespace on a free loopback port, until the block ends."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event.cli", "serve", "--url", url, "--namespace", iso.namespace,
        "--exchange", iso.exchange, "--bind", f"127.0.0.1:{port}", "--management-url", management.base,
        *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    running = Running(f"http://127.0.0.1:{port}", process)
    try:
        await _wait_http(running.base + "/healthz", process)
    except BaseException:
        running.output.append(await _stop(process))
        raise
    # Read its output as it comes: a gateway logs a line per request, and a pipe nobody reads fills up
    # (64 KiB) and stops the gateway in its next log call.
    chunks: list[bytes] = []
    reading = asyncio.get_running_loop().create_task(_collect(process, chunks))
    try:
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=20)
        except TimeoutError:
            process.kill()
            await process.wait()
        await reading
        running.output.append(b"".join(chunks).decode())


async def _collect(process: asyncio.subprocess.Process, chunks: list[bytes]) -> None:
    assert process.stdout is not None
    while chunk := await process.stdout.read(65536):
        chunks.append(chunk)


@contextlib.asynccontextmanager
async def worker(url: str, iso: Isolation, journal_path: Path) -> AsyncIterator[Running]:
    """`event worker` of tests/gateway/apps/gateway_app.py with its metrics port, until the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "AMQP_URL": url,
        "EVENT_TEST_NAMESPACE": iso.namespace,
        "EVENT_TEST_EXCHANGE": iso.exchange,
        "EVENT_TEST_JOURNAL": str(journal_path),
        "PYTHONPATH": str(APPS),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event.cli", "worker", "gateway_app:pool", "--metrics-port", str(port),
        "--metrics-host", "127.0.0.1", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    running = Running(f"http://127.0.0.1:{port}", process)
    try:
        await _wait_http(running.base + "/readyz", process)
        yield running
    finally:
        running.output.append(await _stop(process))


class CuttableLink:
    """A TCP relay to the broker on a port of its own: ``cut()`` drops every connection through it and
    refuses new ones (the broker is unreachable for its clients, and only for them), ``restore()``
    listens again."""

    def __init__(self, amqp_url: str) -> None:
        parts = urllib.parse.urlsplit(amqp_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.port = free_port()
        login = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        self.url = urllib.parse.urlunsplit(parts._replace(netloc=f"{login}127.0.0.1:{self.port}"))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
