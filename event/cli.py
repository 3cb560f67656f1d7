"""The ``event`` command: parses arguments, imports the user's pool, and calls the library.

Exit codes: 0 success, 1 a command failed (a publish, a requeue that left messages, a topology
mismatch), 2 usage or configuration error, 69 the broker (or its management API) is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import math
import os
import sys
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from event import asyncapi, cron, logs, loops, topology, wire, workers_file
from event.bench import DEFAULT_WINDOW, ROUNDS, run_bench
from event.config import check_count, check_seconds, redact_url, resolve_url
from event.connect import close_quietly, connect
from event.dead import DeadQueue
from event.drain import drain_seconds
from event.endpoint import serve_endpoint
from event.errors import ConfigurationError, ConnectionFailed, EventError
from event.management import ManagementApi, configured_base
from event.metrics import exposition
from event.pool import WorkerPool
from event.processes import Supervisor, free_ports, process_count, worker_argv
from event.publisher import Publisher, check_priority, delay_seconds, seconds_until
from event.schedule_unbind import unbind_schedule

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell tool that a closed pipe stopped exits with

MANAGEMENT_URL_HELP = (
    "the management API (default: $EVENT_MANAGEMENT_URL, else $RABBITMQ_MANAGEMENT_URL, "
    "else http://<broker host>:15672)"
)


def load_pool(path: str) -> WorkerPool:
    """Import ``package.module:attribute`` (uvicorn's convention) and return the WorkerPool it names."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"pool path {path!r} must look like 'package.module:pool'")
    found: object = _import(module_name, f"for pool {path!r}")
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as exc:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}") from exc
    if not isinstance(found, WorkerPool):
        raise ConfigurationError(f"{path!r} is a {type(found).__name__}, not a WorkerPool")
    return found


def _import(module_name: str, purpose: str) -> Any:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: the app is usually in the current directory
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"cannot import module {module_name!r} {purpose}: {exc}") from exc


# --- worker ------------------------------------------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> int:
    if args.config is not None:
        if args.pool is not None or args.processes != 1:
            raise ConfigurationError("--config runs the workers of its file: give no pool, nor --processes")
        return await _run_runners(workers_file.load(args.config), args)
    if args.pool is None:
        raise ConfigurationError("give the pool to run (package.module:pool) or --config FILE")
    pool = load_pool(args.pool)  # in the supervisor too: a bad path fails once, not in every child
    if args.metrics_port is not None:
        check_count("--metrics-port", args.metrics_port, minimum=0, maximum=65535)
    if args.processes != 1:
        return await _supervise(args)
    return await _run_pool(pool, args)


async def _run_pool(pool: WorkerPool, args: argparse.Namespace) -> int:
    if args.metrics_port is not None:
        check_count("--metrics-port", args.metrics_port, minimum=0, maximum=65535)
    if args.grace is not None:
        pool.grace = check_seconds("--grace", args.grace)
    server = None
    if args.metrics_port is not None:

        async def metrics() -> bytes:
            return exposition(pool.registry)

        async def ready() -> bool:
            return pool.ready

        server = await _listening(
            serve_endpoint(
                args.metrics_host, args.metrics_port, metrics=metrics, ready=ready, paused=lambda: pool.paused
            ),
            args.metrics_host,
            args.metrics_port,
        )
    try:
        await pool.run()
    finally:
        if server is not None:
            server.close()
    return EXIT_OK


async def _listening(starting: Awaitable[asyncio.Server], host: str, port: int) -> asyncio.Server:
    """The metrics server ``starting`` opens, or a configuration error naming the port it cannot have."""
    try:
        return await starting
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port} (--metrics-port): {exc.strerror or exc}; "
            f"another process may be listening there: pick another port, or 0 for any free one"
        ) from None


async def _supervise(args: argparse.Namespace) -> int:
    count = process_count(args.processes)
    ports = free_ports(count) if args.metrics_port is not None else []
    argv = worker_argv(args.pool, args.grace, args.log_level, args.log_format)
    supervisor = Supervisor(argv, count, metrics_ports=ports)
    server = None
    if args.metrics_port is not None:
        server = await _listening(
            serve_endpoint(
                args.metrics_host, args.metrics_port, metrics=supervisor.metrics, ready=supervisor.ready
            ),
            args.metrics_host,
            args.metrics_port,
        )
    try:
        return await supervisor.run()
    finally:
        if server is not None:
            server.close()


