"""Protobuf services at run time: what the modules protoc-gen-event writes stand on.

A generated module (see :mod:`event.protoc_plugin`) declares a :class:`Service` of :class:`Rpc`\\ s, each
with its :class:`event.Contract`; a producer class deriving from :class:`ServiceProducer` with one typed
method per rpc; a servicer ``Protocol``; and a ``register_<service>`` function calling :func:`register`. Only
the typed surface is generated: what each method does lives here, once.

An rpc whose response is not ``google.protobuf.Empty`` may be called for its answer
(``reply=True``): the request goes out through an :class:`event.Requester` and the consumer
answers with the servicer's return value through an :class:`event.Replier` (see
:mod:`event.replies`). A servicer that raises answers the caller with a :class:`event.RemoteError` and
sends the request to the dead queue rather than retrying it: the caller has its answer and decides. A
request sent without ``reply=True`` is handled as any event: the return value is dropped, a failure
retried.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from event import protobuf, replies, wire
from event.contracts import Contract
from event.errors import ConfigurationError
from event.message import Message
from event.pool import WorkerPool
from event.publisher import Publisher, encode_payload
from event.replies import Replier, Requester
from event.signals import Dead, Retry

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Rpc:
    """One ``rpc`` of a service: its name, the contract of its requests, and its response message class
    (``None`` for ``google.protobuf.Empty``: nothing to answer)."""

    name: str
    contract: Contract[Any]
    response: type[Any] | None = None


@dataclasses.dataclass(frozen=True)
class Service:
    """A ``service`` of a ``.proto``: its full protobuf name (``shop.Users``) and its rpcs."""

    name: str
    rpcs: tuple[Rpc, ...]

    @property
    def contracts(self) -> tuple[Contract[Any], ...]:
        """The contracts of the rpcs, for :func:`event.asyncapi.document`."""
        return tuple(rpc.contract for rpc in self.rpcs)

    def queue(self, rpc: Rpc) -> str:
        """The default queue of ``rpc``'s consumer: ``shop.Users`` / ``GetUser`` -> ``shop:users:get_user``,
        as Hutch names the queue of a class ``Shop::Users::GetUser``."""
        return wire.name_from_qualname(f"{self.name}.{rpc.name}")


class ServiceProducer:
    """The base of a generated ``<Service>Producer``: its methods publish through ``publisher``.

    Requests sent for their answer go through ``requester``, or one this producer opens at the first
    such call on the publisher's broker and exchange, and closes with :meth:`close` (or ``async with``).
    """

    service: ClassVar[Service]

    def __init__(self, publisher: Publisher, *, requester: Requester | None = None) -> None:
        self.publisher = publisher
        self._requester = requester
        self._owns_requester = requester is None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.publisher!r})"

    async def close(self) -> None:
        """Close the requester this producer opened, if any (never the publisher)."""
        requester = self._requester
        if requester is not None and self._owns_requester:
            self._requester = None
            await requester.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _publish(
        self,
        contract: Contract[Any],
        request: Any,
        *,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
        mandatory: bool,
    ) -> None:
        await self.publisher.to(contract).publish(
            request, headers=headers, message_id=message_id, mandatory=mandatory
        )

    async def _publish_in(
        self,
        contract: Contract[Any],
        delay: float | timedelta,
        request: Any,
        *,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
    ) -> None:
        await self.publisher.to(contract).publish_in(delay, request, headers=headers, message_id=message_id)

    async def _publish_at(
        self,
        contract: Contract[Any],
        when: datetime,
        request: Any,
        *,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
    ) -> None:
        await self.publisher.to(contract).publish_at(when, request, headers=headers, message_id=message_id)

    async def _call(
        self,
        contract: Contract[Any],
        response: type[R],
        request: Any,
        *,
        timeout: float | None,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
    ) -> R:
        contract.check(request)
        payload = protobuf.to_json(request) if contract.content_type == wire.CONTENT_TYPE else request
        body, content_type = encode_payload(contract.routing_key, payload)
        requester = self._requester
        if requester is None:
            publisher = self.publisher
            requester = Requester(
                publisher.url,
                exchange=publisher.exchange,
                connector=publisher.connector,
                clock=publisher.clock,
            )
            self._requester = requester
        reply = await requester.request(
            contract.routing_key,
            body,
            content_type,
            timeout=replies.DEFAULT_REPLY_TIMEOUT_S if timeout is None else timeout,
            headers=headers,
            message_id=message_id,
        )
        answer: R = protobuf.loader(response)(reply.body, reply.properties.content_type)  # type: ignore[arg-type]
        return answer


@dataclasses.dataclass
class Registration:
    """What ``register_<service>`` bound: the service, its consumers' queues, and the replier it opened
    (if any), which :meth:`close` closes: call it after ``pool.run`` returns."""

    service: Service
    queues: tuple[str, ...]
    replier: Replier | None = None

    async def close(self) -> None:
        if self.replier is not None:
            await self.replier.close()


def register(
    pool: WorkerPool,
    service: Service,
    servicer: object,
    methods: Mapping[str, Mapping[str, Any]] | None,
    options: Mapping[str, Any],
    replier: Replier | None,
) -> Registration:
    """Register a consumer of ``pool`` per rpc of ``service``, calling the servicer's method of its name.

    ``options`` (those of ``pool.consumer``) apply to every rpc, ``methods[name]`` to one, winning; the
    queue defaults to :meth:`Service.queue`. Replies go through ``replier``, or one opened on the pool's
    broker when the service has an rpc that answers.
    """
    by_name = {rpc.name: rpc for rpc in service.rpcs}
    unknown = sorted(set(methods or {}) - set(by_name))
    if unknown:
        raise ConfigurationError(
            f"methods names {unknown}, not rpcs of {service.name}: its rpcs are {sorted(by_name)}"
        )
    opened = None
    if replier is None and any(rpc.response is not None for rpc in service.rpcs):
        replier = opened = Replier(pool.url, connector=pool.connector, name=f"{pool.name} replies")
    queues = []
    for rpc in service.rpcs:
        method = getattr(servicer, rpc.name, None)
        if not callable(method):
            raise ConfigurationError(f"servicer {servicer!r} of {service.name} has no method {rpc.name}")
        chosen = {**options, **(methods or {}).get(rpc.name, {})}
        if chosen.get("queue") is None:  # None, as for pool.consumer: the default, here the rpc's own
            chosen["queue"] = service.queue(rpc)
        handler = _handler(rpc, method, replier, pool.clock, f"{type(servicer).__qualname__}.{rpc.name}")
        rpc.contract.consumer(pool, **chosen)(handler)
        queues.append(str(chosen["queue"]))
    return Registration(service, tuple(queues), opened)


def _handler(
    rpc: Rpc,
    method: Callable[[Any, Message[Any]], Awaitable[Any]],
    replier: Replier | None,
    clock: Callable[[], float],
    name: str,
) -> Callable[[Any, Message[Any]], Awaitable[None]]:
    response: type[Any] = rpc.response or type(None)  # None: an rpc that answers nothing

    async def handle(ctx: Any, msg: Message[Any]) -> None:
        address = replies.reply_address(msg.headers) if rpc.response is not None else None
        if address is None or replier is None:
            await method(ctx, msg)  # an event: nobody waits for an answer
            return
        if replies.expired(msg.headers, clock()):
            log.info("%s: request %s came after its caller stopped waiting: skipped", name, msg.message_id)
            return
        try:
            answer = await method(ctx, msg)
            if not isinstance(answer, response):
                raise TypeError(
                    f"{name} returned {type(answer).__name__}, not {protobuf.type_name(response)}"
                )
        except Retry:
            raise  # asked for on purpose: the caller times out unless the retry is quick
        except Exception as exc:
            await replier.error(msg.headers, exc)
            raise Dead(f"answered the caller with {type(exc).__name__}: {exc}") from exc
        await replier.answer(
            msg.headers, protobuf.encode(rpc.contract.routing_key, answer), protobuf.CONTENT_TYPE
        )

    # The payload type event.payloads reads from the handler: the rpc's request message.
    generic: Any = Message  # subscripted with a class known only now
    handle.__annotations__ = {"ctx": Any, "msg": generic[rpc.contract.type], "return": None}
    handle.__qualname__ = handle.__name__ = name
    return handle


__all__ = ["Registration", "Replier", "Requester", "Rpc", "Service", "ServiceProducer", "register"]
