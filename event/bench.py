"""The throughput benchmark (`event bench`): event against honest anchors, in one run, on one broker.

Issue 16's seed benchmark: ``jobs`` near-no-op persistent JSON messages over ``routing_keys`` queues,
prefetch 200. Three systems are measured, each in a fresh interpreter of its own
(:mod:`event.bench_child`: no shared loop, heap or garbage collector), each on messages published for
it alone just before it starts:

- consume: ``event``, a WorkerPool with full dispatch (a context per message, a middleware, the pool's
  concurrency limit, batched acks); ``pika``, a bare ``AsyncioConnection`` consumer (orjson decode and
  a no-op coroutine run to completion per message, a ``multiple`` ack every 50); ``aio-pika``, a plain
  aio-pika consumer acking each message;
- publish with confirms, ``window`` publishes in flight: our Publisher, pika's ``AsyncioConnection``
  with ``confirm_delivery``, and aio-pika with publisher confirms.

The machine may be shared, so each phase runs in turns (``rounds``, :data:`ROUNDS` by default), each a
share of the jobs, the systems in a rotating order, so that a slow spell falls on all of them rather
than on one; a system's rate is its jobs over its summed time. Read the ratios, which one run keeps
comparable, rather than the rates. Memory is read in a fresh worker holding up to 10,000 messages
prefetched, each in a waiting handler.

After each child the parent checks the broker: every consumed queue empty (everything acked), every
published message in the sink (nothing unconfirmed counted as sent).

Large messages (``body_size``, ``event bench --body-size 1048576``): every message, those the parent
fills the queues with and those each contestant publishes, is the same JSON padded to that many bytes
(:func:`event.bench_child.payload`), encoded by each publisher and decoded by each consumer; the memory
phase is then left out (10,000 held messages of a MiB would not fit). A burst of ten is ``--jobs 60
--rounds 6``: six turns of ten messages for each contestant.

The anchors need pika and aio-pika: ``pip install 'rabbit-event[bench]'``.

A fourth contestant, the compiled anchor, runs when Go is installed: a bare consumer and a confirmed
publisher on amqp091-go, RabbitMQ's own Go client (``event/bench_anchor/main.go``), built here in GOPATH
mode against Debian's ``golang-github-rabbitmq-amqp091-go-dev`` (nothing is fetched), and run with
``GOMAXPROCS=1`` unless ``go_maxprocs`` says otherwise. Without Go the result says why it did not run.

With ``latency`` (``event bench --latency``), each consumer then takes a stream paced at
:data:`LATENCY_SHARES` of event's own consume rate just measured, one contestant at a time (each on the
whole machine, the order rotating by rate), for ``latency_seconds`` each: publish → handler p50, p99
and p99.9, read from the publish time each body carries. The pacer publishes without confirms, a tick
a millisecond, so the stream's pace is the experiment's and not the broker's answer.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from event import wire
from event.bench_child import SYSTEMS, child_argv, event_pool, message_properties, payload
from event.config import check_count
from event.errors import ConfigurationError
from event.loops import resolve_loop
from event.topology import Plan

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

Progress = Callable[[str, int, int], None]

HOLD = 10_000  # messages a worker holds prefetched and in flight while its memory is read
ROUNDS = 3
DEFAULT_WINDOW = 500
LATENCY_SHARES = (0.2, 0.5, 0.8)  # of event's own consume rate
LATENCY_SYSTEMS = ("event", "pika", "go")
INSTALL_HINT = "pip install 'rabbit-event[bench]'"
GO_SOURCE = Path(__file__).with_name("bench_anchor") / "main.go"
GO_HINT = "apt-get install golang-go golang-github-rabbitmq-amqp091-go-dev"
GOPATH = "/usr/share/gocode"  # where Debian's Go library packages put their source


@dataclass
class BenchResult:
    """The figures of one run: rates per second, and each ratio event/anchor (above 1: event is faster)."""

    jobs: int
    routing_keys: int
    window: int
    loop: str
    # Bytes of JSON a message (0: the seed's ``{"n": n}``), and the turns each phase ran in.
    body_size: int
    rounds: int
    consume_event_per_s: float
    consume_pika_per_s: float
    consume_aio_pika_per_s: float
    consume_ratio_pika: float
    consume_ratio_aio_pika: float
    publish_event_per_s: float
    publish_pika_per_s: float
    publish_aio_pika_per_s: float
    publish_ratio_pika: float
    publish_ratio_aio_pika: float
    # CPU time of each contestant's process per message, in µs: less disturbed than the rates by other
    # work on the machine (a client waiting for a busy broker spends none).
    consume_event_cpu_us: float
    consume_pika_cpu_us: float
    consume_aio_pika_cpu_us: float
    publish_event_cpu_us: float
    publish_pika_cpu_us: float
    publish_aio_pika_cpu_us: float
    peak_rss_mb: float  # the event consumer's own peak
    hold_rss_mb: float | None  # None: not measured (with a body size, HOLD messages would not fit)
    held: int
    # The compiled anchor (amqp091-go), when Go is installed; ``go`` says how it ran, or why it did not.
    go: str = "not run"
    go_maxprocs: int | None = None
    consume_go_per_s: float | None = None
    publish_go_per_s: float | None = None
    consume_ratio_go: float | None = None
    publish_ratio_go: float | None = None
    consume_go_cpu_us: float | None = None
    publish_go_cpu_us: float | None = None
    # With latency: one row per rate and contestant (rate, share, system, p50_ms, p99_ms, p999_ms, count).
    latency: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


def require_anchors() -> None:
    """Raise :class:`ConfigurationError` naming the extra to install when pika or aio-pika is missing."""
    for module, package in (("pika", "pika"), ("aio_pika", "aio-pika")):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(
                f"event bench measures against {package}, which is not installed: {INSTALL_HINT} ({exc})"
            ) from exc


def go_anchor() -> tuple[Path | None, str]:
    """The built Go anchor and how it was built, or None and why there is none.

    Built once per version of its source into the user's cache (``$XDG_CACHE_HOME``)."""
    go = shutil.which("go")
    if go is None:
        return None, f"not run: Go is not installed ({GO_HINT})"
    digest = hashlib.sha256(GO_SOURCE.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "event-bench"
    binary = cache / f"amqp091-anchor-{digest}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOPATH": GOPATH, "GO111MODULE": "off"}  # no module proxy is reachable
        env.setdefault("GOCACHE", str(cache / "go-build"))
        built = subprocess.run(
            [go, "build", "-o", str(binary), str(GO_SOURCE)], capture_output=True, text=True, env=env
        )
        if built.returncode != 0:
            return None, f"not run: the Go anchor did not build ({GO_HINT}): {built.stderr.strip()[-400:]}"
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.split()
    return binary, f"amqp091-go, {version[2] if len(version) > 2 else 'go'}"


