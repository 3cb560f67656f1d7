"""Which event loop a process runs on: uvloop when it is installed (measurably faster), else asyncio's.

One rule, used by the CLI (``event worker``, ``event proxy``, ``event exec`` ...), by ``event bench``'s
``--loop`` and by the test suite's ``--loop`` option (tests/conftest.py), so that what the suite runs on by
default is what production runs on. ``auto`` is that rule; ``asyncio`` or ``uvloop`` insists on one.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from event.errors import ConfigurationError

LOOPS = ("auto", "asyncio", "uvloop")
INSTALL_HINT = "pip install 'rabbit-event[uvloop]'"

T = TypeVar("T")


def resolve_loop(loop: str = "auto") -> str:
    """``asyncio`` or ``uvloop``: ``auto`` is uvloop when it is installed; ``uvloop`` insists on it."""
    if loop not in LOOPS:
        raise ConfigurationError(f"loop must be one of {', '.join(LOOPS)}, not {loop!r}")
    if loop == "asyncio":
        return loop
    try:
        importlib.import_module("uvloop")  # optional: the uvloop extra
    except ImportError as exc:
        if loop == "uvloop":
            raise ConfigurationError(f"the uvloop loop needs uvloop: {INSTALL_HINT} ({exc})") from exc
        return "asyncio"
    return "uvloop"


def loop_factory(loop: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of the kind :func:`resolve_loop` picks (for ``asyncio.Runner``)."""
    if resolve_loop(loop) == "uvloop":
        new_loop: Callable[[], asyncio.AbstractEventLoop] = importlib.import_module("uvloop").new_event_loop
        return new_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run ``main`` to completion on a new loop of the kind :func:`resolve_loop` picks, as ``asyncio.run``."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)
