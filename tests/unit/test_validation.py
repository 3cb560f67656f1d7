"""Bad configuration fails early, naming the setting and the value."""

from __future__ import annotations

from typing import Any

import pytest

from event import ConfigurationError, WorkerPool, wire
from event.config import redact_url, resolve_url

URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.mark.parametrize("key", ["app.send_email", "app.user.*", "#", "app.#.done", "a"])
def test_valid_binding_patterns(key: str) -> None:
    assert wire.validate_routing_key(key, pattern=True) == key


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("", "empty"),
        ("app..x", "empty word"),
        (".app", "empty word"),
        ("app.", "empty word"),
        ("app.user*", "whole word"),
        ("app.#x", "whole word"),
        ("app user", "white space"),
        ("a" * 256, "255 bytes"),
    ],
)
def test_invalid_binding_patterns_name_the_problem(key: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        wire.validate_routing_key(key, pattern=True)


def test_publish_routing_keys_take_no_wildcards() -> None:
    with pytest.raises(ConfigurationError, match="wildcard"):
        wire.validate_routing_key("app.*", pattern=False)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"concurrency": -1}, "concurrency must be at least 0"),
        ({"concurrency": 2.5}, "concurrency must be a whole number"),
        ({"grace": float("nan")}, "grace must be a finite number"),
        ({"grace": -1}, "grace must be at least 0"),
        ({"exchange": ""}, "exchange must be a non-empty string"),
        ({"exchange": "amq.topic"}, "reserved"),
        ({"url": "http://localhost"}, "amqp://"),
        ({"dead_queue_max_length": 0}, "dead_queue_max_length"),
    ],
)
def test_pool_settings_out_of_range(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        WorkerPool(**{"url": URL, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"prefetch": 0}, "prefetch of consumer .*handler must be at least 1"),
        ({"prefetch": 70000}, "at most 65535"),
        ({"max_concurrency": -1}, "max_concurrency"),
        ({"timeout": 0}, "timeout"),
        ({"arguments": {"x-queue-type": "stream"}}, "x-queue-type"),
        ({"queue": "has space"}, "white space"),
    ],
)
def test_consumer_options_out_of_range(kwargs: dict[str, Any], words: str) -> None:
    pool = WorkerPool(URL, namespace="myapp")
    with pytest.raises(ConfigurationError, match=words):

        @pool.consumer("app.x", **kwargs)
        async def handler(ctx: object, msg: object) -> None: ...


def test_a_misspelt_consumer_option_is_refused_at_once_naming_it_and_the_options() -> None:
    # The options travel as **options (one TypedDict for mypy): at run time a name outside it must
    # still fail as a wrong keyword did, when pool.consumer(...) is called, not silently later.
    pool = WorkerPool(URL, namespace="myapp")
    options: dict[str, Any] = {"prefech": 30}
    with pytest.raises(TypeError, match=r"'prefech'.*max_concurrency.*prefetch"):
        pool.consumer("app.x", **options)
    with pytest.raises(TypeError, match="'prefech'"):
        pool.command("app.x", argv=["true"], **options)
    assert pool.consumers == ()


def test_consumer_needs_a_routing_key() -> None:
    pool = WorkerPool(URL, namespace="myapp")
    with pytest.raises(ConfigurationError, match="at least one routing key"):

        @pool.consumer()
        async def handler(ctx: object, msg: object) -> None: ...


def test_two_consumers_on_one_queue_are_refused_naming_both() -> None:
    pool = WorkerPool(URL, namespace="myapp")

    @pool.consumer("app.a", queue="work")
    async def first(ctx: object, msg: object) -> None: ...

    with pytest.raises(ConfigurationError, match=r"'myapp:work' already belongs to consumer .*first.*second"):

        @pool.consumer("app.b", queue="work")
        async def second(ctx: object, msg: object) -> None: ...


def test_consumer_queue_cannot_take_the_dead_or_a_delay_queue_name() -> None:
    pool = WorkerPool(URL, namespace="myapp")
    for name in ("hutch_dead_queue", "hutch_delay_queue_5s"):
        with pytest.raises(ConfigurationError, match="reserved"):
            pool.consumer("app.a", queue=name)(lambda ctx, msg: None)


def test_middleware_must_be_async() -> None:
    pool = WorkerPool(URL)
    with pytest.raises(ConfigurationError, match="async function"):
        pool.middleware(lambda ctx, msg, call_next: None)  # type: ignore[arg-type,return-value]


def test_queue_name_follows_hutch_for_functions_and_explicit_names() -> None:
    pool = WorkerPool(URL, namespace="MyApp")

    @pool.consumer("app.a")
    async def sendEmail(ctx: object, msg: object) -> None: ...

    @pool.consumer("app.b", queue="billing")
    async def other(ctx: object, msg: object) -> None: ...

    assert [c.queue for c in pool.consumers] == ["myapp:send_email", "myapp:billing"]
    assert pool.consumers[0].bindings == ("app.a", "myapp:send_email")


def test_redact_url_hides_the_password_only() -> None:
    assert redact_url("amqp://user:s3cret@host:5672/vh") == "amqp://user:***@host:5672/vh"
    assert redact_url("amqp://host/") == "amqp://host/"
    assert "s3cret" not in repr(WorkerPool("amqp://user:s3cret@host:5672/"))


def test_url_defaults_to_amqp_url_then_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://a:b@elsewhere:5672/")
    assert resolve_url(None) == "amqp://a:b@elsewhere:5672/"
    monkeypatch.delenv("AMQP_URL")
    assert resolve_url(None) == "amqp://guest:guest@127.0.0.1:5672/"