def run_bench(
    url: str,
    *,
    jobs: int = 100_000,
    routing_keys: int = 5,
    window: int = DEFAULT_WINDOW,
    loop: str = "auto",
    progress: Progress = _no_progress,
    go_maxprocs: int = 1,
    latency: bool = False,
    latency_seconds: float = 5.0,
    body_size: int = 0,
    rounds: int = ROUNDS,
) -> BenchResult:
    """Run every phase against the broker at ``url`` (blocking: it waits on child processes).

    ``body_size``: bytes of JSON a message (see :func:`event.bench_child.payload`), for the consume and
    publish phases; with it the memory phase is left out. ``rounds``: the turns each phase runs in, the
    jobs shared among them (``jobs=60, rounds=6``: each contestant takes six bursts of ten)."""
    check_count("jobs", jobs, minimum=1)
    check_count("routing_keys", routing_keys, minimum=1)
    check_count("window", window, minimum=1)
    check_count("body_size", body_size)
    check_count("rounds", rounds, minimum=1)
    require_anchors()
    loop = resolve_loop(loop)
    check_count("go_maxprocs", go_maxprocs, minimum=1)
    anchor, go = go_anchor()
    bench = _Bench(url, jobs, routing_keys, window, loop, progress, anchor, go_maxprocs, body_size, rounds)
    with bench.broker():
        consume, publish = bench.rounds()
        held = 0 if body_size else min(jobs, HOLD)
        hold_rss = bench.hold(held) if held else None
        rows = bench.latency(jobs / consume.wall["event"], latency_seconds) if latency else None
    cpu_us: dict[str, Any] = {
        f"{phase}_{system.replace('-', '_')}_cpu_us": spent.cpu[system] / jobs * 1e6
        for phase, spent in (("consume", consume), ("publish", publish))
        for system in bench.systems
    }
    compiled: dict[str, Any] = {"go": go}
    if anchor is not None:
        compiled.update(
            go=f"{go}, GOMAXPROCS={go_maxprocs}",
            go_maxprocs=go_maxprocs,
            consume_go_per_s=jobs / consume.wall["go"],
            publish_go_per_s=jobs / publish.wall["go"],
            consume_ratio_go=consume.wall["go"] / consume.wall["event"],
            publish_ratio_go=publish.wall["go"] / publish.wall["event"],
        )
    return BenchResult(
        jobs=jobs,
        routing_keys=routing_keys,
        window=window,
        loop=loop,
        body_size=body_size,
        rounds=rounds,
        consume_event_per_s=jobs / consume.wall["event"],
        consume_pika_per_s=jobs / consume.wall["pika"],
        consume_aio_pika_per_s=jobs / consume.wall["aio-pika"],
        consume_ratio_pika=consume.wall["pika"] / consume.wall["event"],
        consume_ratio_aio_pika=consume.wall["aio-pika"] / consume.wall["event"],
        publish_event_per_s=jobs / publish.wall["event"],
        publish_pika_per_s=jobs / publish.wall["pika"],
        publish_aio_pika_per_s=jobs / publish.wall["aio-pika"],
        publish_ratio_pika=publish.wall["pika"] / publish.wall["event"],
        publish_ratio_aio_pika=publish.wall["aio-pika"] / publish.wall["event"],
        **cpu_us,
        peak_rss_mb=bench.peak_rss_mb,
        hold_rss_mb=hold_rss,
        held=held,
        **compiled,
        latency=rows,
    )


