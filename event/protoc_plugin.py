"""protoc-gen-event: a protoc plugin writing typed producers and consumers for the services of ``.proto``s.

Run it through protoc (grpcio-tools ships one: ``pip install "rabbit-event[protoc]"``)::

    python -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --event_out=. proto/shop/users.proto

protoc finds ``protoc-gen-event`` on ``PATH`` (the package's console script), or where
``--plugin=protoc-gen-event=PATH`` says. Beside protoc's ``shop/users_pb2.py`` it writes
``shop/users_event.py`` with, for each ``service``:

- a contract per ``rpc`` (:class:`event.Contract` of its request message), routing key
  ``<package>.<Service>.<Method>`` unless the method's option number :data:`ROUTING_KEY_OPTION` (a string,
  declared by the user: see docs/protobuf-services.md) names another;
- ``<Service>Producer``: one async method per rpc taking the request message, with ``_in`` and ``_at``
  variants for delays; an rpc whose response is not ``google.protobuf.Empty`` also answers
  ``await producer.Method(request, reply=True, timeout=5)`` with the response message;
- ``<Service>Servicer``: a :class:`typing.Protocol` with one ``async def Method(self, ctx, msg:
  Message[Request]) -> Response`` (``None`` for an Empty response) per rpc;
- ``register_<service>(pool, servicer, *, methods=None, **consumer_options)`` binding one consumer per rpc.

The generator is a pure function, :func:`generate`: a ``CodeGeneratorRequest`` in, a
``CodeGeneratorResponse`` out; :func:`main` is the plugin protocol around it (the request on stdin, the
response on stdout). The generated code uses only :mod:`event`'s public API and :mod:`event.services`.
"""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.protobuf.compiler.plugin_pb2 import CodeGeneratorRequest, CodeGeneratorResponse
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

ROUTING_KEY_OPTION = 50340
"""The field number of the ``MethodOptions`` extension (a ``string``) that overrides an rpc's routing key.

Declare it in your ``.proto`` (or one it imports) as
``extend google.protobuf.MethodOptions { string event_routing_key = 50340; }``; any name will do, the
plugin reads the number. It lies in protobuf's range for an organisation's own extensions
(50000-99999), so pick another declaration if yours already uses this number.
"""

EMPTY = ".google.protobuf.Empty"

# SourceCodeInfo paths: FileDescriptorProto.service, ServiceDescriptorProto.method (descriptor.proto).
_SERVICE_PATH, _METHOD_PATH = 6, 2


def generate(request: CodeGeneratorRequest) -> CodeGeneratorResponse:
    """The ``<file>_event.py`` modules for the files of ``request`` that declare services."""
    from google.protobuf.compiler.plugin_pb2 import CodeGeneratorResponse

    response = CodeGeneratorResponse(supported_features=CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL)
    files = {file.name: file for file in request.proto_file}
    messages = _message_index(request.proto_file)
    for name in request.file_to_generate:
        file = files[name]
        if not file.service:
            continue
        try:
            content = _render(file, messages)
        except ValueError as exc:
            response.error = f"{name}: {exc}"
            return response
        response.file.add(name=f"{_module_path(file.name)}_event.py", content=content)
    return response


def main() -> None:
    """The plugin protocol: a serialised ``CodeGeneratorRequest`` on stdin, the response on stdout."""
    from google.protobuf.compiler.plugin_pb2 import CodeGeneratorRequest

    request = CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())


# --- names -------------------------------------------------------------------------------------------------


def _module_path(proto_name: str) -> str:
    """``shop/users.proto`` -> ``shop/users``: where protoc's Python generator puts ``users_pb2.py``."""
    return proto_name.removesuffix(".proto").replace("-", "_")


def _pb2_module(proto_name: str) -> str:
    """The import name of protoc's module for ``proto_name``, as protoc's Python generator names it."""
    return _module_path(proto_name).replace("/", ".") + "_pb2"


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


# What a generated producer inherits from event.services.ServiceProducer: an rpc of such a name gets a "_".
_PRODUCER_ATTRIBUTES = frozenset(("close", "publisher", "service"))


def _python_name(name: str) -> str:
    """An rpc's method name in Python: its own, unless a keyword or an attribute of the producer's base."""
    return f"{name}_" if keyword.iskeyword(name) or name in _PRODUCER_ATTRIBUTES else name


def _message_index(files: Iterable[FileDescriptorProto]) -> dict[str, tuple[str, str]]:
    """Every message's full name (``.pkg.Outer.Inner``) -> (its protoc module, its attribute path)."""
    index: dict[str, tuple[str, str]] = {}

    def add(module: str, prefix: str, path: str, messages: Iterable[Any]) -> None:
        for message in messages:
            full = f"{prefix}.{message.name}"
            attribute = f"{path}.{message.name}" if path else message.name
            index[full] = (module, attribute)
            add(module, full, attribute, message.nested_type)

    for file in files:
        add(_pb2_module(file.name), f".{file.package}" if file.package else "", "", file.message_type)
    return index


def _routing_key_option(options: Any) -> str | None:
    """The string of option :data:`ROUTING_KEY_OPTION` in a method's options, or None.

    The plugin does not know the user's extension, so protobuf keeps it as an unknown field; in a process
    that imported the module declaring it (as tests do), it is a known extension."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    for descriptor, value in options.ListFields():
        if descriptor.number == ROUTING_KEY_OPTION and isinstance(value, str):
            return value

    fields: Any = UnknownFieldSet(options)  # iterable; its stub does not say so
    for field in fields:
        if field.field_number == ROUTING_KEY_OPTION and isinstance(field.data, bytes):
            return field.data.decode()
    return None


def _comments(file: FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(location.path): location.leading_comments.strip()
        for location in file.source_code_info.location
        if location.leading_comments.strip()
    }


# --- the module --------------------------------------------------------------------------------------------


class _Module:
    """The text of one generated module, and the protoc modules it imports (with their aliases)."""

    def __init__(self, messages: dict[str, tuple[str, str]]) -> None:
        self.messages = messages
        self.imports: dict[str, str] = {}  # protoc module -> alias
        self.lines: list[str] = []
        self.names: set[str] = set()  # the module's own names

    def define(self, name: str, what: str) -> str:
        """``name`` as a new name of the module, unless another service or rpc made it already."""
        if name in self.names:
            raise ValueError(f"{what} clashes with another's generated name {name}")
        self.names.add(name)
        return name

    def type(self, full_name: str) -> str:
        """The Python expression of the message class ``full_name`` (``.pkg.Msg``)."""
        try:
            module, attribute = self.messages[full_name]
        except KeyError:
            raise ValueError(f"message {full_name} is not among the files protoc passed") from None
        alias = self.imports.setdefault(module, "_" + module.replace(".", "_"))
        return f"{alias}.{attribute}"

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)


def _render(file: FileDescriptorProto, messages: dict[str, tuple[str, str]]) -> str:
    module = _Module(messages)
    comments = _comments(file)
    names: list[str] = []
    for index, service in enumerate(file.service):
        names.extend(_render_service(module, file, index, service, comments))
    header = [
        f'"""Typed producers, servicer protocols and registrations for {file.name}.',
        "",
        "Generated by protoc-gen-event (event.protoc_plugin): DO NOT EDIT.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Mapping",
        "from datetime import datetime, timedelta",
        "from typing import Any, Literal, Protocol, overload",
        "",
        "from event import Contract, Message, WorkerPool",
        "from event import services as _services",
    ]
    for imported, alias in sorted(module.imports.items()):
        package, _, name = imported.rpartition(".")
        header.append(f"from {package} import {name} as {alias}" if package else f"import {name} as {alias}")
    header += ["", "__all__ = [", *(f'    "{name}",' for name in sorted(names)), "]"]
    return "\n".join([*header, *module.lines]) + "\n"


def _render_service(
    module: _Module, file: FileDescriptorProto, index: int, service: Any, comments: dict[tuple[int, ...], str]
) -> list[str]:
    full = f"{file.package}.{service.name}" if file.package else service.name
    prefix = _snake(service.name).upper()
    rpcs: list[tuple[str, str, str, str | None, str]] = []  # (method, constant, request, response, doc)
    seen: set[str] = set()
    for number, method in enumerate(service.method):
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"rpc {full}.{method.name} streams: a queue carries one message per request")
        name = _python_name(method.name)
        taken = {name, f"{name}_in", f"{name}_at"}
        if taken & seen:
            raise ValueError(
                f"service {full}: rpc {method.name} clashes with another's methods {sorted(taken & seen)}"
            )
        seen |= taken
        key = _routing_key_option(method.options) or f"{full}.{method.name}"
        constant = module.define(f"{prefix}_{_snake(method.name).upper()}", f"rpc {full}.{method.name}")
        doc = comments.get((_SERVICE_PATH, index, _METHOD_PATH, number), "") or f"{full}.{method.name}"
        request = module.type(method.input_type)
        response = None if method.output_type == EMPTY else module.type(method.output_type)
        module.add(
            "",
            "",
            f"{constant} = Contract(",
            f"    {key!r},",
            f"    {request},",
            f"    description={_first_line(doc)!r},",
            ")",
        )
        rpcs.append((name, constant, request, response, doc))
    service_doc = comments.get((_SERVICE_PATH, index), "")
    module.define(prefix, f"service {full}")
    module.add(
        "",
        f"{prefix} = _services.Service(",
        f"    {full!r},",
        "    (",
        *(
            f"        _services.Rpc({name!r}, {constant}, {response or 'None'}),"
            for name, constant, _, response, _ in rpcs
        ),
        "    ),",
        ")",
    )
    what = f"service {full}"
    producer = module.define(f"{service.name}Producer", what)
    servicer = module.define(f"{service.name}Servicer", what)
    register = module.define(_register_name(service), what)
    module.add("", "", f"class {producer}(_services.ServiceProducer):")
    module.add(*_docstring(_joined(f"Publishes the requests of {full}.", service_doc), "    "))
    module.add("", f"    service = {prefix}")
    for name, constant, request, response, doc in rpcs:
        module.add(*_producer_methods(name, constant, request, response, doc))
    module.add("", "", f"class {servicer}(Protocol):")
    module.add(
        *_docstring(
            _joined(
                f"What serves {full}: one method per rpc, given each request as a typed message.", service_doc
            ),
            "    ",
        )
    )
    for name, _, request, response, doc in rpcs:
        module.add(
            "",
            f"    async def {name}(self, ctx: Any, msg: Message[{request}]) -> {response or 'None'}:",
            *_docstring(doc, "        "),
            "        ...",
        )
    module.add(
        "",
        "",
        f"def {register}(",
        "    pool: WorkerPool,",
        f"    servicer: {servicer},",
        "    *,",
        "    methods: Mapping[str, Mapping[str, Any]] | None = None,",
        "    replier: _services.Replier | None = None,",
        "    **consumer_options: Any,",
        ") -> _services.Registration:",
        *_docstring(
            f"Register one consumer of ``pool`` per rpc of {full}, each calling ``servicer``'s method.\n\n"
            "``consumer_options`` are those of ``pool.consumer`` for every rpc; ``methods`` maps an rpc's "
            "name to options of its own, which win. Close the returned registration after ``pool.run``.",
            "    ",
        ),
        f"    return _services.register(pool, {prefix}, servicer, methods, consumer_options, replier)",
    )
    return [*(constant for _, constant, _, _, _ in rpcs), prefix, producer, servicer, register]


