"""Log output for the ``event`` command: plain text, or one JSON object per line for log shippers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

# The fields the dispatcher attaches to every failure record (see dispatch.py).
CONTEXT_FIELDS = ("message_id", "routing_key", "queue", "attempt")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the message context, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str, style: str) -> None:
    """Send the library's logs to stderr at ``level``, as ``text`` or ``json``."""
    handler = logging.StreamHandler()
    if style == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