class _Spent:
    """Wall-clock and CPU seconds of each system in one phase, summed over the rounds."""

    def __init__(self, systems: tuple[str, ...]) -> None:
        self.wall = dict.fromkeys(systems, 0.0)
        self.cpu = dict.fromkeys(systems, 0.0)

    def add(self, system: str, figures: dict[str, Any]) -> None:
        self.wall[system] += float(figures["seconds"])
        self.cpu[system] += float(figures["cpu_seconds"])


class _Bench:
    """One run's names, its admin connection, and the phases the parent drives."""

    def __init__(
        self,
        url: str,
        jobs: int,
        routing_keys: int,
        window: int,
        loop: str,
        progress: Progress,
        anchor: Path | None,
        go_maxprocs: int,
        body_size: int = 0,
        rounds: int = ROUNDS,
    ) -> None:
        self.url = url
        self.body_size = body_size
        self.turns = rounds
        self.anchor = anchor
        self.go_maxprocs = go_maxprocs
        self.systems = (*SYSTEMS, "go") if anchor is not None else SYSTEMS
        self.jobs = jobs
        self.window = window
        self.loop = loop
        self.progress = progress
        self.namespace = f"bench{uuid.uuid4().hex[:8]}"
        self.exchange = f"{self.namespace}-ex"
        self.consume_keys = [f"bench.job{k}" for k in range(routing_keys)]
        self.publish_keys = [f"bench.publish.{k}" for k in range(routing_keys)]
        self.sink = f"{self.namespace}-sink"
        self.plan = self._event_plan()
        self.declared: list[str] = []  # queues to delete at the end
        self.peak_rss_mb = 0.0
        self._channel: BlockingChannel | None = None

    def _event_plan(self) -> Plan:
        # What the event children's pools declare, for their queues' exact arguments and the clean-up.
        pool = event_pool(self.url, self.namespace, self.exchange)
        for prefix in ("job", "hold"):
            for k, key in enumerate(self.consume_keys):
                pool.consumer(key, queue=f"{prefix}{k}")(_never_called)
        pool.consumer(self.latency_key("event"), queue="latency")(_never_called)
        return pool.topology()

    def latency_key(self, system: str) -> str:
        """The routing key of ``system``'s latency stream: one each, so that the queue of a contestant
        not running collects nothing."""
        return f"bench.latency.{system}"

    @property
    def channel(self) -> BlockingChannel:
        assert self._channel is not None, "used outside broker()"
        return self._channel

    @contextmanager
    def broker(self) -> Iterator[None]:
        """The admin connection for the run, and the deletion of everything the run declared."""
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            self._channel = connection.channel()
            for exchange in self.plan.exchanges:
                if exchange.name == self.exchange:
                    self.channel.exchange_declare(exchange.name, exchange.kind, durable=True)
            self._declare(self.sink)
            for key in self.publish_keys:
                self.channel.queue_bind(self.sink, self.exchange, routing_key=key)
            yield
        finally:
            try:
                if self._channel is not None and self._channel.is_open:
                    for name in [*self.declared, *(queue.name for queue in self.plan.queues)]:
                        self.channel.queue_delete(name)
                    exchanges = [e.name for e in self.plan.exchanges]
                    for name in [*exchanges, wire.control_exchange_name(self.exchange)]:
                        self.channel.exchange_delete(name)
            finally:
                connection.close()

    def _declare(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        self.channel.queue_declare(name, durable=True, arguments=arguments)
        if name not in self.declared:
            self.declared.append(name)

    def _depth(self, name: str) -> int:
        ok = self.channel.queue_declare(name, durable=True, passive=True)
        return int(ok.method.message_count or 0)

    def _fill(self, queues: list[str], count: int, phase: str) -> None:
        """``count`` messages round-robin into ``queues``, then wait until the broker holds them all.

        Unconfirmed publishes, then the queues' depths read back until every message is there before
        the child starts: several times faster than a blocking client awaiting each confirm.
        """
        import pika

        before = sum(self._depth(name) for name in queues)
        for n in range(count):
            self.channel.basic_publish(
                "",
                queues[n % len(queues)],
                orjson.dumps(payload(n, self.body_size)),
                pika.BasicProperties(**message_properties()),
            )
        deadline = time.monotonic() + 60
        while (held := sum(self._depth(name) for name in queues) - before) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{phase}: the broker holds {held} of the {count} messages published")
            time.sleep(0.02)

    def _child(self, argv: list[str], what: str) -> dict[str, Any]:
        # The URL goes by environment, not argv, where `ps` would show its password to every user.
        timeout = 120 + self.jobs / 200  # a stuck child fails the run rather than hanging it
        env = {**os.environ, "AMQP_URL": self.url, "GOMAXPROCS": str(self.go_maxprocs)}
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{what} took over {timeout:.0f} s") from exc
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
        figures: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
        if figures["loop"] not in (self.loop, "go"):
            raise RuntimeError(f"{what} ran on {figures['loop']}, not {self.loop}")
        return figures

    def rounds(self) -> tuple[_Spent, _Spent]:
        """The time each system took to consume, then to publish, all the jobs in ``turns`` turns."""
        systems = self.systems
        consume, publish = _Spent(systems), _Spent(systems)
        turns = self.turns
        shares = [self.jobs // turns + (1 if r < self.jobs % turns else 0) for r in range(turns)]
        steps = 2 * len(systems) * sum(1 for share in shares if share)
        step = 0
        for phase, spent in (("consume", consume), ("publish", publish)):
            for r, share in enumerate(shares):
                if not share:
                    continue
                for k in range(len(systems)):
                    system = systems[(r + k) % len(systems)]
                    self.progress(f"{phase} ({system})", step, steps)
                    measure = self._consume if phase == "consume" else self._publish
                    spent.add(system, measure(system, share))
                    step += 1
        self.progress("done", steps, steps)
        return consume, publish

    def _consume(self, system: str, count: int) -> dict[str, Any]:
        if system == "event":
            queues = [wire.queue_name(self.namespace, f"job{k}") for k in range(len(self.consume_keys))]
            arguments = {queue.name: queue.arguments for queue in self.plan.queues}
            for name in queues:
                self._declare(name, arguments[name] or None)
            options: dict[str, Any] = {
                "namespace": self.namespace, "exchange": self.exchange, "keys": self.consume_keys,
            }  # fmt: skip
        else:
            queues = [f"{self.namespace}-{system}{k}" for k in range(len(self.consume_keys))]
            for name in queues:
                self._declare(name)
            options = {"queues": queues}
        self._fill(queues, count, f"fill for {system}")
        if system == "go":
            argv = self._go_argv("consume", jobs=count, queues=queues)
        else:
            argv = child_argv("consume", system, self.loop, jobs=count, **options)
        figures = self._child(argv, f"consume ({system})")
        left = sum(self._depth(name) for name in queues)
        if left:
            raise RuntimeError(f"consume ({system}) left {left} of {count} messages in its queues")
        if system == "event":
            self.peak_rss_mb = max(self.peak_rss_mb, float(figures["peak_rss_mb"]))
        return figures

    def _go_argv(self, phase: str, **options: Any) -> list[str]:
        assert self.anchor is not None
        argv = [str(self.anchor)]
        for name, value in options.items():
            argv += [
                f"--{name.replace('_', '-')}",
                ",".join(value) if isinstance(value, list) else str(value),
            ]
        return [*argv, phase]

    def _publish(self, system: str, count: int) -> dict[str, Any]:
        if system == "go":
            argv = self._go_argv(
                "publish", jobs=count, window=self.window, exchange=self.exchange, keys=self.publish_keys,
                body_size=self.body_size,
            )  # fmt: skip
        else:
            argv = child_argv(
                "publish", system, self.loop, jobs=count, window=self.window,
                namespace=self.namespace, exchange=self.exchange, keys=self.publish_keys,
                body_size=self.body_size,
            )  # fmt: skip
        figures = self._child(argv, f"publish ({system})")
        arrived = self._depth(self.sink)
        if arrived != count:
            raise RuntimeError(f"publish ({system}) reported {count} confirmed, the sink holds {arrived}")
        self.channel.queue_purge(self.sink)
        return figures

    def latency(self, top_rate: float, seconds: float) -> list[dict[str, Any]]:
        """Publish → handler percentiles of each contestant at each share of ``top_rate``."""
        systems = [s for s in LATENCY_SYSTEMS if s != "go" or self.anchor is not None]
        for system in systems:
            if system != "event":
                name = f"{self.namespace}-{system}-latency"
                self._declare(name)
                self.channel.queue_bind(name, self.exchange, routing_key=self.latency_key(system))
        rows: list[dict[str, Any]] = []
        steps = len(LATENCY_SHARES) * len(systems)
        for r, share in enumerate(LATENCY_SHARES):
            rate = max(1, round(top_rate * share))
            for k in range(len(systems)):
                system = systems[(r + k) % len(systems)]
                self.progress(f"latency ({system}, {rate}/s)", len(rows), steps)
                figures = self._latency(system, rate, max(1, round(rate * seconds)))
                rows.append({"rate": rate, "share": share, "system": system, **figures})
        self.progress("done", steps, steps)
        return rows

    def _latency(self, system: str, rate: int, count: int) -> dict[str, Any]:
        env = {**os.environ, "AMQP_URL": self.url, "GOMAXPROCS": str(self.go_maxprocs)}
        queue = f"{self.namespace}-{system}-latency"
        if system == "go":
            argv = self._go_argv("latency", jobs=count, queues=[queue])
        elif system == "event":
            queue = wire.queue_name(self.namespace, "latency")
            argv = child_argv(
                "latency", "event", self.loop, jobs=count, namespace=self.namespace, exchange=self.exchange,
                keys=[self.latency_key("event")],
            )  # fmt: skip
        else:
            argv = child_argv("latency", "pika", self.loop, jobs=count, queues=[queue])
        if system != "event" or self._depth_if_any(queue):  # what a stopped contestant left behind
            self.channel.queue_purge(queue)
        timeout = 120 + count / max(1, rate) * 4
        pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        with subprocess.Popen(argv, env=env, **pipes) as child:
            assert child.stdout is not None
            try:
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"latency ({system}) did not start: {child.communicate()[1][-3000:]}")
                self._child(
                    child_argv(
                        "pace", "event", self.loop, jobs=count, rate=rate, exchange=self.exchange,
                        keys=[self.latency_key(system)],
                    ),
                    f"pacer for {system}",
                )  # fmt: skip
                out, err = child.communicate(timeout=timeout)
            except BaseException:
                child.kill()
                raise
        if child.returncode != 0:
            raise RuntimeError(f"latency ({system}) failed with exit code {child.returncode}:\n{err[-3000:]}")
        figures: dict[str, Any] = orjson.loads(out.splitlines()[-1])
        return {key: figures[key] for key in ("p50_ms", "p99_ms", "p999_ms", "count")} | {"sent": count}

    def _depth_if_any(self, name: str) -> int:
        # A passive declare of a queue not there yet closes the channel: ask a throwaway one.
        import pika.exceptions

        channel = self.channel.connection.channel()
        try:
            return int(channel.queue_declare(name, durable=True, passive=True).method.message_count or 0)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        finally:
            if channel.is_open:
                channel.close()

    def hold(self, held: int) -> float:
        """RSS of a fresh event worker holding ``held`` messages prefetched, each in a waiting handler."""
        queues = [wire.queue_name(self.namespace, f"hold{k}") for k in range(len(self.consume_keys))]
        arguments = {queue.name: queue.arguments for queue in self.plan.queues}
        for name in queues:
            self._declare(name, arguments[name] or None)
        self.progress("hold in memory", 0, held)
        self._fill(queues, held, "fill for memory")
        figures = self._child(
            child_argv(
                "hold", "event", self.loop, jobs=held, namespace=self.namespace, exchange=self.exchange,
                keys=self.consume_keys,
            ),
            "hold in memory",
        )  # fmt: skip
        self.progress("hold in memory", held, held)
        return float(figures["rss_mb"])


async def _never_called(ctx: object, msg: object) -> None:
    raise AssertionError("the parent's pool only describes the topology")
