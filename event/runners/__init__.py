"""Runners: consumers whose handler is not Python code but an HTTP app or a command.

- :mod:`event.runners.http` POSTs each message to a URL (``event proxy``, ``pool.proxy(...)``);
- :mod:`event.runners.command` runs a command per message (``event exec``, ``pool.command(...)``);
- :mod:`event.runners.hooks` tells a URL or a command about each message that goes to the dead queue;
- :mod:`event.runners.counts` counts HTTP statuses and exit codes for ``/metrics``;
- :mod:`event.workers_file` (a floor above, since it builds pools) reads several runners from a TOML
  file (``event worker --config``).

Each handler only says what happened, through the pool's own signals: it returns (ack), raises
:class:`event.Retry` (retry at a chosen delay), :class:`event.Dead` (dead queue at once) or any other
exception (retry with back-off, then the dead queue). The pool's dispatch does the rest.
"""
