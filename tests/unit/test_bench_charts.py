"""The charts of docs/benchmarks.md are what benches/charts.py draws from benches/results.json: a figure
changed in the file and not redrawn, or a chart edited by hand, fails here."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benches" / "charts.py"
SVG = "{http://www.w3.org/2000/svg}"


def charts() -> list[Path]:
    return sorted((ROOT / "docs").glob("bench-*.svg"))


def test_every_chart_is_what_the_figures_draw() -> None:
    checked = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert len(charts()) == 6


def test_every_chart_is_shown_in_the_benchmarks_page() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    for chart in charts():
        assert f"]({chart.name})" in page, chart.name


def test_a_chart_is_an_svg_on_white_that_names_its_run_and_date(monkeypatch: pytest.MonkeyPatch) -> None:
    results = json.loads((ROOT / "benches" / "results.json").read_text())
    spec = importlib.util.spec_from_file_location("bench_charts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_charts", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    for name, (key, _) in module.CHARTS.items():
        root = ET.parse(ROOT / "docs" / name).getroot()
        assert root.tag == f"{SVG}svg"
        background = root.find(f"{SVG}rect")
        assert background is not None and background.get("fill") == "#ffffff", name  # light and dark alike
        words = " ".join(" ".join((text.text or "").split()) for text in root.iter(f"{SVG}text"))
        source = " ".join(results[key]["source"].split())
        assert source in words, name
        assert re.search(r"20\d\d-\d\d-\d\d", source), f"{key}: its source names no date"
