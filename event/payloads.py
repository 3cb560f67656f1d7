"""Typed payloads: a handler that declares a payload type gets the body validated and converted.

A handler opts in with ``msg: Message[SendEmail]`` (``msg.body`` is then a ``SendEmail``) or with a third
parameter ``payload: SendEmail``. ``SendEmail`` may be a dataclass, a ``TypedDict`` (the body stays a dict,
checked), a pydantic model when pydantic is installed, or a protobuf message class (read from its binary
form or from JSON, by content type: see :mod:`event.protobuf`). A body that does not fit raises
:class:`ValidationError` naming each field at fault; the message goes to the dead queue at once, since
retrying cannot fix it. Keys the type does not know are ignored, so publishers can add fields first.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

from event import protobuf
from event.errors import ConfigurationError, ValidationError
from event.message import Message

Convert = Callable[[Any], Any]
Load = Callable[[bytes, str | None], Any]


@dataclasses.dataclass(frozen=True)
class PayloadSpec:
    """How a handler wants its payload: converted by ``convert``, and passed as a third argument or not.

    ``load``, when set, reads the raw body (bytes, content type) itself instead of the JSON path's
    decode-then-``convert``: a protobuf message's body need not be JSON.
    """

    type: Any
    convert: Convert
    as_argument: bool
    load: Load | None = None


def payload_spec(handler: Callable[..., Any]) -> PayloadSpec | None:
    """The payload type a handler declares, or None for an untyped handler (it gets the decoded JSON)."""
    where = getattr(handler, "__qualname__", repr(handler))
    params = list(inspect.signature(handler).parameters.values())
    if len(params) >= 3 and params[2].name == "payload":
        wanted, as_argument = _annotation(handler, "payload", where), True
    elif (
        len(params) >= 2
        and get_origin(message := _batch_item(_annotation(handler, params[1].name, where))) is Message
    ):
        wanted, as_argument = get_args(message)[0], False
    else:
        return None
    if wanted is Any or wanted is dict or wanted is object:
        return None if not as_argument else PayloadSpec(wanted, lambda body: body, True)
    load = protobuf.loader(wanted) if protobuf.is_message_type(wanted) else None
    return PayloadSpec(wanted, converter(wanted, where), as_argument, load)


def _batch_item(annotation: Any) -> Any:
    """``Message[T]`` of a batch consumer's ``list[Message[T]]`` (or a sequence of it); else as given."""
    if get_origin(annotation) in (list, collections.abc.Sequence) and get_args(annotation):
        return get_args(annotation)[0]
    return annotation


def _annotation(handler: Callable[..., Any], name: str, where: str) -> Any:
    """One parameter's annotation, resolved. Only the ones that matter are read: the context's type may
    be a class local to a function, which ``get_type_hints`` on the whole handler could not resolve."""
    annotation = getattr(handler, "__annotations__", {}).get(name, Any)
    if not isinstance(annotation, str):
        return annotation
    scope = dict(getattr(handler, "__globals__", {}))
    scope.update(inspect.getclosurevars(handler).nonlocals)
    try:
        return eval(annotation, scope)  # what get_type_hints does with a string annotation
    except NameError as exc:
        raise ConfigurationError(
            f"cannot resolve the annotation {annotation!r} of {name!r} in handler {where} ({exc}): "
            f"define the payload type at module level"
        ) from exc


def converter(wanted: Any, where: str = "the handler") -> Convert:
    """A function turning a decoded body into ``wanted``, raising :class:`ValidationError`."""
    if isinstance(wanted, type) and dataclasses.is_dataclass(wanted):
        return lambda body: _to_dataclass(wanted, body, "")
    if is_typeddict(wanted):
        return lambda body: _check_typeddict(wanted, body, "")
    validate = getattr(wanted, "model_validate", None)
    if validate is not None:  # a pydantic model
        return lambda body: _pydantic(wanted, body)
    if protobuf.is_message_type(wanted):
        return protobuf.converter(wanted)
    raise ConfigurationError(
        f"payload type {wanted!r} of {where} is not a dataclass, a TypedDict, a pydantic model or a "
        f"protobuf message"
    )


def _to_dataclass(cls: type, body: Any, path: str) -> Any:
    if not isinstance(body, dict):
        raise ValidationError(
            f"{path or 'payload'}: expected a JSON object for {cls.__name__}, got {_kind(body)}"
        )
    hints = get_type_hints(cls)
    errors: list[str] = []
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = f"{path}.{f.name}" if path else f.name
        if f.name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"field {name!r}: missing")
            continue
        try:
            values[f.name] = _convert(hints.get(f.name, Any), body[f.name], name)
        except ValidationError as exc:
            errors.append(str(exc))
    if errors:
        raise ValidationError("; ".join(errors))
    return cls(**values)


def _check_typeddict(cls: Any, body: Any, path: str) -> Any:
    if not isinstance(body, dict):
        raise ValidationError(
            f"{path or 'payload'}: expected a JSON object for {cls.__name__}, got {_kind(body)}"
        )
    hints = get_type_hints(cls)
    errors = [
        f"field {(path + '.' if path else '') + key!r}: missing"
        for key in cls.__required_keys__
        if key not in body
    ]
    for key, hint in hints.items():
        if key in body:
            try:
                body[key] = _convert(hint, body[key], f"{path}.{key}" if path else key)
            except ValidationError as exc:
                errors.append(str(exc))
    if errors:
        raise ValidationError("; ".join(errors))
    return body


def _pydantic(cls: Any, body: Any) -> Any:
    try:
        return cls.model_validate(body)
    except Exception as exc:  # pydantic.ValidationError, without importing pydantic
        errors = getattr(exc, "errors", None)
        if callable(errors):
            parts = [
                f"field {'.'.join(map(str, e.get('loc', ()))) or 'payload'!r}: {e.get('msg')}"
                for e in errors()
            ]
            raise ValidationError("; ".join(parts)) from exc
        raise ValidationError(str(exc)) from exc


def _convert(hint: Any, value: Any, name: str) -> Any:
    """``value`` checked (shallowly, recursively into containers) against ``hint``, converted where needed."""
    origin = get_origin(hint)
    if hint is Any or hint is typing.Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, name)
            except ValidationError as exc:
                problems.append(str(exc))
        raise ValidationError(
            problems[0] if len(problems) == 1 else f"field {name!r}: {_kind(value)} fits none of {hint}"
        )
    if origin is Literal:
        if value in get_args(hint):
            return value
        raise ValidationError(f"field {name!r}: {value!r} is not one of {get_args(hint)}")
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        if not isinstance(value, list):
            raise ValidationError(f"field {name!r}: expected a list, got {_kind(value)}")
        args = get_args(hint)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
        return items if origin in (list, None) else (origin or list)(items)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValidationError(f"field {name!r}: expected an object, got {_kind(value)}")
        args = get_args(hint)
        return {k: _convert(args[1], v, f"{name}.{k}") for k, v in value.items()} if args else value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _to_dataclass(hint, value, name)
    if is_typeddict(hint):
        return _check_typeddict(hint, value, name)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValidationError(f"field {name!r}: expected a number, got {_kind(value)}")
    if hint is int or hint is str or hint is bool:
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise ValidationError(f"field {name!r}: expected {hint.__name__}, got {_kind(value)}")
    if getattr(hint, "model_validate", None) is not None:
        return _pydantic(hint, value)
    if protobuf.is_message_type(hint):  # a protobuf message nested in a JSON payload: its JSON mapping
        try:
            return protobuf.converter(hint)(value)
        except ValidationError as exc:
            raise ValidationError(f"field {name!r}: {exc}") from exc
    return value  # a type we do not check: passed through as decoded


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)
