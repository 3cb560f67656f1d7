"""Exceptions a handler raises on purpose to steer what happens to its message.

They are not errors of the library (see ``event.errors``): they are the handler's way to say
"try again later" or "give up on this one".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from event.message import Message


class Retry(Exception):
    """Retry this message later, counting the attempt.

    ``in_`` chooses the delay (seconds or a ``timedelta``); ``None`` uses the consumer's back-off.
    """

    def __init__(self, reason: str = "retry requested", *, in_: float | timedelta | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay: float | None = in_.total_seconds() if isinstance(in_, timedelta) else in_


class Dead(Exception):
    """Send this message straight to the dead queue, skipping any retries left."""

    def __init__(self, reason: str = "sent to the dead queue by the handler") -> None:
        super().__init__(reason)
        self.reason = reason


class BatchFailed(Exception):
    """Raised by a batch handler: these messages of the batch failed, the others are done.

    ``failed`` lists the messages (as the handler got them) to retry through the consumer's retry
    rules, each with ``error`` (or this exception) as its failure; the rest of the batch is acked."""

    def __init__(
        self, failed: Iterable[Message[Any]], error: BaseException | None = None, reason: str = ""
    ) -> None:
        self.failed = list(failed)
        self.error = error
        super().__init__(reason or (str(error) if error is not None else f"{len(self.failed)} failed"))
