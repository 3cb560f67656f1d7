"""Fixtures shared by every test: the broker (real, never mocked) and per-test isolation."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from support import DEFAULT_URL, HOW_TO_GET_A_BROKER, Isolation, Management, broker_answers, management_ready


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Before any test runs: when tests that look through the management API are selected, make it answer.

    It is enabled if the broker is this machine's own and we may (see support.management_ready); else the
    run stops at once with the one command to run, rather than erroring in every such test.
    """
    if not any("management" in getattr(item, "fixturenames", ()) for item in items):
        return
    url = os.environ.get("AMQP_URL") or DEFAULT_URL
    if not broker_answers(url):
        return  # no broker at all: the amqp_url fixture says what to do (or starts a testcontainer)
    problem = management_ready(url)
    if problem is not None:
        pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """The broker every integration test talks to: $AMQP_URL, the local one, or a testcontainer."""
    url = os.environ.get("AMQP_URL") or DEFAULT_URL
    if broker_answers(url):
        yield url
        return
    if "AMQP_URL" not in os.environ and _docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(5672)
            os.environ["RABBITMQ_MANAGEMENT_URL"] = f"http://{host}:{container.get_exposed_port(15672)}"
            yield f"amqp://guest:guest@{host}:{port}/"
        return
    pytest.fail(f"no RabbitMQ answers at {url}. {HOW_TO_GET_A_BROKER}", pytrace=False)


@pytest.fixture(scope="session")
def management(amqp_url: str) -> Management:
    """The broker's management API, used to look at what the code under test declared."""
    api = Management.for_amqp_url(amqp_url)
    if not api.answers():
        pytest.fail(
            f"RabbitMQ's management API does not answer at {api.base}: enable it with "
            "`rabbitmq-plugins enable rabbitmq_management` (or set RABBITMQ_MANAGEMENT_URL)",
            pytrace=False,
        )
    return api


@pytest.fixture
def iso(management: Management) -> Iterator[Isolation]:
    """A namespace and exchange of this test's own, deleted afterwards with every queue under it."""
    isolation = Isolation(management)
    yield isolation
    isolation.cleanup()


@pytest.fixture
def pool_kwargs(amqp_url: str, iso: Isolation) -> dict[str, Any]:
    """Keyword arguments that point a WorkerPool or Publisher at this test's isolation."""
    return {"url": amqp_url, "namespace": iso.namespace, "exchange": iso.exchange}


@pytest.fixture
async def probe(amqp_url: str) -> Any:
    """A raw connection for looking at queues and publishing as a foreign client."""
    from support import Probe

    opened = Probe(amqp_url)
    yield opened
    await opened.close()
