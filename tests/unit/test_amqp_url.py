"""What event.amqp reads from a URL: scheme and port, credentials, vhost, heartbeat, TLS options."""

from __future__ import annotations

import ssl

import pytest

from event.amqp.url import parse
from event.errors import ConfigurationError


def test_defaults_follow_the_scheme() -> None:
    plain = parse("amqp://broker")
    assert (plain.host, plain.port, plain.user, plain.password, plain.vhost) == (
        "broker",
        5672,
        "guest",
        "guest",
        "/",
    )
    assert (plain.heartbeat, plain.tls, plain.ssl_context()) == (60, False, None)
    assert parse("amqps://broker").port == 5671


def test_credentials_and_vhost_are_percent_decoded() -> None:
    params = parse("amqp://us%40er:p%3Ass%2Fw@h:5673/my%2Fvhost?heartbeat=15")
    assert (params.user, params.password, params.port, params.vhost, params.heartbeat) == (
        "us@er",
        "p:ss/w",
        5673,
        "my/vhost",
        15,
    )
    assert parse("amqp://h/%2F").vhost == "/"
    assert parse("amqp://h/").vhost == "/"


def test_tls_options_build_the_context() -> None:
    params = parse("amqps://h/?no_verify_ssl=1")
    context = params.ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    verified = parse("amqps://h/").ssl_context()
    assert verified is not None and verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    files = parse("amqps://h/?cafile=/a.pem&certfile=/c.pem&keyfile=/k.pem")
    assert (files.cafile, files.certfile, files.keyfile, files.verify) == ("/a.pem", "/c.pem", "/k.pem", True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h/", "starts with amqp:// or amqps://"),
        ("amqp://h:99999/", "not a usable AMQP URL"),
        ("amqp://h/?heartbeat=soon", "heartbeat in the URL must be whole seconds"),
        ("amqp://h/?heartbeat=-1", "heartbeat in the URL must be whole seconds"),
    ],
)
def test_an_unusable_url_is_a_configuration_error(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse(url)
