"""The words of a failed connect: what went wrong and how to fix it, for every way a connect fails.

One place for them: :func:`event.amqp.open_connection` raises :class:`event.errors.ConnectionFailed` with
these, and whoever connects otherwise (or tells a user how to get a broker) imports them from here. ``shown``
is always the URL with its password hidden."""

from __future__ import annotations

HOW_TO_GET_A_BROKER = (
    "start one locally with `rabbitmq-server -detached` (Debian: `apt-get install rabbitmq-server`), "
    "or point AMQP_URL at a running broker"
)


def login_refused(shown: str, detail: str) -> str:
    """The broker refused the user or password (403 ACCESS_REFUSED at the handshake)."""
    return f"RabbitMQ at {shown} refused the login ({detail}): check the user and password in the URL"


def mechanism_refused(shown: str, detail: str) -> str:
    """The broker offers no login mechanism we speak (we speak PLAIN)."""
    return f"RabbitMQ at {shown} refused the login mechanism: {detail}"


def vhost_refused(shown: str, vhost: str) -> str:
    """The broker refused the vhost of the URL (530 NOT_ALLOWED at ``Connection.Open``)."""
    return (
        f"RabbitMQ at {shown} refused vhost {vhost!r}: it does not exist or the user may not use "
        f"it. Create it with `rabbitmqctl add_vhost {vhost}` and grant access with "
        f"`rabbitmqctl set_permissions -p {vhost} USER '.*' '.*' '.*'`, or fix the URL"
    )


def tls_failed(shown: str, reason: str) -> str:
    """The TLS handshake failed (untrusted server, missing client certificate, not a TLS port)."""
    return (
        f"the TLS handshake with RabbitMQ at {shown} failed ({reason}): check that the port "
        "is the broker's TLS listener (5671 by default) and the cafile, certfile and keyfile "
        "options of the URL"
    )


def timed_out(shown: str, timeout: float) -> str:
    """Nothing answered, or the handshake did not finish, within the connect timeout."""
    return f"RabbitMQ at {shown} did not answer within {timeout:g} s; {HOW_TO_GET_A_BROKER}"


def unreachable(shown: str, reason: str) -> str:
    """The socket could not be opened, or the broker hung up or closed the connection at the handshake."""
    return f"cannot reach RabbitMQ at {shown} ({reason}); {HOW_TO_GET_A_BROKER}"


def protocol_violation(shown: str, detail: str) -> str:
    """The peer broke the AMQP 0-9-1 protocol at the handshake (e.g. a ``frame_max`` below 4096)."""
    return f"the peer at {shown} broke the AMQP 0-9-1 protocol ({detail}): is it a RabbitMQ broker?"
