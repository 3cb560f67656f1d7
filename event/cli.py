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
from event.dead import DeadQueue
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


async def _dead_list(args: argparse.Namespace) -> int:
    async with DeadQueue(args.url, namespace=args.namespace, exchange=args.exchange) as dead:
        total = await dead.count()
        messages = await dead.list(limit=args.limit)
    if args.json:
        print(
            orjson.dumps(
                {"queue": dead.name, "total": total, "messages": [m.as_dict() for m in messages]}
            ).decode()
        )
        return EXIT_OK
    print(f"{dead.name}: {total} message(s){f', showing the first {len(messages)}' if messages else ''}")
    for m in messages:
        failed_at = m.failed_at.strftime("%Y-%m-%d %H:%M:%S") if m.failed_at else "-"
        print(f"- {m.message_id}  {m.routing_key}  queue={m.queue}  attempts={m.attempts}  at {failed_at}")
        print(f"    error: {m.error}")
        print(f"    body:  {m.preview}")
    return EXIT_OK


async def _dead_requeue(args: argparse.Namespace) -> int:
    async with DeadQueue(args.url, namespace=args.namespace, exchange=args.exchange) as dead:
        report = await dead.requeue(
            routing_key=args.routing_key, message_id=args.message_id, everything=args.all
        )
    print(f"requeued {len(report.requeued)} message(s) from {dead.name}")
    for message_id, reason in report.left:
        print(f"left {message_id} in the dead queue: {reason}", file=sys.stderr)
    return EXIT_OK if not report.left else EXIT_FAILURE


async def _dead_purge(args: argparse.Namespace) -> int:
    async with DeadQueue(args.url, namespace=args.namespace, exchange=args.exchange) as dead:
        if not args.yes:
            if not sys.stdin.isatty():
                raise ConfigurationError(f"purging {dead.name} deletes its messages for good: pass --yes")
            prompt = f"delete all {await dead.count()} message(s) of {dead.name}? [y/N] "
            answer = await asyncio.to_thread(input, prompt)
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing purged")
                return EXIT_OK
        purged = await dead.purge()
    print(f"purged {purged} message(s) from {dead.name}")
    return EXIT_OK


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else the local broker)")
    parser.add_argument("--namespace", default="", help="Hutch namespace of the queues (default: none)")
    parser.add_argument("--exchange", default="hutch", help="the topic exchange (default: hutch)")


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
    _broker_options(publish)
    publish.add_argument("--header", action="append", metavar="KEY=VALUE")
    publish.add_argument("--mandatory", action="store_true", help="fail if no queue receives the event")
    publish.set_defaults(run=_publish)

    dead = commands.add_parser("dead", help="look at, requeue or purge the dead queue")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    listing = dead_commands.add_parser("list", help="show dead messages (they stay in the queue)")
    _broker_options(listing)
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default: 20)")
    listing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    listing.set_defaults(run=_dead_list)
    requeue = dead_commands.add_parser("requeue", help="send dead messages back to the queue they failed in")
    _broker_options(requeue)
    requeue.add_argument("--routing-key", help="only messages whose routing key matches this topic pattern")
    requeue.add_argument("--message-id", help="only the message with this id")
    requeue.add_argument("--all", action="store_true", help="every message (when no other filter is given)")
    requeue.set_defaults(run=_dead_requeue)
    purge = dead_commands.add_parser("purge", help="delete every dead message")
    _broker_options(purge)
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(run=_dead_purge)
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
