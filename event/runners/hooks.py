"""The dead-letter hook: tell a URL or a command about each message that went to the dead queue.

Given to the pool as ``WorkerPool(on_dead=hook)``; the dispatcher calls it once the dead copy is
confirmed by the broker, so the hook can never lose a message: it only reports one that is stored.
The call returns at once (the work runs in a task of the hook's own), so it does not delay the ack;
a hook that fails or hangs is logged, with everything it was to be told, and the worker goes on.

- a URL (``http://``, ``https://``) gets a POST of a JSON object: ``message_id``, ``routing_key``,
  ``queue``, ``dead_queue``, ``error``, ``attempt``;
- a command (split like a shell would, but never run through one) gets the same JSON on stdin and
  ``EVENT_MESSAGE_ID``, ``EVENT_ROUTING_KEY``, ``EVENT_QUEUE``, ``EVENT_DEAD_QUEUE``, ``EVENT_ERROR``,
  ``EVENT_ATTEMPT`` in its environment; exit 0 is success.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

from event.config import check_count, check_seconds, redact_url
from event.errors import ConfigurationError
from event.message import DeadLetter
from event.runners.command import check_command, feed_stdin

if TYPE_CHECKING:
    from pyreqwest.client import Client

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RUNNING = 4  # hook calls at once: the hook is told in the background, never on the hot path
DEFAULT_BACKLOG = 10_000  # letters waiting for a free call; beyond that they are only logged


class DeadHook:
    """Calls ``target`` (a URL or a command line) for every :class:`DeadLetter`, in the background.

    At most ``running`` calls run at once, each for at most ``timeout`` seconds; up to ``backlog``
    letters wait for their turn. Call :meth:`close` after the pool stops, to finish what is waiting.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        running: int = DEFAULT_RUNNING,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        self.target = target
        self.is_url = urlsplit(target).scheme in ("http", "https")
        if self.is_url:
            try:
                from event.runners.http import check_url
            except ImportError as exc:
                raise ConfigurationError(
                    f'a URL on_dead hook needs pyreqwest: pip install "rabbit-event[proxy]" ({exc})'
                ) from exc
            check_url(target)
            self.argv: list[str] = []
        else:
            self.argv = check_command(shlex.split(target))
        self.timeout = check_seconds("on_dead timeout", timeout, allow_zero=False)
        self.backlog = check_count("on_dead backlog", backlog, minimum=1)
        self._slots_count = check_count("on_dead running", running, minimum=1)
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Client | None = None
        self.told = 0  # letters the hook accepted (for tests and logs)
        self.failed = 0

    def __repr__(self) -> str:
        return f"DeadHook({redact_url(self.target) if self.is_url else self.argv!r})"

    def __call__(self, letter: DeadLetter) -> None:
        """Start telling the hook about ``letter``; returns at once."""
        if len(self._tasks) >= self.backlog:
            self.failed += 1
            log.error("on_dead hook %r is %d letters behind; not told of: %s", self, len(self._tasks),
                      _as_json(letter))  # fmt: skip
            return
        task = asyncio.get_running_loop().create_task(self._tell(letter))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell(self, letter: DeadLetter) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._slots_count)
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout):
                    if self.is_url:
                        await self._post(letter)
                    else:
                        await self._run(letter)
            except Exception as exc:
                self.failed += 1
                log.error("on_dead hook %r failed (%s: %s); it was to be told: %s", self,
                          type(exc).__name__, exc, _as_json(letter))  # fmt: skip
                return
            self.told += 1

    async def _post(self, letter: DeadLetter) -> None:
        from event.runners.http import http_client  # an extra, needed only for a URL hook (see __init__)

        if self._client is None:
            self._client = http_client(self.timeout)
        request = self._client.post(self.target).headers({"Content-Type": "application/json"})
        async with request.body_bytes(_as_json(letter)).build_streamed() as response:
            await response.bytes()
            if response.status >= 300:
                raise RuntimeError(f"it answered {response.status}")

    async def _run(self, letter: DeadLetter) -> None:
        env = {
            **os.environ,
            **{f"EVENT_{k.upper()}": "" if v is None else str(v) for k, v in _fields(letter).items()},
        }
        child = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            # The letter is written as the exec runner writes a body: a hook that exits without reading
            # it is judged by its exit status, on uvloop too (see feed_stdin).
            _, (_, stderr) = await asyncio.gather(feed_stdin(child, _as_json(letter)), child.communicate())
        finally:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, 9)
                await child.wait()
        if child.returncode != 0:
            said = stderr[-300:].decode(errors="replace")
            raise RuntimeError(f"it exited with {child.returncode}: {said!r}")

    async def close(self, timeout: float = 30.0) -> None:
        """Wait up to ``timeout`` seconds for the letters in hand, then cancel what is left."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in set(self._tasks):
            task.cancel()
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _fields(letter: DeadLetter) -> dict[str, object]:
    return {field.name: getattr(letter, field.name) for field in dataclasses.fields(letter)}


def _as_json(letter: DeadLetter) -> bytes:
    return orjson.dumps(_fields(letter))
