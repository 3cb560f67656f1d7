"""The command runner: each message runs a command (never through a shell); its exit says what happened.

The body's ``args`` list (goophry's ``Args`` too), strings only, is appended to the command's argv,
each item one literal argument; the whole body is on stdin; ``EVENT_ROUTING_KEY``,
``EVENT_MESSAGE_ID``, ``EVENT_ATTEMPT`` and ``EVENT_QUEUE`` are in its environment::

    exit 0                ack
    exit 75 (EX_TEMPFAIL) Retry: back-off, then the dead queue
    any other exit        an ordinary failure: back-off, then the dead queue
    timeout               the process group is killed; an ordinary failure
    args not strings      Dead: the body can never run

The child runs in a process group of its own, so that a timeout or a cancelled shutdown kills all
it started, and a Ctrl-C at the terminal reaches the worker alone (which then drains in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from event.config import check_count, check_seconds
from event.errors import ConfigurationError
from event.message import Message
from event.runners.counts import OutcomeCounts
from event.signals import Dead, Retry

log = logging.getLogger(__name__)

EX_TEMPFAIL = 75
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_OUTPUT_BYTES = 4096  # of stdout and of stderr, per message, logged (the last bytes)
ERROR_TAIL_BYTES = 400  # of stderr in event-error (the header is cut at 1 KiB)
ARGS_FIELDS = ("args", "Args")
KILL_WAIT_S = 5.0

CommandHandler = Callable[[Any, Message[Any]], Awaitable[None]]


class CommandFailed(Exception):
    """The command exited with a status other than 0 or 75, was killed by a signal, or ran too long."""


def check_command(argv: Sequence[str]) -> list[str]:
    """``argv`` with its program resolved on ``$PATH``; ConfigurationError when it cannot be run."""
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigurationError(f"command must be a non-empty list of strings, not {argv!r}")
    program = argv[0]
    found = shutil.which(program) if os.sep not in program else program
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise ConfigurationError(f"command {program!r} is not an executable file (nor one on $PATH)")
    return [found, *argv[1:]]


def extra_args(body: Any) -> list[str]:
    """The arguments a message adds: its ``args`` (or ``Args``) list; :class:`Dead` when not strings."""
    if not isinstance(body, dict):
        return []
    for name in ARGS_FIELDS:
        if name in body:
            given = body[name]
            if not isinstance(given, list):
                raise Dead(f"the body's {name!r} must be a list of strings, not {type(given).__name__}")
            for index, item in enumerate(given):
                if not isinstance(item, str):
                    raise Dead(f"the body's {name!r} must hold strings only: item {index} is "
                               f"{type(item).__name__} {item!r}"[:300])  # fmt: skip
            return list(given)
    return []


def tail(data: bytes, limit: int) -> str:
    """The last ``limit`` bytes of ``data`` as text."""
    cut = data[-limit:] if limit else b""
    return ("..." if len(data) > len(cut) else "") + cut.decode(errors="replace")


class CommandRunner:
    """Runs ``argv`` plus the message's ``args`` for each message; :attr:`handler` is a consumer's.

    ``timeout`` kills the child's process group after that many seconds. The last ``output_bytes``
    of its stdout and of its stderr are logged per message (more is read, and dropped); the tail of
    stderr goes into the error of a failed message. ``env`` adds to the worker's environment.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        output_bytes: int = DEFAULT_OUTPUT_BYTES,
        counts: OutcomeCounts | None = None,
    ) -> None:
        self.argv = check_command(argv)
        self.name = os.path.basename(self.argv[0])
        self.timeout = check_seconds("command timeout", timeout, allow_zero=False)
        self.env = dict(env or {})
        self.output_bytes = check_count("output_bytes", output_bytes)
        self.counts = counts or OutcomeCounts()
        self.handler = self._make_handler()

    def __repr__(self) -> str:
        return f"CommandRunner({self.argv!r})"

    def _make_handler(self) -> CommandHandler:
        async def command(ctx: Any, msg: Message[Any]) -> None:
            await self.run(msg)

        command.__qualname__ = f"command {self.name}"
        return command

    async def run(self, msg: Message[Any]) -> None:
        """Run the command for ``msg``; return on exit 0, raise what any other end means."""
        try:
            args = extra_args(msg.body)
        except Dead:
            self.counts.count(msg.queue, "bad args")
            raise
        env = {
            **os.environ,
            **self.env,
            "EVENT_ROUTING_KEY": msg.routing_key,
            "EVENT_MESSAGE_ID": msg.message_id or "",
            "EVENT_ATTEMPT": str(msg.attempt),
            "EVENT_QUEUE": msg.queue,
        }
        child = await asyncio.create_subprocess_exec(
            *self.argv, *args, env=env, start_new_session=True, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        keep = max(self.output_bytes, ERROR_TAIL_BYTES)
        assert child.stdout is not None and child.stderr is not None
        out = asyncio.ensure_future(_read_tail(child.stdout, keep))
        err = asyncio.ensure_future(_read_tail(child.stderr, keep))
        timed_out = False
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await feed_stdin(child, msg.raw)
                    code = await child.wait()
                    stdout, stderr = await out, await err
            except TimeoutError:
                timed_out = True
        finally:
            if child.returncode is None:  # a timeout, or this task cancelled (shutdown): kill them all
                await _kill_group(child)
                # What it wrote before dying; a grandchild that left the group may hold the pipes open.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({out, err}, timeout=0.5)
            out.cancel()
            err.cancel()
        if timed_out:
            self.counts.count(msg.queue, "timeout")
            stderr = _result(err)
            self._log(msg, "timeout", _result(out), stderr)
            raise CommandFailed(f"{self.name} ran past its {self.timeout:g} s timeout; its process group "
                                f"was killed; stderr ends: {tail(stderr, ERROR_TAIL_BYTES)!r}")  # fmt: skip
        outcome = f"exit {code}" if code >= 0 else f"signal {-code}"
        self.counts.count(msg.queue, outcome)
        self._log(msg, outcome, stdout, stderr)
        if code == 0:
            return
        text = f"{self.name} exited with {outcome}; stderr ends: {tail(stderr, ERROR_TAIL_BYTES)!r}"
        if code == EX_TEMPFAIL:
            raise Retry(text)
        raise CommandFailed(text)

    def _log(self, msg: Message[Any], outcome: str, stdout: bytes, stderr: bytes) -> None:
        if not self.output_bytes or not (stdout or stderr):
            log.debug("%s for message %s: %s", self.name, msg.message_id, outcome)
            return
        log.info(
            "%s for message %s: %s; stdout: %r; stderr: %r", self.name, msg.message_id, outcome,
            tail(stdout, self.output_bytes), tail(stderr, self.output_bytes),
        )  # fmt: skip


async def feed_stdin(child: asyncio.subprocess.Process, body: bytes) -> None:
    """Write ``body`` to the child's stdin and close it; a child that never reads it is no failure."""
    stdin = child.stdin
    assert stdin is not None
    # A command that does not read its stdin, or exits early, closes the pipe: not a failure of ours, its
    # exit status decides. asyncio's loop says so with BrokenPipeError or ConnectionResetError; uvloop, once
    # it has seen the pipe close, refuses the write with a RuntimeError ("unable to perform operation on
    # <WriteUnixTransport closed=True ...>"): that one only while the transport is indeed closed.
    try:
        stdin.write(body)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    except RuntimeError:
        if not stdin.transport.is_closing():
            raise
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.close()


async def _read_tail(stream: asyncio.StreamReader, limit: int) -> bytes:
    # Read everything the child writes (so it never blocks on a full pipe), keep the last bytes.
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > limit:
            del kept[:-limit]
    return bytes(kept)


def _result(task: asyncio.Future[bytes]) -> bytes:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return b""


async def _kill_group(child: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)  # its own session: the group id is its pid
    # Reap it even when this task is being cancelled, so no zombie is left behind.
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.shield(asyncio.wait_for(child.wait(), KILL_WAIT_S))
