"""`amqps://` URLs with a CA, a client certificate and its key, end to end.

The local broker has no TLS listener, so the test puts a TLS terminator in front of it, as a load
balancer or stunnel would in production: it requires a client certificate signed by the test's own CA
and forwards the plain AMQP stream to the broker. Everything else (handshake, consume, publish,
confirms) is the real broker's."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import pytest
from support import eventually
from tls_support import TlsTerminator, amqps_url

from event import ConnectionFailed, Message, Publisher, WorkerPool


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
