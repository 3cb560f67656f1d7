"""`event bench --json` runs every phase against the broker and prints one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("processes", [1, 2])
def test_bench_json_reports_every_figure(amqp_url: str, processes: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "event.cli", "bench", "--jobs", "3000", "--routing-keys", "3", "--json",
         "--processes", str(processes)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "AMQP_URL": amqp_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    figures = json.loads(line)
    for key in ("jobs_per_s", "baseline_jobs_per_s", "ceiling_jobs_per_s", "publish_per_s", "peak_rss_mb"):
        assert figures[key] > 0, key
    assert abs(figures["ratio"] - figures["jobs_per_s"] / figures["baseline_jobs_per_s"]) < 0.02
    assert abs(figures["ceiling_ratio"] - figures["jobs_per_s"] / figures["ceiling_jobs_per_s"]) < 0.02
    assert figures["jobs"] == 3000 and figures["routing_keys"] == 3 and figures["processes"] == processes
    assert 0 < figures["hold_rss_mb"] < 150


def test_bench_rejects_a_bad_job_count() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "event.cli", "bench", "--jobs", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--jobs must be at least 1" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "event.cli", "bench", "--processes", "-1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--processes must be 0 (one per core) or more, not -1" in result.stderr
