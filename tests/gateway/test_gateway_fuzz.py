"""A fuzz of the gateway's API driven by its own OpenAPI document (schemathesis): no request it can
generate gets a 500, and every answer is one the document declares. Bounded to a few examples per
operation so that it runs in well under a minute.

One of schemathesis' checks is left out: positive_data_acceptance expects every request that fits the
document's schemas to succeed, but some rules span parameters (``in`` or ``at``, not both; a
``message_id`` or ``all=true``) and OpenAPI cannot say so; those get a 400 that names the rule."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from gateway_support import free_port
from hypothesis import HealthCheck, settings
from support import Isolation, Management

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is missing")
gateway_openapi = pytest.importorskip("event.gateway.openapi", reason="the serve extra is missing")

schema = schemathesis.openapi.from_dict(gateway_openapi.openapi_document())

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def live_gateway(amqp_url: str, management: Management) -> Iterator[str]:
    """`event serve` for a namespace of this module's own, for every generated request."""
    iso = Isolation(management)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "event.cli", "--log-level", "warning", "serve", "--url", amqp_url,
         "--namespace", iso.namespace, "--exchange", iso.exchange, "--bind", f"127.0.0.1:{port}",
         "--management-url", management.base],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "event serve did not start within 30 s"
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
        iso.cleanup()
        assert b"Traceback" not in output, output.decode()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_never_answers_500_and_keeps_to_its_document(
    case: schemathesis.Case, live_gateway: str
) -> None:
    case.call_and_validate(
        base_url=live_gateway, timeout=30, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )
