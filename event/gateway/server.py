"""Running the gateway: uvicorn in the current event loop, after the bind rule is checked.

uvicorn is the ASGI server starlette's own documentation runs on: maintained, asyncio-native (so a pool
can run in the same loop), and it handles HTTP/1.1 keep-alive, limits and graceful shutdown for us.
"""

from __future__ import annotations

import logging

import uvicorn
from starlette.types import ASGIApp

from event.gateway.app import create_app
from event.gateway.backend import GatewayConfig
from event.gateway.security import check_bind, is_loopback

log = logging.getLogger("event.gateway")


def server(app: ASGIApp, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for ``app`` that logs through the ``event`` command's logging set-up."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=True, lifespan="on", server_header=False
    )
    return uvicorn.Server(config)


async def serve(config: GatewayConfig, host: str, port: int, *, token: str | None = None) -> None:
    """Serve the gateway for ``config`` on ``host:port`` until SIGINT/SIGTERM.

    A non-loopback ``host`` without a ``token`` raises :class:`event.errors.ConfigurationError`.
    """
    check_bind(host, token)
    app = create_app(config, token=token, loopback_only=is_loopback(host))
    log.info(
        "event serve: namespace %r, exchange %r at %s, on http://%s:%d/%s",
        config.namespace,
        config.exchange,
        config.shown_url,
        host if ":" not in host else f"[{host}]",
        port,
        "" if token is None else " (bearer token required)",
    )
    await server(app, host, port).serve()
