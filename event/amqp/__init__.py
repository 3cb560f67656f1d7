"""Our own AMQP 0-9-1 client on an ``asyncio.Protocol``: the driver of :mod:`event.driver` for a real broker.

    url = "amqp://guest:guest@127.0.0.1:5672/"
    connection = await event.amqp.open_connection(url, name="worker", timeout=10)
    channel = await connection.channel(confirms=True)
    await channel.basic_publish(b"{}", exchange="hutch", routing_key="app.x")

:func:`open_connection` satisfies :class:`event.driver.Connector`; the connection and its channels satisfy
:class:`event.driver.Connection` and :class:`event.driver.Channel`. The modules: :mod:`.connection`
(the protocol, the handshake, heartbeats, flow control), :mod:`.channel` (RPCs, consumers,
publisher confirms and returns), :mod:`.frames` (the lean codecs of the per-message frames),
:mod:`.url` (what a URL asks for) and :mod:`.reasons` (the words of a failed connect).
"""

from __future__ import annotations

from event import driver
from event.amqp.channel import AMQPChannel
from event.amqp.connection import AMQPConnection, open_connection

__all__ = ["AMQPChannel", "AMQPConnection", "open_connection"]

# mypy checks here that open_connection is a driver.Connector (and so its connection and channels the
# protocols).
_connector: driver.Connector = open_connection
