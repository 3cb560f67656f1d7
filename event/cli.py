"""The ``event`` command: parses arguments, imports the user's pool, and calls the library."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence

import orjson

from event.config import redact_url, resolve_url
from event.errors import ConfigurationError, ConnectionFailed, EventError, PublishError
from event.pool import WorkerPool
from event.publisher import Publisher

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: the broker cannot be reached


def load_pool(path: str) -> WorkerPool:
    """Import ``package.module:attribute`` (uvicorn's convention) and return the WorkerPool it names."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"pool path {path!r} must look like 'package.module:pool'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: the app is usually in the current directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"cannot import module {module_name!r} for pool {path!r}: {exc}") from exc
    found: object = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as exc:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}") from exc
    if not isinstance(found, WorkerPool):
        raise ConfigurationError(f"{path!r} is a {type(found).__name__}, not a WorkerPool")
    return found


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def _worker(args: argparse.Namespace) -> int:
    pool = load_pool(args.pool)
    if args.grace is not None:
        pool.grace = args.grace
    await pool.run()
    return EXIT_OK


async def _publish(args: argparse.Namespace) -> int:
    try:
        payload = orjson.loads(args.json)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"payload {args.json!r} is not valid JSON: {exc}") from exc
    headers: dict[str, str] = {}
    for item in args.header or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"header {item!r} must look like KEY=VALUE")
        headers[key] = value
    async with Publisher(args.url, namespace=args.namespace, exchange=args.exchange) as publisher:
        await publisher.publish(args.routing_key, payload, headers=headers or None, mandatory=args.mandatory)
    print(f"published {args.routing_key} to exchange {args.exchange!r} at {redact_url(publisher.url)}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``event`` command."""
    parser = argparse.ArgumentParser(
        prog="event", description="Process events over RabbitMQ (Hutch-compatible)."
    )
    parser.add_argument(
        "--log-level", default=os.environ.get("EVENT_LOG_LEVEL", "info"), help="default: info"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run a WorkerPool until SIGTERM/SIGINT")
    worker.add_argument("pool", help="the pool to run, as package.module:attribute")
    worker.add_argument("--grace", type=float, help="seconds running handlers get to finish at shutdown")
    worker.set_defaults(run=_worker)

    publish = commands.add_parser("publish", help="publish one event and wait for the broker's confirm")
    publish.add_argument("routing_key")
    publish.add_argument("json", help="the payload, as JSON")
    publish.add_argument("--url", help="broker URL (default: $AMQP_URL, else the local broker)")
    publish.add_argument("--namespace", default="")
    publish.add_argument("--exchange", default="hutch")
    publish.add_argument("--header", action="append", metavar="KEY=VALUE")
    publish.add_argument("--mandatory", action="store_true", help="fail if no queue receives the event")
    publish.set_defaults(run=_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``event`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        resolve_url(getattr(args, "url", None))
        code: int = asyncio.run(args.run(args))
        return code
    except ConfigurationError as exc:
        print(f"event: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionFailed as exc:
        print(f"event: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (PublishError, EventError) as exc:
        print(f"event: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
