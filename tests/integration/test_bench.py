"""`event bench --json` runs every phase, each system in its own process, and prints one JSON object."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

SYSTEMS = ("event", "pika", "aio_pika")
RATES = [f"{phase}_{system}_per_s" for phase in ("consume", "publish") for system in SYSTEMS]
CPU = [f"{phase}_{system}_cpu_us" for phase in ("consume", "publish") for system in SYSTEMS]
RATIOS = [f"{phase}_ratio_{anchor}" for phase in ("consume", "publish") for anchor in ("pika", "aio_pika")]


def bench(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "event.cli", "bench", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_bench_json_reports_every_figure_and_ratio(amqp_url: str, loop: str) -> None:
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed")
    result = bench(
        "--jobs", "3000", "--routing-keys", "3", "--window", "100", "--loop", loop, "--json",
        env={**os.environ, "AMQP_URL": amqp_url}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    figures = json.loads(line)
    assert set(figures) == {
        "jobs", "routing_keys", "window", "loop", *RATES, *RATIOS, *CPU, "peak_rss_mb", "hold_rss_mb", "held",
    }  # fmt: skip
    for key in [*RATES, *RATIOS, *CPU, "peak_rss_mb"]:
        assert figures[key] > 0, key
    for phase in ("consume", "publish"):
        for anchor in ("pika", "aio_pika"):
            expected = figures[f"{phase}_event_per_s"] / figures[f"{phase}_{anchor}_per_s"]
            assert figures[f"{phase}_ratio_{anchor}"] == pytest.approx(expected, rel=0.01), (phase, anchor)
    assert (figures["jobs"], figures["routing_keys"], figures["window"]) == (3000, 3, 100)
    assert figures["loop"] == loop  # every child checked that it ran on it
    assert figures["held"] == 3000
    assert 0 < figures["hold_rss_mb"] < 100


def test_bench_rejects_bad_arguments() -> None:
    result = bench("--jobs", "0")
    assert result.returncode == 2
    assert "--jobs must be at least 1" in result.stderr
    result = bench("--window", "0")
    assert result.returncode == 2
    assert "--window must be at least 1" in result.stderr
    result = bench("--loop", "trio")
    assert result.returncode == 2
    assert "invalid choice: 'trio'" in result.stderr


def test_bench_without_its_extra_names_the_install() -> None:
    # pika hidden from the import system, as in an install without the bench extra
    code = (
        "import sys; sys.modules['pika'] = None; from event.cli import main; "
        "raise SystemExit(main(['bench', '--jobs', '10']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "event bench measures against pika, which is not installed" in result.stderr
    assert "pip install 'rabbit-event[bench]'" in result.stderr
