"""The errors `event` raises.

Every error derives from :class:`EventError`, so ``except EventError`` catches anything the library
raises on its own account::

    EventError
    ├── ConfigurationError      a setting, a name or the broker's topology is not usable as given
    │   └── TopologyMismatch    an exchange or queue exists on the broker with other properties
    ├── ConnectionFailed        the broker cannot be reached, refused the login, or the connection closed
    ├── PublishError            a message was not accepted by the broker
    │   ├── PublishNacked       the broker answered a publish with a nack
    │   ├── Unroutable          a mandatory publish matched no queue and came back
    │   └── PublishTimeout      no confirm arrived in time
    ├── PayloadError            a delivery's body cannot be turned into what the handler expects
    │   ├── DecodeError         the body is not JSON, or its content type is not JSON
    │   └── ValidationError     the decoded body does not fit the handler's declared type
    └── ReplyError              a request sent for its answer (event.replies) got none
        ├── RemoteError         the servicer raised: its exception's type and message
        └── ReplyTimeout        no answer came within the request's timeout

The signals a handler raises on purpose (:class:`event.Retry`, :class:`event.Dead`) live in
``event.signals`` and are not errors of the library.

Every message names the thing at fault (queue, routing key, URL without its password) and the way out.
"""

from __future__ import annotations


class EventError(Exception):
    """Base class of every error raised by `event`."""


class ConfigurationError(EventError, ValueError):
    """A setting, name or option is out of range or malformed; raised before anything is sent."""


class TopologyMismatch(ConfigurationError):
    """An exchange or queue already exists on the broker with properties other than the ones declared."""


class ConnectionFailed(EventError, ConnectionError):
    """The broker is unreachable, refused the credentials, or the connection was lost."""


class PublishError(EventError):
    """The broker did not accept a published message."""


class PublishNacked(PublishError):
    """The broker answered a publish with ``basic.nack``: the message was not stored."""


class Unroutable(PublishError):
    """A publish with ``mandatory=True`` matched no queue, so the broker returned it."""


class PublishTimeout(PublishError, TimeoutError):
    """No publisher confirm arrived within the publish timeout; the message may or may not be stored."""


class PayloadError(EventError):
    """A delivery's body cannot be given to the handler; the message goes to the dead queue."""


class DecodeError(PayloadError):
    """The body is not valid JSON, or its ``content_type`` is not ``application/json``."""


class ValidationError(PayloadError):
    """The decoded body does not fit the payload type the handler declared."""


class ReplyError(EventError):
    """A request sent for its answer (:mod:`event.replies`) got none."""


class RemoteError(ReplyError):
    """The servicer of a request raised instead of answering: ``type`` and ``detail`` are its exception's
    class name and message (the request went to the dead queue, not retried: the caller decides)."""

    def __init__(self, routing_key: str, type: str, detail: str) -> None:
        super().__init__(f"the servicer of {routing_key!r} raised {type}: {detail}")
        self.routing_key = routing_key
        self.type = type
        self.detail = detail


class ReplyTimeout(ReplyError, TimeoutError):
    """No answer came within the request's timeout: no servicer consumed it in time, or it is slow. A late
    answer is dropped; the request expires from its queue when its timeout has passed."""
