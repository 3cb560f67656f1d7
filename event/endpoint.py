"""A tiny HTTP endpoint for operations: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/readyz`` also lists the paused consumer queues, one ``paused: <queue>`` line each.

Three fixed routes do not need a web framework; this keeps the worker free of one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client.exposition import CONTENT_TYPE_LATEST

Metrics = Callable[[], Awaitable[bytes]]
Ready = Callable[[], Awaitable[bool]]
Paused = Callable[[], Iterable[str]]


def _no_pauses() -> Iterable[str]:
    return ()


async def serve_endpoint(
    host: str, port: int, *, metrics: Metrics, ready: Ready, paused: Paused = _no_pauses
) -> asyncio.Server:
    """Start serving; ``metrics`` renders the exposition, ``ready`` says whether ``/readyz`` is 200,
    ``paused`` names the paused consumer queues that ``/readyz`` lists."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readline()
                while (await reader.readline()).strip():
                    pass  # headers: nothing here needs them
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, kind, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, kind, body = "200 OK", CONTENT_TYPE_LATEST, await metrics()
            elif path == "/healthz":
                status, kind, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                is_ready = await ready()
                status = "200 OK" if is_ready else "503 Service Unavailable"
                lines = ["ready" if is_ready else "not ready", *(f"paused: {q}" for q in sorted(paused()))]
                kind, body = "text/plain", "".join(f"{line}\n" for line in lines).encode()
            else:
                status, kind, body = "404 Not Found", "text/plain", b"try /metrics, /healthz or /readyz\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if parts and parts[0] != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
