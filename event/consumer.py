"""A consumer's definition: what it consumes and how. Data only; the behaviour lives in ``dispatch``."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from event import wire
from event.batching import DEFAULT_BATCH_WAIT_S
from event.config import DEFAULT_PREFETCH, QUEUE_TYPES, check_count, check_name, check_seconds
from event.errors import ConfigurationError
from event.message import Context
from event.middleware import Middleware
from event.payloads import PayloadSpec, payload_spec
from event.ratelimit import RateLimit, parse_rate
from event.retry import DEFAULT_RETRIES, RETRY_MODES, Backoff, broker_retry_arguments

# (ctx, msg) or (ctx, msg, payload): see event.payloads for the typed forms.
AsyncHandler = Callable[..., Awaitable[None]]
SyncHandler = Callable[..., None]
Handler = AsyncHandler | SyncHandler


class RunnerOptions(TypedDict, total=False):
    """The consumer options a runner (``pool.proxy``, ``pool.command``) passes on: all but ``queue``,
    whose default a runner chooses, and ``timeout``, a runner's own (its request's or its command's)."""

    context: Callable[[], Any]  # default: event.message.Context
    prefetch: int | None  # default: DEFAULT_PREFETCH, or two batches for a batch consumer
    max_concurrency: int  # default 0: only the pool's limit
    arguments: Mapping[str, Any] | None
    middleware: tuple[Middleware, ...]
    retries: int  # default: event.retry.DEFAULT_RETRIES
    backoff: Backoff | None
    rate_limit: str | None
    rate_burst: int  # default 1
    max_deliveries: int  # default: wire.DEFAULT_MAX_DELIVERIES
    batch: int  # default 0: one message per call
    batch_wait: float  # default: event.batching.DEFAULT_BATCH_WAIT_S
    queue_type: str | None  # default: the pool's
    retry: str  # default "park"
    max_priority: int  # default 0


class ConsumerOptions(RunnerOptions, total=False):
    """The options of ``@pool.consumer(...)``, their one list (with :class:`RunnerOptions`):
    :meth:`event.WorkerPool.consumer` says what each does, :func:`define_consumer` gives each left out
    its default and checks each given."""

    queue: str | None  # default: the handler's name in Hutch's snake case
    timeout: float | None  # default None: no time limit


def check_options(options: Mapping[str, object], where: str) -> None:
    """Raise :class:`TypeError` for a name that is not a consumer option, as a misspelt keyword would."""
    unknown = sorted(set(options) - ConsumerOptions.__optional_keys__)
    if unknown:
        raise TypeError(
            f"{where}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: the consumer "
            f"options are {', '.join(sorted(ConsumerOptions.__optional_keys__))}"
        )


def default_prefetch(batch: int) -> int:
    """The prefetch of a consumer that names none: two batches for a batch consumer (one gathering
    while one runs), else :data:`DEFAULT_PREFETCH`."""
    return min(65535, 2 * batch) if batch else DEFAULT_PREFETCH


@dataclass(frozen=True, slots=True)
class Consumer:
    """One consumer: its queue, bindings, handler and limits."""

    # Built by define_consumer alone, from ConsumerOptions: the options resolved (defaults given, the
    # queue's full name, its arguments merged, the rate parsed) and the handler's payload type.
    handler: Handler
    routing_keys: tuple[str, ...]
    queue: str
    context: Callable[[], Any]
    prefetch: int
    max_concurrency: int
    arguments: Mapping[str, Any]
    middleware: tuple[Middleware, ...]
    timeout: float | None
    retries: int
    backoff: Backoff | None
    payload: PayloadSpec | None
    rate: RateLimit | None
    max_deliveries: int
    batch: int  # a batch consumer's largest list (0: one message per call)
    batch_wait: float  # how long a list gathers after its first message
    retry: str  # "broker": RabbitMQ 4.3's delayed retry on the quorum queue itself
    max_priority: int  # 0: a FIFO queue; else higher priorities first (see event.topology.pool_plan)

    @property
    def is_async(self) -> bool:
        """Whether the handler is a coroutine function (else it runs in the pool's thread pool)."""
        return inspect.iscoroutinefunction(self.handler)

    @property
    def bindings(self) -> tuple[str, ...]:
        """The binding keys on the main exchange: each routing key, then the queue's own name."""
        return (*self.routing_keys, self.queue)


