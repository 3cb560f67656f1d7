"""A TLS terminator in front of the local broker (which has no TLS listener), with a test CA's
certificates: what the TLS tests of the pool, the publisher and the driver (event.amqp) share."""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse


class TlsTerminator:
    """Accepts TLS on a free local port (client certificate required) and pipes to the broker."""

    def __init__(self, broker: tuple[str, int], context: ssl.SSLContext) -> None:
        self.broker = broker
        self.context = context
        self.clients: list[str] = []  # common names of the client certificates presented
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        peer = client_w.get_extra_info("peercert") or {}
        names = [value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"]
        self.clients.extend(names)
        broker_r, broker_w = await asyncio.open_connection(*self.broker)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_r, broker_w), pipe(broker_r, client_w))


def amqps_url(amqp_url: str, port: int, **query: str) -> str:
    parts = urllib.parse.urlsplit(amqp_url)
    netloc = f"{parts.username}:{parts.password}@localhost:{port}"
    return urllib.parse.urlunsplit(("amqps", netloc, parts.path or "/", urllib.parse.urlencode(query), ""))
