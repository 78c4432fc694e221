#!/usr/bin/env python3
"""The performance page's chart and table, from the benchmark figures in docs/perf/figures.json.

    python scripts/perf_chart.py            # writes docs/perf/chart.svg

Each figure is a time of indexer's and of a baseline measured in the same run by a benchmark script
(scripts/bench_*.py prints both); the chart draws baseline / indexer on a log scale (right of 1x:
indexer is faster), the table gives the seconds. Hand-made SVG, no plotting library: the file is
small, diffable and the same on every machine. docs/internals/performance.md takes the table through
cog (`table()`), and tests/test_docs.py checks the committed chart is what this script writes.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
FIGURES = DOCS / "perf" / "figures.json"
CHART = DOCS / "perf" / "chart.svg"

LABEL_W, BAR_W, ROW_H, TOP, PAD = 430, 360, 22, 46, 12
LOW, HIGH = 1 / 4, 32  # the log axis: 0.25x .. 32x
FASTER, SLOWER = "#3a7d44", "#c8742c"


def load(path: Path = FIGURES) -> dict:
    return json.loads(path.read_text())


def ratio(figure: dict) -> float:
    """How many times faster than the baseline (below 1: slower)."""
    return figure["baseline_s"] / figure["indexer_s"]


def _x(value: float) -> float:
    """Horizontal position of a ratio on the log axis."""
    clamped = min(max(value, LOW), HIGH)
    return LABEL_W + BAR_W * math.log(clamped / LOW) / math.log(HIGH / LOW)


def svg(data: dict) -> str:
    """The bar chart: one bar a figure, from 1x to its ratio, green when faster, orange when slower."""
    figures = data["figures"]
    height = TOP + ROW_H * len(figures) + 30
    width = LABEL_W + BAR_W + 70
    one = _x(1.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{PAD}" y="18" font-size="14" font-weight="bold">indexer against the baseline measured '
           f'in the same run ({escape(data["machine"])})</text>',
           f'<text x="{PAD}" y="34" fill="#555">baseline time / indexer time, log scale: right of 1x is '
           'faster</text>']
    for tick in (0.25, 0.5, 1, 2, 4, 8, 16, 32):
        x = _x(tick)
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{height - 26}" '
                   f'stroke="{"#333" if tick == 1 else "#ddd"}"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 12}" text-anchor="middle" fill="#555">{tick:g}x</text>')
    for row, figure in enumerate(figures):
        y = TOP + ROW_H * row
        value = ratio(figure)
        left, right = sorted((one, _x(value)))
        colour = FASTER if value >= 1 else SLOWER
        out.append(f'<text x="{LABEL_W - 8}" y="{y + 15}" text-anchor="end">{escape(figure["what"])}</text>')
        out.append(f'<rect x="{left:.1f}" y="{y + 4}" width="{max(right - left, 1):.1f}" '
                   f'height="{ROW_H - 8}" '
                   f'fill="{colour}"><title>{escape(figure["what"])}: {figure["indexer_s"]:g} s, '
                   f'{escape(figure["baseline"])} {figure["baseline_s"]:g} s</title></rect>')
        out.append(f'<text x="{max(right, one) + 4:.1f}" y="{y + 15}">{value:.2f}x</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def table(data: dict | None = None) -> str:
    """The figures as a markdown table, the numbers the chart draws."""
    data = data or load()
    rows = ["| what | indexer | baseline (same run) | ratio | measured by |", "|---|---|---|---|---|"]
    for figure in data["figures"]:
        rows.append(f"| {figure['what']} | {figure['indexer_s']:g} s | {figure['baseline']}: "
                    f"{figure['baseline_s']:g} s | {ratio(figure):.2f}x | `scripts/{figure['script']}` |")
    return "\n".join(rows) + "\n"


def main() -> None:
    CHART.write_text(svg(load()))
    print(f"wrote {CHART}")


if __name__ == "__main__":
    main()
