"""`amqps://` URLs with a CA, a client certificate and its key, end to end.

The local broker has no TLS listener, so the test puts a TLS terminator in front of it, as a load
balancer or stunnel would in production: it requires a client certificate signed by the test's own CA
and forwards the plain AMQP stream to the broker. Everything else (handshake, consume, publish,
confirms) is the real broker's."""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from support import eventually

from event import ConnectionFailed, Message, Publisher, WorkerPool


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


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("event-worker@example.com", common_name="event-worker")
    files = {
        "ca": tmp_path / "ca.pem",
        "server": tmp_path / "server.pem",
        "client_cert": tmp_path / "client.pem",
        "client_key": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return {name: str(path) for name, path in files.items()}


@pytest.fixture
async def terminator(amqp_url: str, certificates: dict[str, str]) -> AsyncIterator[TlsTerminator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certificates["ca"])
    context.load_cert_chain(certificates["server"])
    context.verify_mode = ssl.CERT_REQUIRED
    parts = urllib.parse.urlsplit(amqp_url)
    proxy = TlsTerminator((parts.hostname or "127.0.0.1", parts.port or 5672), context)
    await proxy.start()
    yield proxy
    await proxy.close()


def amqps_url(amqp_url: str, port: int, **query: str) -> str:
    parts = urllib.parse.urlsplit(amqp_url)
    netloc = f"{parts.username}:{parts.password}@localhost:{port}"
    return urllib.parse.urlunsplit(("amqps", netloc, parts.path or "/", urllib.parse.urlencode(query), ""))


async def test_pool_and_publisher_speak_tls_with_a_client_certificate(
    amqp_url: str, pool_kwargs: dict[str, Any], certificates: dict[str, str], terminator: TlsTerminator
) -> None:
    url = amqps_url(
        amqp_url,
        terminator.port,
        cafile=certificates["ca"],
        certfile=certificates["client_cert"],
        keyfile=certificates["client_key"],
    )
    pool = WorkerPool(**{**pool_kwargs, "url": url})
    got: list[Any] = []

    @pool.consumer("app.secure")
    async def secure(ctx: object, msg: Message[Any]) -> None:
        got.append(msg.body)

    async with pool.running(), Publisher(**{**pool_kwargs, "url": url}) as publisher:
        await asyncio.gather(*(publisher.publish("app.secure", {"n": n}) for n in range(200)))
        await eventually(lambda: len(got) == 200, timeout=20)
    assert sorted(body["n"] for body in got) == list(range(200))
    assert set(terminator.clients) == {"event-worker"}  # every connection showed our client certificate


async def test_an_untrusted_server_or_a_missing_client_certificate_is_a_clear_error(
    amqp_url: str, pool_kwargs: dict[str, Any], certificates: dict[str, str], terminator: TlsTerminator
) -> None:
    # No cafile: the system's CAs do not know the test CA, so the server is not trusted.
    untrusted = amqps_url(amqp_url, terminator.port)
    with pytest.raises(ConnectionFailed, match=r"TLS handshake .* CERTIFICATE_VERIFY_FAILED") as refused:
        async with Publisher(**{**pool_kwargs, "url": untrusted}):
            pass
    password = urllib.parse.urlsplit(amqp_url).password
    assert f"localhost:{terminator.port}" in str(refused.value)
    assert f":{password}@" not in str(refused.value)
    # Trusted server, but no client certificate: the terminator hangs up during the handshake.
    anonymous = amqps_url(amqp_url, terminator.port, cafile=certificates["ca"])
    with pytest.raises(ConnectionFailed, match=f"localhost:{terminator.port}"):
        async with Publisher(**{**pool_kwargs, "url": anonymous}):
            pass
    assert terminator.clients == []
