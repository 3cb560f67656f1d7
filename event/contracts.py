"""Typed contracts: a routing key bound once to its payload type, for the producer and the consumer.

A contract is a small declaration that a producer service and a consumer service both import (they need
not import each other)::

    SEND_EMAIL = Contract("app.send_email", SendEmail)

    @SEND_EMAIL.consumer(pool, max_concurrency=5)          # the consumer: msg.body is a SendEmail
    async def send_email(ctx: Context, msg: Message[SendEmail]) -> None: ...

    await publisher.to(SEND_EMAIL).publish(SendEmail(to="ada@example.com", subject="hi"))

The routing key is written once. mypy rejects a publish of another type or a payload missing a field,
and a handler typed with another payload type. ``SendEmail`` is any payload type :mod:`event.payloads`
accepts: a dataclass, a TypedDict, a pydantic model or a protobuf message class. A protobuf contract
publishes the binary form unless declared with ``content_type="application/json"`` (see
:mod:`event.protobuf`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, Unpack, is_typeddict

from event import protobuf, wire
from event.errors import ConfigurationError
from event.message import Message
from event.payloads import converter, payload_spec

if TYPE_CHECKING:  # the publisher imports this module for Publisher.to
    from event.consumer import ConsumerOptions
    from event.pool import WorkerPool
    from event.publisher import Publisher

P = TypeVar("P")

# The handler forms of event.payloads, for one payload type: (ctx, msg: Message[P]) or
# (ctx, msg, payload: P), async or not. The context is Any: each consumer chooses its own class.
TypedHandler: TypeAlias = (
    Callable[[Any, Message[P]], Awaitable[None]]
    | Callable[[Any, Message[Any], P], Awaitable[None]]
    | Callable[[Any, Message[P]], None]
    | Callable[[Any, Message[Any], P], None]
)


@dataclasses.dataclass(frozen=True)
class Contract(Generic[P]):
    """The routing key ``routing_key`` carries payloads of type ``type``; ``description`` documents it.

    ``routing_key`` is an exact key (no ``*`` or ``#``): a producer publishes with it. ``type`` is a
    dataclass, a TypedDict, a pydantic model or a protobuf message class; anything else raises
    :class:`ConfigurationError` here, at import, rather than at the first publish.

    ``content_type`` is how the producer encodes the payloads: JSON (``application/json``) for every
    type, and, for a protobuf message, its binary form (``application/x-protobuf``, the default for
    one) or its JSON mapping. Consumers read either. Left out, it is the type's default.
    """

    routing_key: str
    type: type[P]
    description: str = ""
    content_type: str = ""

    def __post_init__(self) -> None:
        wire.validate_routing_key(self.routing_key, pattern=False)
        converter(self.type, f"contract {self.routing_key!r}")  # raises for an unsupported type
        is_protobuf = protobuf.is_message_type(self.type)
        allowed = (protobuf.CONTENT_TYPE, wire.CONTENT_TYPE) if is_protobuf else (wire.CONTENT_TYPE,)
        if not self.content_type:
            object.__setattr__(self, "content_type", allowed[0])
        elif self.content_type not in allowed:
            raise ConfigurationError(
                f"content_type {self.content_type!r} of contract {self.routing_key!r} is not one of "
                f"{allowed}, the encodings of {getattr(self.type, '__name__', self.type)} payloads"
            )

    def __repr__(self) -> str:
        return f"Contract({self.routing_key!r}, {getattr(self.type, '__name__', self.type)!s})"

    @property
    def routing_keys(self) -> tuple[str, ...]:
        """``(routing_key,)``: for ``pool.consumer(*contract.routing_keys, ...)``."""
        return (self.routing_key,)

    def consumer(
        self, pool: WorkerPool, **options: Unpack[ConsumerOptions]
    ) -> Callable[[TypedHandler[P]], TypedHandler[P]]:
        """Register the decorated handler on ``pool`` as the consumer of this contract's routing key.

        ``options`` are those of :meth:`event.WorkerPool.consumer`. The handler must declare this
        contract's payload type (``msg: Message[P]`` or ``payload: P``): mypy checks it, and a handler
        typed otherwise raises :class:`ConfigurationError` when registered.
        """

        def register(handler: TypedHandler[P]) -> TypedHandler[P]:
            spec = payload_spec(handler)
            if spec is None or spec.type is not self.type:
                where = getattr(handler, "__qualname__", repr(handler))
                declared = "no payload type" if spec is None else f"payload type {spec.type!r}"
                raise ConfigurationError(
                    f"handler {where} of {self!r} declares {declared}: type it "
                    f"msg: Message[{getattr(self.type, '__name__', self.type)}]"
                )
            pool.consumer(self.routing_key, **options)(handler)
            return handler

        return register

    def check(self, payload: object) -> None:
        """Raise :class:`TypeError` when ``payload`` is plainly not of this contract's type.

        mypy catches this statically; the check is for untyped callers. A TypedDict has no runtime
        class, so only its being a mapping is checked.
        """
        wanted: Any = self.type
        ok = isinstance(payload, Mapping) if is_typeddict(wanted) else isinstance(payload, wanted)
        if not ok:
            raise TypeError(
                f"{self!r} takes {getattr(wanted, '__name__', wanted)} payloads, not {type(payload).__name__}"
            )


class Producer(Generic[P]):
    """Publishes the payloads of one contract through a :class:`event.Publisher`: ``publisher.to(c)``.

    The methods are those of the publisher without the routing key, and take only the contract's type.
    """

    __slots__ = ("contract", "publisher")

    def __init__(self, publisher: Publisher, contract: Contract[P]) -> None:
        self.publisher = publisher
        self.contract = contract

    def __repr__(self) -> str:
        return f"Producer({self.contract!r})"

    def _payload(self, payload: P) -> Any:
        """``payload`` checked, and as the contract's content type has it published."""
        self.contract.check(payload)
        if self.contract.content_type == wire.CONTENT_TYPE and protobuf.is_message(payload):
            return protobuf.to_json(payload)  # type: ignore[arg-type]  # a protobuf message, checked
        return payload

    async def publish(
        self,
        payload: P,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        mandatory: bool = False,
        priority: int | None = None,
    ) -> None:
        """Publish ``payload`` and wait for the broker's confirm (see :meth:`event.Publisher.publish`)."""
        await self.publisher.publish(
            self.contract.routing_key,
            self._payload(payload),
            headers=headers,
            message_id=message_id,
            mandatory=mandatory,
            priority=priority,
        )

    async def publish_in(
        self,
        delay: float | timedelta,
        payload: P,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        priority: int | None = None,
    ) -> None:
        """Publish ``payload`` for delivery after ``delay`` (see :meth:`event.Publisher.publish_in`)."""
        await self.publisher.publish_in(
            delay, self.contract.routing_key, self._payload(payload), headers=headers, message_id=message_id,
            priority=priority,
        )  # fmt: skip

    async def publish_at(
        self,
        when: datetime,
        payload: P,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        priority: int | None = None,
    ) -> None:
        """Publish ``payload`` for delivery at ``when`` (see :meth:`event.Publisher.publish_at`)."""
        await self.publisher.publish_at(
            when, self.contract.routing_key, self._payload(payload), headers=headers, message_id=message_id,
            priority=priority,
        )  # fmt: skip
