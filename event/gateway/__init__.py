"""``event serve``: an HTTP gateway and a web dashboard for a namespace's queues, consumers and dead letters.

::

    from event.gateway import GatewayConfig, create_app

    app = create_app(GatewayConfig.create(namespace="myapp"))   # an ASGI app: mount it, or
    await serve(GatewayConfig.create(namespace="myapp"), "127.0.0.1", 8080)   # serve it with uvicorn

Needs the ``serve`` extra: ``pip install "rabbit-event[serve]"`` (starlette and uvicorn).
"""

from event.gateway.app import create_app
from event.gateway.backend import Backend, GatewayConfig
from event.gateway.security import check_bind, parse_bind, read_token
from event.gateway.server import serve

__all__ = ["Backend", "GatewayConfig", "check_bind", "create_app", "parse_bind", "read_token", "serve"]
