"""Running the gateway: uvicorn in the current event loop, after the bind rule is checked.

uvicorn is the ASGI server starlette's own documentation runs on: maintained, asyncio-native (so a pool
can run in the same loop), and it handles HTTP/1.1 keep-alive, limits and graceful shutdown for us.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from starlette.types import ASGIApp

from event.errors import ConfigurationError
from event.gateway.app import create_app
from event.gateway.backend import Backend, GatewayConfig
from event.gateway.security import check_bind, is_loopback

log = logging.getLogger(__name__)


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
    listening = bound_socket(host, port)
    backend = Backend(config)
    # Say at once what is wrong (broker down, a wrong password, no management API), each with its fix;
    # the gateway serves all the same and answers 503 naming the problem until it is fixed.
    for problem in await backend.check():
        log.warning("event serve: %s", problem)
    app = create_app(config, token=token, loopback_only=is_loopback(host), backend=backend)
    log.info(
        "event serve: namespace %r, exchange %r at %s, on http://%s:%d/%s",
        config.namespace,
        config.exchange,
        config.shown_url,
        host if ":" not in host else f"[{host}]",
        port,
        "" if token is None else " (bearer token required)",
    )
    await server(app, host, port).serve(sockets=[listening])


def bound_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a configuration error naming it (before uvicorn logs its own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise ConfigurationError(
            f"cannot serve on {host}:{port} (--bind): {exc.strerror or exc}; another process may be "
            f"listening there: pick another port"
        ) from None
    return listening
