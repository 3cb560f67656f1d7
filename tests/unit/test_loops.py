"""event.loops: one rule for the loop the CLI, event bench and this suite (its --loop option) run on."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from event import loops
from event.errors import ConfigurationError

UVLOOP = importlib.util.find_spec("uvloop") is not None


def loop_kind() -> str:
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


async def test_the_suite_runs_on_the_loop_its_loop_option_picks(pytestconfig: pytest.Config) -> None:
    assert loop_kind() == loops.resolve_loop(pytestconfig.getoption("--loop"))


@pytest.mark.both_loops
async def test_a_both_loops_test_runs_once_on_each_loop(request: pytest.FixtureRequest) -> None:
    assert request.node.name.endswith(f"[{loop_kind()}]")


def test_auto_is_uvloop_when_installed_and_the_cli_runs_on_it() -> None:
    assert loops.resolve_loop() == loops.resolve_loop("auto") == ("uvloop" if UVLOOP else "asyncio")
    assert loops.run(_kind()) == loops.resolve_loop()
    assert loops.run(_kind(), "asyncio") == "asyncio"


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="loop must be one of auto, asyncio, uvloop, not 'trio'"):
        loops.resolve_loop("trio")


async def _kind() -> str:
    return loop_kind()
