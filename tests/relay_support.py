"""A TCP relay between a client and the real broker, for faults the broker itself cannot be asked for.

While ``passing`` is clear, the broker's bytes wait in the relay (a confirm held back); with
``cut_when`` set, the first connection whose client sends those bytes is cut there, at once (a
connection lost half-way through a start). Later connections pass untouched.
"""

from __future__ import annotations

import asyncio
import urllib.parse


class Relay:
    """Pipes a local port to ``broker``; see the module for what it can do to the bytes."""

    def __init__(self, broker: tuple[str, int], *, cut_when: bytes | None = None) -> None:
        self.broker = broker
        self.cut_when = cut_when
        self.cuts = 0
        self.port = 0
        self.passing = asyncio.Event()
        self.passing.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.passing.set()
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection(*self.broker)

        def cut() -> None:
            self.cuts += 1
            for writer in (client_w, broker_w):
                writer.transport.abort()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_client: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if from_client and self.cut_when is not None and not self.cuts and self.cut_when in data:
                        cut()
                        return
                    if not from_client:
                        await self.passing.wait()
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        for one in (pipe(client_r, broker_w, True), pipe(broker_r, client_w, False)):
            task = asyncio.create_task(one)
            self._pipes.add(task)


def relayed(amqp_url: str, port: int) -> str:
    """``amqp_url`` through the relay on ``port``."""
    parts = urllib.parse.urlsplit(amqp_url)
    credentials = parts.netloc.rpartition("@")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))