def define_consumer(
    handler: Handler,
    routing_keys: tuple[str, ...],
    *,
    namespace: str,
    pool_queue_type: str | None = None,
    **options: Unpack[ConsumerOptions],
) -> Consumer:
    """Validate the options of ``@pool.consumer`` and build the :class:`Consumer`; errors name the handler.

    ``pool_queue_type`` is the pool's ``queue_type``: the queue's, unless the consumer chose one (its
    own ``queue_type``, or ``x-queue-type`` in its arguments).
    """
    where = getattr(handler, "__qualname__", repr(handler))
    check_options(options, "consumer")
    queue = options.get("queue")
    context = options.get("context", Context)
    batch = options.get("batch", 0)
    prefetch = options.get("prefetch")
    if prefetch is None:
        prefetch = default_prefetch(batch)
    arguments = options.get("arguments")
    queue_type = options.get("queue_type")
    if queue_type is None and "x-queue-type" not in (arguments or {}):
        queue_type = pool_queue_type
    backoff = options.get("backoff")
    retries = options.get("retries", DEFAULT_RETRIES)
    retry = options.get("retry", "park")
    max_priority = options.get("max_priority", 0)
    timeout = options.get("timeout")
    rate_limit = options.get("rate_limit")
    if not callable(handler):
        raise ConfigurationError(f"consumer handler {handler!r} is not callable")
    if not routing_keys:
        raise ConfigurationError(f"consumer {where} needs at least one routing key")
    for key in routing_keys:
        wire.validate_routing_key(key, pattern=True)
    if len(set(routing_keys)) != len(routing_keys):
        raise ConfigurationError(f"consumer {where} lists a routing key twice: {routing_keys}")
    if queue is not None:
        check_name(f"queue of consumer {where}", queue)
    name = queue if queue is not None else wire.name_from_qualname(where)
    full = wire.queue_name(namespace, name)
    check_name(f"queue of consumer {where}", full)
    if not callable(context):
        raise ConfigurationError(
            f"context of consumer {where} must be a class or a callable, not {context!r}"
        )
    if backoff is not None and not callable(backoff):
        raise ConfigurationError(f"backoff of consumer {where} must be a function of the failure count")
    args = dict(arguments or {})
    if queue_type is not None:
        if args.get("x-queue-type", queue_type) != queue_type:
            raise ConfigurationError(
                f"consumer {where} asks for queue_type={queue_type!r} but its arguments say "
                f"x-queue-type={args['x-queue-type']!r}"
            )
        args["x-queue-type"] = queue_type
    queue_type = args.get("x-queue-type")
    if queue_type is not None and queue_type not in QUEUE_TYPES:
        raise ConfigurationError(
            f"x-queue-type of consumer {where} must be one of {QUEUE_TYPES}, not {queue_type!r}"
        )
    if retry not in RETRY_MODES:
        raise ConfigurationError(f"retry of consumer {where} must be one of {RETRY_MODES}, not {retry!r}")
    if retry == "broker":
        if queue_type != "quorum":
            raise ConfigurationError(
                f'consumer {where} has retry="broker", which RabbitMQ 4.3 offers on quorum queues only: '
                f'add queue_type="quorum" (its queue is {queue_type or "classic"})'
            )
        args.update(broker_retry_arguments(check_count(f"retries of consumer {where}", retries), backoff))
    batch = check_count(f"batch of consumer {where}", batch)
    if batch and prefetch < batch:
        raise ConfigurationError(
            f"prefetch of consumer {where} ({prefetch}) is below its batch ({batch}): the broker would "
            f"never send a whole batch; give prefetch={2 * batch} (two batches: one gathering while one runs)"
        )
    check_count(f"max_priority of consumer {where}", max_priority, maximum=255)
    declared = args.get("x-max-priority")
    if max_priority and declared is not None and declared != max_priority:
        raise ConfigurationError(
            f"consumer {where} gives max_priority={max_priority} and x-max-priority={declared!r}: "
            "give one of them"
        )
    return Consumer(
        handler=handler,
        batch=batch,
        retry=retry,
        batch_wait=check_seconds(
            f"batch_wait of consumer {where}",
            options.get("batch_wait", DEFAULT_BATCH_WAIT_S),
            allow_zero=True,
        ),
        routing_keys=routing_keys,
        queue=full,
        context=context,
        prefetch=check_count(f"prefetch of consumer {where}", prefetch, minimum=1, maximum=65535),
        max_concurrency=check_count(
            f"max_concurrency of consumer {where}", options.get("max_concurrency", 0)
        ),
        arguments=args,
        middleware=options.get("middleware", ()),
        retries=check_count(f"retries of consumer {where}", retries),
        backoff=backoff,
        payload=payload_spec(handler),
        rate=None if rate_limit is None else parse_rate(rate_limit, options.get("rate_burst", 1), where),
        # One delivery that ends unsettled is ordinary (a lost connection, a crash of another
        # message's handler): at least two, so no single crash dead-queues what was in flight with it.
        max_deliveries=check_count(
            f"max_deliveries of consumer {where}",
            options.get("max_deliveries", wire.DEFAULT_MAX_DELIVERIES),
            minimum=2,
        ),
        max_priority=max_priority,
        timeout=None
        if timeout is None
        else check_seconds(f"timeout of consumer {where}", timeout, allow_zero=False),
    )
