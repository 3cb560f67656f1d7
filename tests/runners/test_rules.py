"""The runners' pure rules: what an HTTP answer means, Retry-After, a body's args, names and checks."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event import ConfigurationError, Dead, Retry, wire
from event.config import check_name
from event.runners.command import check_command, extra_args, tail
from event.runners.http import AppFailed, HttpProxy, check_url, judge, retry_after_seconds

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
WHERE = "POST http://app/jobs"


@given(st.integers(200, 299))
def test_every_2xx_acks(status: int) -> None:
    assert judge(status, None, b"", WHERE, NOW) is None


@given(st.sampled_from([429, 503]), st.integers(0, 10**6))
def test_busy_with_retry_after_retries_after_exactly_that_long(status: int, seconds: int) -> None:
    outcome = judge(status, str(seconds), b"busy", WHERE, NOW)
    assert isinstance(outcome, Retry)
    assert outcome.delay == seconds
    assert f"answered {status}" in str(outcome)


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert retry_after_seconds(when, NOW) == 90
    assert retry_after_seconds(format_datetime(NOW - timedelta(hours=1), usegmt=True), NOW) == 0
    for unusable in (None, "", "soon", "-5", "1.5"):
        assert retry_after_seconds(unusable, NOW) is None


@given(st.integers(400, 499).filter(lambda s: s != 429), st.binary(max_size=2000))
def test_other_4xx_is_dead_at_once_with_the_status_and_the_start_of_the_body(
    status: int, body: bytes
) -> None:
    outcome = judge(status, "5", body, WHERE, NOW)
    assert isinstance(outcome, Dead)
    assert f"{WHERE} answered {status}" in outcome.reason
    assert repr(body[:20].decode(errors="replace"))[1:-1][:10] in outcome.reason
    assert len(wire.format_error(outcome).encode()) <= wire.ERROR_HEADER_LIMIT


@given(st.one_of(st.integers(500, 599), st.integers(300, 399), st.just(429)))
def test_5xx_3xx_and_a_bare_429_are_ordinary_failures(status: int) -> None:
    outcome = judge(status, None if status == 429 else "bogus", b"oops", WHERE, NOW)
    assert isinstance(outcome, AppFailed) and not isinstance(outcome, Retry | Dead)
    assert f"answered {status}: 'oops'" in str(outcome)


@pytest.mark.parametrize("url", ["ftp://app/x", "app:8000/x", "http:///x", "http://app/{queue}", "/jobs"])
def test_a_proxy_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="proxy URL"):
        check_url(url)


def test_the_routing_key_is_filled_into_the_url() -> None:
    proxy = HttpProxy("http://user:secret@app:8000/jobs/{routing_key}?x=1")
    assert proxy.url_for("app.resize") == "http://user:secret@app:8000/jobs/app.resize?x=1"
    assert "secret" not in repr(proxy) and "secret" not in proxy.handler.__qualname__


def test_a_header_that_http_cannot_carry_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="header"):
        HttpProxy("http://app/", headers={"X-Bad": "a\r\nInjected: yes"})


@given(st.lists(st.text(max_size=20), max_size=8), st.sampled_from(["args", "Args"]))
def test_string_args_are_passed_on_as_given(args: list[str], field: str) -> None:
    assert extra_args({field: args, "other": 1}) == args


@given(st.lists(st.one_of(st.integers(), st.none(), st.floats(), st.lists(st.text(max_size=3))), min_size=1))
def test_args_that_are_not_strings_send_the_message_to_the_dead_queue_named(args: list[Any]) -> None:
    with pytest.raises(Dead, match="item 0"):
        extra_args({"args": [*args]})


@pytest.mark.parametrize("body", [None, 3, "text", [1, 2], {"no_args": True}])
def test_a_body_without_args_adds_none(body: Any) -> None:
    assert extra_args(body) == []


def test_args_must_be_a_list() -> None:
    with pytest.raises(Dead, match="must be a list of strings, not str"):
        extra_args({"args": "; rm -rf /"})


def test_a_command_must_be_an_executable_file(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(ConfigurationError, match="not an executable file"):
        check_command([str(script)])
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert check_command([str(script), "a"]) == [str(script), "a"]
    assert os.path.isabs(check_command(["sh", "-c", "true"])[0])  # found on $PATH
    for bad in (["no-such-program-here"], [str(tmp_path)], [], "sh -c true"):
        with pytest.raises(ConfigurationError):
            check_command(bad)  # type: ignore[arg-type]


@given(st.binary(max_size=300), st.integers(0, 100))
def test_tail_keeps_the_last_bytes(data: bytes, limit: int) -> None:
    text = tail(data, limit)
    assert text.endswith(data[-limit:].decode(errors="replace") if limit else "")
    assert text.startswith("...") == (len(data) > limit)


@given(
    st.lists(
        st.one_of(st.sampled_from(["*", "#"]), st.text("abcxyz_-019", min_size=1, max_size=8)),
        min_size=1,
        max_size=5,
    )
)
def test_a_runner_queue_name_is_a_usable_name_free_of_wildcards(words: list[str]) -> None:
    key = ".".join(words)
    name = wire.runner_queue_name(key)
    assert "*" not in name and "#" not in name
    check_name("queue", wire.queue_name("ns", name))
    if "*" not in key and "#" not in key:
        assert name == key
