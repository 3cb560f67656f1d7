"""The charts of docs/benchmarks.md, drawn from the figures in benches/results.json.

    python benches/charts.py            # writes docs/bench-*.svg
    python benches/charts.py --check    # exits 1 if a chart on disk differs from what the figures draw

Hand-drawn SVG, not a JavaScript charting library: the docs are static pages (GitHub's file view and
the mkdocs site), so a chart must be a file that renders with no script at all, and an SVG written
here is one, small enough to review in a diff. Every chart has a white background and explicit
colours, so it reads the same in a light or a dark theme (GitHub shows an SVG in an ``<img>``, which
takes neither the page's colours nor its fonts). Every figure drawn is one of results.json's, each
chart says which run and date it comes from: the file holds what was measured, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results.json"
DOCS = ROOT / "docs"

# Colours of the contestants and series, the same in every chart; chosen to stay apart for the common
# colour-vision deficiencies (Okabe and Ito's palette) and to read on white.
COLOURS = {
    "event": "#0072B2",
    "pika": "#E69F00",
    "aio-pika": "#009E73",
    "go": "#CC79A7",
    "before": "#999999",
    "after": "#332288",
    "cold": "#D55E00",
    "warm": "#56B4E9",
}
INK = "#222222"
REFERENCE = "#B22222"  # the dashed lines of a target or parity
DASHED = " stroke-dasharray='5 4'"
GRID = "#dddddd"
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


@dataclass
class Series:
    """One kind of bar in every group: its name in the legend, its colour, and a value per group (a
    number, a ``[low, high]`` range drawn as a bar to the low end and a whisker to the high, or None)."""

    name: str
    colour: str
    values: list[Any]


@dataclass
class Panel:
    """One grouped bar chart: groups along the x axis, a bar of each series in each group."""

    title: str
    groups: list[str]
    series: list[Series]
    y_label: str
    lines: tuple[tuple[float, str], ...] = ()  # reference lines: (value, label)
    decimals: int = 2  # of the value labels; AUTO: fewer as the value grows
    log: bool = False  # a logarithmic y axis (powers of ten), for figures spanning several of them
    x_label: str = ""  # what the groups are, under them
    span: tuple[float, float] | None = None  # a log axis's bottom and top, when panels share them


AUTO = -1


def _axis(value: float) -> tuple[float, float]:
    """A round axis top at or above ``value`` and the step of its ticks (1, 2, 2.5 or 5 times a power of
    ten, four to eight ticks)."""
    if value <= 0:
        return 1.0, 0.2
    power = 10 ** math.floor(math.log10(value))
    for step in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0):
        if value / (step * power) <= 7:
            break
    tick = step * power
    return math.ceil(value / tick - 1e-9) * tick, tick


def _fmt(value: float, decimals: int) -> str:
    if decimals == AUTO:
        decimals = 2 if value < 1 else 1 if value < 10 else 0
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{decimals}f}"


def _text(x: float, y: float, words: str, **attrs: Any) -> str:
    attrs.setdefault("fill", INK)
    extra = " ".join(f"{key.replace('_', '-')}='{value}'" for key, value in attrs.items())
    return f"<text x='{x:.1f}' y='{y:.1f}' {extra}>{escape(words)}</text>"


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str = INK, extra: str = "") -> str:
    return f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='{stroke}'{extra}/>"


def _wrap(words: str, width: int) -> list[str]:
    """``words`` in lines of at most ``width`` characters."""
    lines: list[str] = []
    line = ""
    for word in words.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def _panel(panel: Panel, x0: float, y0: float, width: float, height: float) -> list[str]:
    """The SVG elements of ``panel`` inside the box at (x0, y0) of ``width`` by ``height``."""
    out: list[str] = []
    left, right, top_pad, bottom = 64.0, 12.0, 30.0, 62.0
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    px, py = x0 + left, y0 + top_pad
    highest = 0.0
    for series in panel.series:
        for value in series.values:
            if value is not None:
                highest = max(highest, max(value) if isinstance(value, list) else value)
    for value, _ in panel.lines:
        highest = max(highest, value)
    if panel.log:
        lowest = min(
            (v for series in panel.series for value in series.values if value is not None
             for v in (value if isinstance(value, list) else [value]) if v > 0),
            default=1.0,
        )  # fmt: skip
        floor = 10.0 ** math.floor(math.log10(lowest))
        ceiling = 10.0 ** math.ceil(math.log10(highest * 1.5))
        if panel.span is not None:
            floor, ceiling = panel.span
        span = math.log10(ceiling / floor)
        ticks = [floor * 10**k for k in range(round(span) + 1)]

        def y_of(value: float) -> float:
            return py + plot_h - math.log10(max(value, floor) / floor) / span * plot_h

    else:
        top, tick_step = _axis(highest * 1.08)  # room for the value labels above the bars
        ticks = [k * tick_step for k in range(round(top / tick_step) + 1)]

        def y_of(value: float) -> float:
            return py + plot_h - value / top * plot_h

    out.append(
        _text(x0 + width / 2, y0 + 16, panel.title, text_anchor="middle", font_size=14, font_weight="bold")
    )
    for tick in ticks:
        y = y_of(tick)
        out.append(_line(px, y, px + plot_w, y, GRID))
        label = f"{tick:,.6g}" if panel.log else _tick(tick, ticks[1] - ticks[0])
        out.append(_text(px - 6, y + 4, label, text_anchor="end", font_size=11))
    out.append(_line(px, py + plot_h, px + plot_w, py + plot_h))
    out.append(_line(px, py, px, py + plot_h))
    cx, cy = x0 + 14, py + plot_h / 2
    out.append(
        _text(
            cx,
            cy,
            panel.y_label,
            text_anchor="middle",
            font_size=12,
            transform=f"rotate(-90 {cx:.1f} {cy:.1f})",
        )
    )
    if panel.x_label:
        out.append(
            _text(px + plot_w / 2, py + plot_h + 52, panel.x_label, text_anchor="middle", font_size=12)
        )
    slot = plot_w / len(panel.groups)
    bar = min(34.0, slot * 0.8 / len(panel.series))
    for g, group in enumerate(panel.groups):
        centre = px + slot * (g + 0.5)
        lines = group.split("\n")
        for k, line in enumerate(lines):
            out.append(_text(centre, py + plot_h + 16 + 13 * k, line, text_anchor="middle", font_size=11))
        first = centre - bar * len(panel.series) / 2
        for s, series in enumerate(panel.series):
            value = series.values[g]
            if value is None:
                continue
            x = first + bar * s
            low, high = (value[0], value[1]) if isinstance(value, list) else (value, value)
            y = y_of(low)
            tip = f"{series.name}, {group.replace(chr(10), ' ')}: {_range(value, panel.decimals)}"
            out.append(
                f"<rect x='{x + 1:.1f}' y='{y:.1f}' width='{bar - 2:.1f}' height='{py + plot_h - y:.1f}' "
                f"fill='{series.colour}'><title>{escape(tip)}</title></rect>"
            )
            if high != low:
                mid, yh = x + bar / 2, y_of(high)
                out.append(_line(mid, y, mid, yh))
                out.append(_line(mid - 5, yh, mid + 5, yh))
            out.append(
                _text(
                    x + bar / 2,
                    y_of(high) - 4,
                    _range(value, panel.decimals),
                    text_anchor="middle",
                    font_size=10,
                )
            )
    for value, _ in panel.lines:  # named in the legend, where a label cannot cover a bar's
        y = y_of(value)
        out.append(_line(px, y, px + plot_w, y, REFERENCE, DASHED))
    return out


def _tick(value: float, step: float) -> str:
    decimals = 0 if step >= 1 else 1 if round(step * 10, 9) == round(step * 10) else 2
    return f"{value:,.{decimals}f}"


def _range(value: Any, decimals: int) -> str:
    if isinstance(value, list):
        return f"{_fmt(value[0], decimals)}-{_fmt(value[1], decimals)}"
    return _fmt(value, decimals)


def chart(
    title: str,
    source: str,
    panels: list[Panel],
    *,
    panel_width: float | list[float] = 520,
    height: float = 330,
) -> str:
    """An SVG document: a title, the panels side by side (each ``panel_width`` wide, or its own width
    of a list), one legend of every series, and the source."""
    widths = panel_width if isinstance(panel_width, list) else [panel_width] * len(panels)
    width = sum(widths)
    names: dict[str, str] = {}
    for panel in panels:
        for series in panel.series:
            names.setdefault(series.name, series.colour)
    sources = _wrap(source, int((width - 32) / 6.4))
    head = 34 + 14 * len(sources)
    legend_y = head + height + 6
    total = legend_y + 24
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{total:.0f}' "
        f"viewBox='0 0 {width:.0f} {total:.0f}' {FONT}>",
        f"<title>{escape(title)}</title>",
        f"<rect width='{width:.0f}' height='{total:.0f}' fill='#ffffff'/>",
        _text(16, 24, title, font_size=16, font_weight="bold"),
    ]
    out += [_text(16, 40 + 14 * k, line, font_size=11, fill="#444444") for k, line in enumerate(sources)]
    for k, panel in enumerate(panels):
        out += _panel(panel, sum(widths[:k]), head, widths[k], height)
    x = 16.0
    for name, colour in names.items():
        out.append(f"<rect x='{x:.1f}' y='{legend_y:.1f}' width='12' height='12' fill='{colour}'/>")
        out.append(_text(x + 17, legend_y + 10, name, font_size=12))
        x += 30 + 7.2 * len(name)
    lines = dict.fromkeys(label for panel in panels for _, label in panel.lines)
    if lines:
        out.append(_line(x, legend_y + 6, x + 22, legend_y + 6, REFERENCE, DASHED))
        out.append(_text(x + 27, legend_y + 10, ", ".join(lines), font_size=12, fill=REFERENCE))
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- the charts of docs/benchmarks.md -----------------------------------------------------------------


def seed(data: dict[str, Any]) -> str:
    rows = data["rows"]
    groups = [f"{row['loop']}\n{row['phase']}" for row in rows]
    panel = Panel(
        "event's rate over each anchor's (above 1: event is faster)",
        groups,
        [
            Series("event / pika", COLOURS["pika"], [row["ratio_pika"] for row in rows]),
            Series("event / aio-pika", COLOURS["aio-pika"], [row["ratio_aio_pika"] for row in rows]),
        ],
        "ratio (same run)",
        lines=((1.0, "parity"), (0.7, "target against pika: 0.7")),
        x_label="event loop and phase (100,000 messages)",
    )
    return chart("Seed benchmark: event against pika and aio-pika", data["source"], [panel], panel_width=640)


def go(data: dict[str, Any]) -> str:
    rows = data["rows"]
    panel = Panel(
        "event's rate over amqp091-go's",
        [f"run {row['run']}" for row in rows],
        [
            Series("consume: event / Go", COLOURS["go"], [row["consume_ratio"] for row in rows]),
            Series("publish: event / Go", COLOURS["event"], [row["publish_ratio"] for row in rows]),
        ],
        "ratio (same run)",
        lines=((1.0, "parity"),),
        x_label="run of event bench --jobs 30000",
    )
    return chart("Against a compiled client: amqp091-go, GOMAXPROCS=1", data["source"], [panel])


def mixed(data: dict[str, Any]) -> str:
    rows = data["rows"]
    panel = Panel(
        "messages a second, one in 100 sleeping 1 s",
        [f"{row['code']}\n{row['loop']}" for row in rows],
        [
            Series("event", COLOURS["event"], [row["event"] for row in rows]),
            Series("pika", COLOURS["pika"], [row["pika"] for row in rows]),
        ],
        "messages / s",
        decimals=0,
        x_label="code and event loop",
    )
    return chart("Mixed work: event against pika (benches/mixed.py)", data["source"], [panel])


def ready(data: dict[str, Any]) -> str:
    rows = data["rows"]
    panel = Panel(
        "from run() to ready (a range: several runs)",
        [f"{row['consumers']:,} consumers" for row in rows],
        [
            Series("cold (queues new)", COLOURS["cold"], [row["cold_s"] for row in rows]),
            Series("warm (queues there)", COLOURS["warm"], [row["warm_s"] for row in rows]),
        ],
        "seconds",
        x_label="consumers in the pool",
    )
    return chart("Many consumers: a pool's start (benches/ready.py)", data["source"], [panel])


def latency(data: dict[str, Any]) -> str:
    rows = data["rows"]
    shares = sorted({row["share"] for row in rows})
    systems = [system for system in ("event", "pika", "go") if any(row["system"] == system for row in rows)]
    rates = {share: next(row["rate"] for row in rows if row["share"] == share) for share in shares}
    groups = [f"{share:.0%}: {rates[share]:,}/s" for share in shares]

    def value(system: str, share: float, key: str) -> float | None:
        found = [row[key] for row in rows if row["system"] == system and row["share"] == share]
        return found[0] if found else None

    # One scale for the three panels, so that p50, p99 and p99.9 compare across them too.
    every = [row[key] for row in rows for key in ("p50_ms", "p99_ms", "p999_ms") if row[key] > 0]
    span = (10.0 ** math.floor(math.log10(min(every))), 10.0 ** math.ceil(math.log10(max(every) * 1.5)))

    panels = [
        Panel(
            name,
            groups,
            [
                Series(system, COLOURS[system], [value(system, share, key) for share in shares])
                for system in systems
            ],
            "ms, publish → handler (log scale)",
            decimals=AUTO,
            log=True,
            x_label="paced rate: share of event's consume rate, msg/s",
            span=span,
        )
        for name, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"))
    ]
    return chart(
        "Latency on a paced stream: event, pika and Go consumers (event bench --latency)",
        data["source"],
        panels,
        panel_width=400,
    )


def large(data: dict[str, Any]) -> str:
    rows = [row for row in data["rows"] if row["before_ratio"] is not None or row["after_ratio"] is not None]
    groups = [f"{row['phase']}\n{row['burst']}, {row['loop']}" for row in rows]
    ratio = Panel(
        "event's MB/s over pika's, same run",
        groups,
        [
            Series("before (joined copies)", COLOURS["before"], [row["before_ratio"] for row in rows]),
            Series("after (no copies)", COLOURS["after"], [row["after_ratio"] for row in rows]),
        ],
        "ratio, median of the runs",
        lines=((1.0, "targets: consume 1.0"), (0.95, "publish 0.95")),
        x_label="phase, burst (messages) and event loop",
    )
    uvloop = [row for row in rows if row["loop"] == "uvloop"]
    rate = Panel(
        "MiB/s after, uvloop, median of the runs",
        [f"{row['phase']}, {row['burst']}" for row in uvloop],
        [
            Series(system, COLOURS[system], [row["after_mib_s"].get(system) for row in uvloop])
            for system in ("event", "pika", "aio-pika", "go")
        ],
        "MiB / s",
        decimals=0,
        x_label="phase and burst (messages)",
    )
    return chart(
        "Large messages: 1 MiB bodies (event bench --body-size 1048576)",
        data["source"],
        [ratio, rate],
        panel_width=[760, 500],
    )


CHARTS = {
    "bench-seed.svg": ("seed", seed),
    "bench-go.svg": ("go", go),
    "bench-mixed.svg": ("mixed", mixed),
    "bench-ready.svg": ("ready", ready),
    "bench-latency.svg": ("latency", latency),
    "bench-large.svg": ("large", large),
}


def main(argv: list[str] | None = None) -> int:
    """Write every chart (or, with --check, say which differ from the figures)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a chart on disk is not what the figures draw"
    )
    args = parser.parse_args(argv)
    results = json.loads(RESULTS.read_text())
    stale = []
    for name, (key, draw) in CHARTS.items():
        svg = draw(results[key])
        path = DOCS / name
        if args.check:
            if not path.exists() or path.read_text() != svg:
                stale.append(name)
        else:
            path.write_text(svg)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date (run python benches/charts.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