# --- proxy and exec: runners (event.runners) ----------------------------------------------------------------


async def _run_runners(runners: workers_file.Runners, args: argparse.Namespace) -> int:
    try:
        return await _run_pool(runners.pool, args)
    finally:
        await runners.close()


def _runners_pool(args: argparse.Namespace) -> workers_file.Runners:
    return workers_file.hooked_pool(
        args.on_dead, url=args.url, namespace=args.namespace, exchange=args.exchange,
        concurrency=check_count("--concurrency", args.concurrency),
    )  # fmt: skip


def _consumer_options(args: argparse.Namespace) -> dict[str, Any]:
    # Acks go out for the finished prefix of deliveries: a prefetch well above the concurrency keeps
    # every slot busy while one slow request holds the prefix back.
    prefetch = args.prefetch if args.prefetch is not None else min(65535, max(50, 4 * args.concurrency))
    options = {"queue": args.queue, "prefetch": prefetch, "retries": args.retries}
    return {k: v for k, v in options.items() if v is not None} | (
        {"timeout": args.timeout} if args.timeout is not None else {}
    )


async def _proxy(args: argparse.Namespace) -> int:
    headers: dict[str, str] = {}
    for item in args.header or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ConfigurationError(f"--header {item!r} must look like 'Name: value'")
        headers[name.strip()] = value.strip()
    runners = _runners_pool(args)
    proxy = runners.pool.proxy(*args.routing_keys, to=args.to, headers=headers, **_consumer_options(args))
    runners.closers.insert(0, proxy.close)
    return await _run_runners(runners, args)


async def _exec(args: argparse.Namespace) -> int:
    words = list(args.words)
    if "--" not in words:
        raise ConfigurationError("give the command after --: event exec ROUTING_KEY... -- COMMAND [ARG...]")
    split = words.index("--")
    before, command = words[:split], words[split + 1 :]
    args = _exec_keys_parser().parse_args(before, namespace=args)  # options after keys
    if not args.routing_keys or not command:
        raise ConfigurationError("event exec needs a routing key before -- and a command after it")
    runners = _runners_pool(args)
    runners.pool.command(*args.routing_keys, argv=command, **_consumer_options(args))
    return await _run_runners(runners, args)


# --- publish -----------------------------------------------------------------------------------------------


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
    if args.in_ is not None and args.at is not None:
        raise ConfigurationError("give --in or --at, not both")
    when = None
    if args.at is not None:
        try:
            when = datetime.fromisoformat(args.at)
        except ValueError as exc:
            raise ConfigurationError(f"--at {args.at!r} is not an ISO 8601 time: {exc}") from exc
    # Everything the broker need not judge is checked before connecting: a mistyped command must
    # not declare the delay queues of a namespace it was never meant for.
    wire.validate_routing_key(args.routing_key, pattern=False)
    if args.in_ is not None:
        delay_seconds(args.in_)
    if when is not None:
        seconds_until(when, 0.0)
    if args.priority is not None:
        check_priority(args.priority)
    async with Publisher(args.url, namespace=args.namespace, exchange=args.exchange) as publisher:
        extra: dict[str, Any] = {"headers": headers or None, "priority": args.priority}
        if args.in_ is not None:
            await publisher.publish_in(args.in_, args.routing_key, payload, **extra)
        elif when is not None:
            await publisher.publish_at(when, args.routing_key, payload, **extra)
        else:
            await publisher.publish(args.routing_key, payload, mandatory=args.mandatory, **extra)
    print(f"published {args.routing_key} to exchange {args.exchange!r} at {redact_url(publisher.url)}")
    return EXIT_OK


# --- cron --------------------------------------------------------------------------------------------------


