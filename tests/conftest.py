"""Fixtures shared by every test: the broker (real, never mocked) and per-test isolation."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trustme
from support import DEFAULT_URL, HOW_TO_GET_A_BROKER, Isolation, Management, broker_answers, management_ready
from tls_support import TlsTerminator

from event import loops
from event.errors import ConfigurationError

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
_LOOP = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--loop",
        choices=loops.LOOPS,
        default="auto",
        help="the event loop the async tests run on: auto (the default) is the CLI's own rule, uvloop when "
        "it is installed (event.loops), so that the suite tests what production runs",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_loops: run on asyncio's loop and on uvloop (when installed), whatever --loop says"
    )
    try:
        config.stash[_LOOP] = loops.resolve_loop(config.getoption("--loop"))
    except ConfigurationError as exc:
        raise pytest.UsageError(str(exc)) from exc


def pytest_report_header(config: pytest.Config) -> str:
    return f"event loop: {config.stash[_LOOP]} (--loop {config.getoption('--loop')})"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, LoopFactory]:
    """The loop each async test runs on (pytest-asyncio's hook): --loop's, or both for a both_loops test.

    With one factory the tests keep their names; a both_loops test is named ``test[asyncio]``,
    ``test[uvloop]``.
    """
    if item.get_closest_marker("both_loops") is not None:
        names = ["asyncio"] + (["uvloop"] if loops.resolve_loop("auto") == "uvloop" else [])
    else:
        names = [config.stash[_LOOP]]
    return {name: loops.loop_factory(name) for name in names}


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


# The TLS tests' certificates and terminator (tests/tls_support.py), for the pool's and the driver's.
@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("event-worker@example.com", common_name="event-worker")
    files = {
        "ca": tmp_path / "ca.pem",
        "server": tmp_path / "server.pem",
        "client_cert": tmp_path / "client.pem",
        "client_key": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return {name: str(path) for name, path in files.items()}


@pytest.fixture
async def terminator(amqp_url: str, certificates: dict[str, str]) -> AsyncIterator[TlsTerminator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certificates["ca"])
    context.load_cert_chain(certificates["server"])
    context.verify_mode = ssl.CERT_REQUIRED
    parts = urllib.parse.urlsplit(amqp_url)
    proxy = TlsTerminator((parts.hostname or "127.0.0.1", parts.port or 5672), context)
    await proxy.start()
    yield proxy
    await proxy.close()