def _register_name(service: Any) -> str:
    return f"register_{_snake(service.name)}"


def _joined(summary: str, comment: str) -> str:
    return f"{summary}\n\n{comment}" if comment else summary


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def _docstring(text: str, indent: str) -> list[str]:
    lines = [line.rstrip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"') for line in text.split("\n")]
    if len(lines) == 1:
        return [f'{indent}"""{lines[0]}"""']
    return [
        f'{indent}"""{lines[0]}',
        *(f"{indent}{line}" if line else "" for line in lines[1:]),
        f'{indent}"""',
    ]


_OPTIONS = "headers: Mapping[str, Any] | None = None, message_id: str | None = None"


def _producer_methods(name: str, constant: str, request: str, response: str | None, doc: str) -> list[str]:
    summary = _first_line(doc)
    delayed = [
        "",
        f"    async def {name}_in(",
        f"        self, delay: float | timedelta, request: {request}, *, {_OPTIONS}",
        "    ) -> None:",
        f'        """Publish ``request`` for delivery after ``delay``: {summary}"""',
        f"        await self._publish_in({constant}, delay, request, headers=headers, message_id=message_id)",
        "",
        f"    async def {name}_at(",
        f"        self, when: datetime, request: {request}, *, {_OPTIONS}",
        "    ) -> None:",
        f'        """Publish ``request`` for delivery at ``when``: {summary}"""',
        f"        await self._publish_at({constant}, when, request, headers=headers, message_id=message_id)",
    ]
    if response is None:
        return [
            "",
            f"    async def {name}(",
            f"        self, request: {request}, *, {_OPTIONS}, mandatory: bool = False",
            "    ) -> None:",
            *_docstring(doc, "        "),
            f"        await self._publish({constant}, request, headers=headers, message_id=message_id, "
            "mandatory=mandatory)",
            *delayed,
        ]
    return [
        "",
        "    @overload",
        f"    async def {name}(",
        f"        self, request: {request}, *, reply: Literal[False] = False, {_OPTIONS},",
        "        mandatory: bool = False,",
        "    ) -> None: ...",
        "",
        "    @overload",
        f"    async def {name}(",
        f"        self, request: {request}, *, reply: Literal[True], timeout: float = ..., {_OPTIONS}",
        f"    ) -> {response}: ...",
        "",
        f"    async def {name}(",
        f"        self, request: {request}, *, reply: bool = False, timeout: float | None = None,",
        f"        {_OPTIONS},",
        "        mandatory: bool = False,",
        f"    ) -> {response} | None:",
        *_docstring(
            f"{doc}\n\nWith ``reply=True``, wait up to ``timeout`` seconds for the servicer's "
            f"{response.split('.')[-1]}.",
            "        ",
        ),
        "        if reply:",
        f"            return await self._call({constant}, {response}, request, timeout=timeout, "
        "headers=headers, message_id=message_id)",
        f"        await self._publish({constant}, request, headers=headers, message_id=message_id, "
        "mandatory=mandatory)",
        "        return None",
        *delayed,
    ]


if __name__ == "__main__":
    main()
