"""`event bench --json` runs every phase, each system in its own process, and prints one JSON object."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

SYSTEMS = ("event", "pika", "aio_pika")
RATES = [f"{phase}_{system}_per_s" for phase in ("consume", "publish") for system in SYSTEMS]
CPU = [f"{phase}_{system}_cpu_us" for phase in ("consume", "publish") for system in SYSTEMS]
RATIOS = [f"{phase}_ratio_{anchor}" for phase in ("consume", "publish") for anchor in ("pika", "aio_pika")]
GO = [
    "go",
    "go_maxprocs",
    *(f"{phase}_{f}" for phase in ("consume", "publish") for f in ("go_per_s", "ratio_go", "go_cpu_us")),
]


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
        "jobs", "routing_keys", "window", "loop", "body_size", "rounds", *RATES, *RATIOS, *CPU, "peak_rss_mb",
        "hold_rss_mb", "held", *GO, "latency",
    }  # fmt: skip
    assert figures["latency"] is None  # only with --latency
    if shutil.which("go") is None:
        assert figures["go"].startswith("not run: Go is not installed"), figures["go"]
    else:  # the compiled anchor ran beside the others, on one core
        assert figures["go"].startswith("amqp091-go") and figures["go_maxprocs"] == 1, figures["go"]
        for phase in ("consume", "publish"):
            assert figures[f"{phase}_go_per_s"] > 0 and figures[f"{phase}_go_cpu_us"] > 0
            expected = figures[f"{phase}_event_per_s"] / figures[f"{phase}_go_per_s"]
            assert figures[f"{phase}_ratio_go"] == pytest.approx(expected, rel=0.01), phase
    for key in [*RATES, *RATIOS, *CPU, "peak_rss_mb"]:
        assert figures[key] > 0, key
    for phase in ("consume", "publish"):
        for anchor in ("pika", "aio_pika"):
            expected = figures[f"{phase}_event_per_s"] / figures[f"{phase}_{anchor}_per_s"]
            assert figures[f"{phase}_ratio_{anchor}"] == pytest.approx(expected, rel=0.01), (phase, anchor)
    assert (figures["jobs"], figures["routing_keys"], figures["window"]) == (3000, 3, 100)
    assert (figures["body_size"], figures["rounds"]) == (0, 3)  # the seed's {"n": n}, three turns
    assert figures["loop"] == loop  # every child checked that it ran on it
    assert figures["held"] == 3000
    assert 0 < figures["hold_rss_mb"] < 100


def test_bench_large_bodies_in_bursts_measures_every_contestant_in_mib_per_second(amqp_url: str) -> None:
    # Two turns of three 200 kB messages each (frames of at most 128 KiB: two body frames a message); the
    # parent checks every consumed queue empty and every publish in the sink, as for small messages.
    result = bench(
        "--jobs", "6", "--rounds", "2", "--body-size", "200000", "--routing-keys", "1", "--loop", "asyncio",
        env={**os.environ, "AMQP_URL": amqp_url}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "bodies of 200000 bytes, in 2 turns of about 3 each" in result.stdout
    assert "MiB/s" in result.stdout
    assert "RSS" not in result.stdout  # no memory phase with a body size: 10,000 of them would not fit
    rows = []
    for line in result.stdout.splitlines():
        words = line.split()
        words = words[1:] if words[:1] in (["consume"], ["publish"]) else words
        if words[:1] in (["event"], ["pika"], ["aio-pika"], ["go"]):
            rows.append(words)  # system, msg/s, MiB/s, CPU µs a message, the ratio
    assert len(rows) == 2 * (4 if shutil.which("go") else 3), result.stdout
    for row in rows:
        # msg/s is printed whole, MiB/s to a tenth: within half a message of 200 kB, and the rounding
        assert float(row[2]) == pytest.approx(float(row[1]) * 200000 / 2**20, abs=0.2), row


def test_bench_without_go_says_so_and_measures_the_rest(amqp_url: str) -> None:
    path = os.path.dirname(sys.executable)  # the interpreter's own folder: no go on it
    result = bench(
        "--jobs", "300", "--routing-keys", "1", "--window", "50", "--loop", "asyncio",
        env={**os.environ, "AMQP_URL": amqp_url, "PATH": path}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "  go: not run: Go is not installed (apt-get install golang-go" in result.stdout
    assert "  consume  event" in result.stdout and "           go " not in result.stdout


def test_bench_latency_reports_percentiles_of_every_contestant_at_three_rates(amqp_url: str) -> None:
    result = bench(
        "--jobs", "900", "--routing-keys", "1", "--window", "50", "--latency", "--latency-seconds", "1",
        "--json", env={**os.environ, "AMQP_URL": amqp_url}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    systems = {"event", "pika"} | ({"go"} if shutil.which("go") else set())
    rows = figures["latency"]
    assert {(row["share"], row["system"]) for row in rows} == {
        (share, system) for share in (0.2, 0.5, 0.8) for system in systems
    }
    top = figures["consume_event_per_s"]
    for row in rows:
        assert row["rate"] == max(1, round(top * row["share"])), row
        assert row["count"] == row["sent"] == max(1, round(row["rate"] * 1.0)), row  # every one arrived
        assert 0 <= row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"], row


def test_bench_rejects_bad_arguments() -> None:
    result = bench("--jobs", "0")
    assert result.returncode == 2
    assert "--jobs must be at least 1" in result.stderr
    result = bench("--window", "0")
    assert result.returncode == 2
    assert "--window must be at least 1" in result.stderr
    result = bench("--body-size", "-1")
    assert result.returncode == 2
    assert "--body-size must be at least 0" in result.stderr
    result = bench("--rounds", "0")
    assert result.returncode == 2
    assert "--rounds must be at least 1" in result.stderr
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