async def _cron_list(args: argparse.Namespace) -> int:
    check_count("--count", args.count, minimum=1)
    pool = load_pool(args.pool)
    now = datetime.now(UTC)
    rows = [
        {
            "name": schedule.name,
            "expression": schedule.expression,
            "tz": schedule.tz.key,
            "routing_key": schedule.routing_key,
            "catch_up": schedule.catch_up,
            "next": [tick.isoformat() for tick in cron.next_ticks(schedule, now, args.count)],
        }
        for schedule in pool.schedules
    ]
    if args.json:
        print(orjson.dumps(rows).decode())
        return EXIT_OK
    if not rows:
        print(f"{args.pool} has no cron schedules")
    for row in rows:
        print(f"{row['name']}: {row['expression']} ({row['tz']}) publishes {row['routing_key']}")
        for tick in row["next"]:
            print(f"    {tick}")
    return EXIT_OK


# --- asyncapi ----------------------------------------------------------------------------------------------


async def _asyncapi(args: argparse.Namespace) -> int:
    module_name = args.target.partition(":")[0]
    pool = load_pool(args.target) if ":" in args.target else None
    module = _import(module_name, f"for {args.target!r}")
    doc = asyncapi.document(pool, asyncapi.contracts_in(module), title=args.title, version=args.version)
    if not doc["operations"]:
        raise ConfigurationError(f"{args.target!r} has no consumers, schedules or contracts to describe")
    if args.yaml:
        try:
            yaml = importlib.import_module("yaml")
        except ImportError as exc:
            raise ConfigurationError("--yaml needs PyYAML: pip install pyyaml") from exc
        print(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), end="")
    else:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


# --- topology and queues -----------------------------------------------------------------------------------


async def _topology(args: argparse.Namespace) -> int:
    pool = load_pool(args.pool)
    if args.unbind_schedule:
        return await _unbind_schedule(pool, args)
    plan = pool.topology()
    if args.json and not args.check:
        print(orjson.dumps(plan.as_dict()).decode())
        return EXIT_OK
    if not args.check:
        for exchange in plan.exchanges:
            print(f"exchange {exchange.name} ({exchange.kind}, durable)")
        for queue in plan.queues:
            arguments = f" {orjson.dumps(queue.arguments).decode()}" if queue.arguments else ""
            print(f"{queue.role}: {queue.name}{arguments}")
            for binding in queue.bindings:
                arguments = f" {orjson.dumps(binding.arguments).decode()}" if binding.arguments else ""
                print(f"    bound to {binding.source} with {binding.key}{arguments}")
        return EXIT_OK
    api = ManagementApi.for_url(pool.url, configured_base(args.management_url, os.environ))
    problems = await topology.differences(plan, api)
    if args.json:
        print(orjson.dumps({"matches": not problems, "differences": problems}).decode())
    elif problems:
        print(f"the broker differs from {args.pool} in {len(problems)} place(s):")
        for problem in problems:
            print(f"- {problem}")
    else:
        print(f"the broker has everything {args.pool} declares, as it declares it")
    return EXIT_FAILURE if problems else EXIT_OK


async def _unbind_schedule(pool: WorkerPool, args: argparse.Namespace) -> int:
    if pool.declare_delay_queues:
        raise ConfigurationError(
            f"{args.pool} has declare_delay_queues=True: it would bind its delay queues again when it "
            f"starts; deploy it without that option first"
        )
    api = ManagementApi.for_url(pool.url, configured_base(args.management_url, os.environ))
    connection = await connect(pool.url, name="event topology --unbind-schedule")
    try:
        done = await unbind_schedule(connection, api, pool.namespace, pool.exchange, wait=not args.no_wait)
    finally:
        await close_quietly(connection)
    return EXIT_FAILURE if done.waiting else EXIT_OK


async def _queues(args: argparse.Namespace) -> int:
    api = ManagementApi.for_url(resolve_url(args.url), configured_base(args.management_url, os.environ))
    prefix = f"{args.namespace}:" if args.namespace else ""
    rows = [queue_row(queue) for queue in await api.queues() if queue.get("name", "").startswith(prefix)]
    if args.json:
        print(orjson.dumps(rows).decode())  # an infinite drain_seconds is null
        return EXIT_OK
    width = max([len(r["name"]) for r in rows] + [5])
    print(
        f"{'queue':<{width}}  {'ready':>8}  {'unacked':>8}  {'consumers':>9}  {'in/s':>8}  {'out/s':>8}  "
        f"{'ack/s':>8}  {'drain':>8}"
    )
    for r in rows:
        print(
            f"{r['name']:<{width}}  {r['messages']:>8}  {r['unacked']:>8}  {r['consumers']:>9}  "
            f"{r['publish_rate']:>8.1f}  {r['deliver_rate']:>8.1f}  {r['ack_rate']:>8.1f}  "
            f"{format_drain(r['drain_seconds']):>8}"
        )
    return EXIT_OK


def queue_row(queue: dict[str, Any]) -> dict[str, Any]:
    """One line of ``event queues`` from the management API's view of a queue.

    Its drain time is ready ÷ the broker's ack rate of the queue (all its consumers, averaged by the
    management plugin over its last few seconds): 0 when nothing is ready, infinite when nothing is acked.
    """
    stats = queue.get("message_stats") or {}
    ready = queue.get("messages_ready", 0) or 0
    ack_rate = (stats.get("ack_details") or {}).get("rate", 0.0) or 0.0
    return {
        "name": queue.get("name", ""),
        "messages": queue.get("messages", 0),
        "unacked": queue.get("messages_unacknowledged", 0),
        "consumers": queue.get("consumers", 0),
        "publish_rate": (stats.get("publish_details") or {}).get("rate", 0.0),
        "deliver_rate": (stats.get("deliver_get_details") or {}).get("rate", 0.0),
        "ready": ready,
        "ack_rate": ack_rate,
        "drain_seconds": drain_seconds(ready, ack_rate),
    }


def format_drain(seconds: float) -> str:
    """A drain time for people: ``0s``, ``42s``, ``7m05s``, ``3h02m``, ``inf``."""
    if math.isinf(seconds):
        return "inf"
    whole = math.ceil(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


# --- serve -------------------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    try:
        from event import gateway  # an optional extra: the rest of the command works without it
    except ImportError as exc:
        raise ConfigurationError(
            f"event serve needs starlette and uvicorn: pip install 'rabbit-event[serve]' ({exc})"
        ) from exc
    host, port = gateway.parse_bind(args.bind)
    token = gateway.read_token(args.token_file) if args.token_file else None
    from event.gateway.pull import parse_pull

    config = gateway.GatewayConfig.create(
        args.url,
        namespace=args.namespace,
        exchange=args.exchange,
        management_url=args.management_url,
        pull=tuple(parse_pull(spec) for spec in args.pull),
    )
    await gateway.serve(config, host, port, token=token)
    return EXIT_OK


# --- bench -------------------------------------------------------------------------------------------------


async def _bench(args: argparse.Namespace) -> int:
    check_count("--jobs", args.jobs, minimum=1)
    check_count("--routing-keys", args.routing_keys, minimum=1)
    check_count("--window", args.window, minimum=1)
    check_count("--body-size", args.body_size)
    check_count("--rounds", args.rounds, minimum=1)
    progress = _no_progress if args.json or not sys.stderr.isatty() else _progress_bar
    url = resolve_url(args.url)
    logging.getLogger("pika").setLevel(logging.WARNING)  # the run's admin connection is not news
    # In a thread: the run waits on child processes and a blocking admin connection.
    r = await asyncio.to_thread(
        run_bench,
        url,
        jobs=args.jobs,
        routing_keys=args.routing_keys,
        window=args.window,
        loop=args.loop,
        progress=progress,
        go_maxprocs=args.go_maxprocs,
        latency=args.latency,
        latency_seconds=args.latency_seconds,
        body_size=args.body_size,
        rounds=args.rounds,
    )
    if args.json:
        print(orjson.dumps(r.as_dict()).decode())
        return EXIT_OK
    print(f"{r.jobs} jobs over {r.routing_keys} routing keys, each system in its own process, loop: {r.loop}")
    rows = [
        ("consume", "event", r.consume_event_per_s, r.consume_event_cpu_us, None),
        ("", "pika", r.consume_pika_per_s, r.consume_pika_cpu_us, r.consume_ratio_pika),
        ("", "aio-pika", r.consume_aio_pika_per_s, r.consume_aio_pika_cpu_us, r.consume_ratio_aio_pika),
        ("", "go", r.consume_go_per_s, r.consume_go_cpu_us, r.consume_ratio_go),
        ("publish", "event", r.publish_event_per_s, r.publish_event_cpu_us, None),
        ("", "pika", r.publish_pika_per_s, r.publish_pika_cpu_us, r.publish_ratio_pika),
        ("", "aio-pika", r.publish_aio_pika_per_s, r.publish_aio_pika_cpu_us, r.publish_ratio_aio_pika),
        ("", "go", r.publish_go_per_s, r.publish_go_cpu_us, r.publish_ratio_go),
    ]
    if r.body_size:
        print(f"  bodies of {r.body_size} bytes, in {r.rounds} turns of about {r.jobs // r.rounds} each")
    mib = f" {'MiB/s':>9}" if r.body_size else ""
    print(f"  {'':<8} {'':<9} {'msg/s':>10}{mib} {'CPU µs/msg':>11}   event's ratio")
    for phase, system, rate, cpu_us, ratio in rows:
        if rate is None or cpu_us is None:
            continue  # the Go anchor, when Go is not installed (said below)
        tail = f"   {ratio:.2f}" if ratio is not None else ""
        volume = f" {rate * r.body_size / 2**20:9.1f}" if r.body_size else ""
        print(f"  {phase:<8} {system:<9} {rate:10.0f}{volume} {cpu_us:11.1f}{tail}")
    print(f"  (publish: with confirms, {r.window} in flight; ratio: event's rate over the anchor's)")
    print(f"  go: {r.go}")
    if r.hold_rss_mb is not None:
        print(f"  RSS      {r.hold_rss_mb:.0f} MB in a worker holding {r.held} messages in flight")
    print(f"           {r.peak_rss_mb:.0f} MB peak of the event consumer")
    if r.latency:
        print("  latency, publish → handler (ms), one contestant at a time on a paced stream:")
        print(f"  {'msg/s':>8} {'share':>6} {'system':<7} {'p50':>8} {'p99':>8} {'p99.9':>8}")
        for row in r.latency:
            behind = "" if row["count"] == row["sent"] else f"  fell behind: {row['count']} of {row['sent']}"
            print(
                f"  {row['rate']:8d} {row['share']:6.0%} {row['system']:<7} "
                f"{row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['p999_ms']:8.2f}{behind}"
            )
    return EXIT_OK


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


def _progress_bar(phase: str, done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(f"\r{phase:<22} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr)


# --- dead queue --------------------------------------------------------------------------------------------


async def _dead_list(args: argparse.Namespace) -> int:
    async with DeadQueue(args.url, namespace=args.namespace, exchange=args.exchange) as dead:
        total = await dead.count()
        messages = await dead.list(limit=check_count("--limit", args.limit, minimum=1))
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


# --- the parser --------------------------------------------------------------------------------------------


def _broker_options(parser: argparse.ArgumentParser, *, names: bool = True) -> None:
    parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else the local broker)")
    if names:
        parser.add_argument("--namespace", default="", help="Hutch namespace of the queues (default: none)")
        parser.add_argument("--exchange", default="hutch", help="the topic exchange (default: hutch)")


def _runner_options(parser: argparse.ArgumentParser) -> None:
    _broker_options(parser)
    parser.add_argument("--queue", help="the queue's name (default: the first routing key)")
    parser.add_argument("--concurrency", type=int, default=100, help="requests or commands at once (100)")
    parser.add_argument(
        "--prefetch", type=int, help="unacked messages the broker sends (default: 4 x concurrency)"
    )
    parser.add_argument("--timeout", type=float, help="seconds per message (default: 30 proxy, 60 exec)")
    parser.add_argument("--retries", type=int, help="retries before the dead queue (default: 3)")
    parser.add_argument(
        "--on-dead", metavar="COMMAND|URL", help="told of each message sent to the dead queue"
    )
    parser.add_argument("--grace", type=float, help="seconds running messages get to finish at shutdown")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address for --metrics-port")


def _exec_keys_parser() -> argparse.ArgumentParser:
    # event exec's words before "--": its routing keys, with any options among them.
    parser = argparse.ArgumentParser(prog="event exec", argument_default=argparse.SUPPRESS)
    _runner_options(parser)
    parser.add_argument("routing_keys", nargs="+", metavar="ROUTING_KEY")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``event`` command."""
    parser = argparse.ArgumentParser(
        prog="event", description="Process events over RabbitMQ (Hutch-compatible)."
    )
    parser.add_argument(
        "--log-level", default=os.environ.get("EVENT_LOG_LEVEL", "info"), help="default: info"
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=os.environ.get("EVENT_LOG_FORMAT", "text")
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run a WorkerPool until SIGTERM/SIGINT")
    worker.add_argument("pool", nargs="?", help="the pool to run, as package.module:attribute")
    worker.add_argument("--config", metavar="FILE", help="run the proxies and commands of this TOML file")
    worker.add_argument("--grace", type=float, help="seconds running handlers get to finish at shutdown")
    worker.add_argument(
        "--processes", type=int, default=1, help="worker processes (0: one per core; default: 1)"
    )
    worker.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port")
    worker.add_argument(
        "--metrics-host", default="0.0.0.0", help="address for --metrics-port (default: 0.0.0.0)"
    )
    worker.set_defaults(run=_worker)

    proxy = commands.add_parser("proxy", help="POST each message to an HTTP app (see docs/runners.md)")
    proxy.add_argument("routing_keys", nargs="+", metavar="ROUTING_KEY")
    proxy.add_argument("--to", required=True, metavar="URL", help="{routing_key} in it is filled in")
    proxy.add_argument("--header", action="append", metavar="'NAME: VALUE'", help="added to every request")
    _runner_options(proxy)
    proxy.set_defaults(run=_proxy)
    exec_cmd = commands.add_parser(
        "exec", help="run a command per message: event exec ROUTING_KEY... [OPTION...] -- COMMAND [ARG...]"
    )
    _runner_options(exec_cmd)
    exec_cmd.add_argument("words", nargs=argparse.REMAINDER, metavar="ROUTING_KEY... -- COMMAND [ARG...]")
    exec_cmd.set_defaults(run=_exec)

    publish = commands.add_parser("publish", help="publish one event and wait for the broker's confirm")
    publish.add_argument("routing_key")
    publish.add_argument("json", help="the payload, as JSON")
    _broker_options(publish)
    publish.add_argument("--header", action="append", metavar="KEY=VALUE")
    publish.add_argument("--in", dest="in_", type=float, metavar="SECONDS", help="deliver after this delay")
    publish.add_argument("--at", metavar="ISO8601", help="deliver at this time (with a time zone)")
    publish.add_argument("--mandatory", action="store_true", help="fail if no queue receives the event")
    publish.add_argument("--priority", type=int, metavar="0-255", help="the message's priority property")
    publish.set_defaults(run=_publish)

    cron_cmd = commands.add_parser("cron", help="the cron schedules of a pool")
    cron_commands = cron_cmd.add_subparsers(dest="cron_command", required=True, metavar="COMMAND")
    cron_list = cron_commands.add_parser("list", help="every schedule with its next run times")
    cron_list.add_argument("pool", help="the pool, as package.module:attribute")
    cron_list.add_argument("--count", type=int, default=3, help="run times per schedule (default: 3)")
    cron_list.add_argument("--json", action="store_true", help="print one JSON array")
    cron_list.set_defaults(run=_cron_list)

    asyncapi_cmd = commands.add_parser(
        "asyncapi", help="the AsyncAPI 3.0 document of a pool and of the contracts its module holds"
    )
    asyncapi_cmd.add_argument("target", help="package.module:pool, or package.module for its contracts only")
    output = asyncapi_cmd.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON (the default)")
    output.add_argument("--yaml", action="store_true", help="YAML (needs PyYAML)")
    asyncapi_cmd.add_argument("--title", default="", help="info.title (default: '<namespace> events')")
    asyncapi_cmd.add_argument("--version", default="1.0.0", help="info.version (default: 1.0.0)")
    asyncapi_cmd.set_defaults(run=_asyncapi)

    topology_cmd = commands.add_parser(
        "topology", help="what a pool declares; --check compares with the broker"
    )
    topology_cmd.add_argument("pool", help="the pool, as package.module:attribute")
    topology_cmd.add_argument("--check", action="store_true", help="compare with the broker (management API)")
    topology_cmd.add_argument("--management-url", help=MANAGEMENT_URL_HELP)
    topology_cmd.add_argument("--json", action="store_true")
    topology_cmd.add_argument(
        "--unbind-schedule",
        action="store_true",
        help="unbind the pool's namespace's hutch-schedule delay queues (as event did before issue 30) and "
        "delete each once its waiting messages have gone on (docs/hutch.md)",
    )
    topology_cmd.add_argument(
        "--no-wait", action="store_true", help="with --unbind-schedule: do not wait for non-empty queues"
    )
    topology_cmd.set_defaults(run=_topology)

    queues = commands.add_parser(
        "queues", help="depth, consumers, rates and drain time (ready / ack rate) of a namespace's queues"
    )
    _broker_options(queues, names=False)
    queues.add_argument("--namespace", default="", help="only queues of this namespace")
    queues.add_argument("--management-url", help=MANAGEMENT_URL_HELP)
    queues.add_argument("--json", action="store_true")
    queues.set_defaults(run=_queues)

    serve_cmd = commands.add_parser("serve", help="HTTP gateway and web dashboard for a namespace")
    _broker_options(serve_cmd)
    serve_cmd.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (default: 127.0.0.1:8080)")
    serve_cmd.add_argument("--token-file", help="file holding the bearer token (needed beyond loopback)")
    serve_cmd.add_argument("--management-url", help="default: http://<broker host>:15672")
    serve_cmd.add_argument(
        "--pull",
        action="append",
        default=[],
        metavar="NAME=KEY[,KEY]",
        help="a queue HTTP workers pull from (GET /api/queues/<namespace>:NAME/next), bound to these keys",
    )
    serve_cmd.set_defaults(run=_serve)

    bench = commands.add_parser(
        "bench", help="measure throughput against bare pika, aio-pika and (with Go) amqp091-go"
    )
    _broker_options(bench, names=False)
    bench.add_argument("--jobs", type=int, default=100_000, help="messages per phase (default: 100000)")
    bench.add_argument("--routing-keys", type=int, default=5, help="queues/routing keys (default: 5)")
    bench.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW,
        help=f"publishes in flight, awaiting their confirms (default: {DEFAULT_WINDOW})",
    )  # fmt: skip
    bench.add_argument(
        "--loop", choices=loops.LOOPS, default="auto",
        help="the event loop of every contestant (default: auto, uvloop when installed)",
    )  # fmt: skip
    bench.add_argument(
        "--go-maxprocs", type=int, default=1,
        help="GOMAXPROCS of the Go anchor, run when Go is installed (default: 1)",
    )  # fmt: skip
    bench.add_argument(
        "--latency", action="store_true",
        help="then publish → handler latency at 20%%, 50%% and 80%% of event's consume rate",
    )  # fmt: skip
    bench.add_argument(
        "--latency-seconds", type=float, default=5.0,
        help="how long each contestant takes the paced stream, per rate (default: 5)",
    )  # fmt: skip
    bench.add_argument(
        "--body-size", type=int, default=0,
        help="bytes of JSON a message, e.g. 1048576 (default: the seed's {\"n\": n}); "
        "leaves out the memory phase",
    )  # fmt: skip
    bench.add_argument(
        "--rounds", type=int, default=ROUNDS,
        help=f"turns of each phase, the jobs shared among them: --jobs 60 --rounds 6 is bursts of 10 "
        f"(default: {ROUNDS})",
    )  # fmt: skip
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(run=_bench)

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
    logs.configure(args.log_level, args.log_format)
    try:
        resolve_url(getattr(args, "url", None))
        code: int = loops.run(args.run(args))  # on uvloop when it is installed (event.loops)
        sys.stdout.flush()  # here, where a closed pipe is caught below, rather than at exit
        return code
    except (ConfigurationError, ValueError) as exc:
        print(f"event: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionFailed as exc:
        print(f"event: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except EventError as exc:
        print(f"event: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader went away (`event queues | head`): stop quietly, as shell tools do. Python would
        # otherwise fail again flushing stdout at exit, so stdout now points at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
