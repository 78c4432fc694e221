"""`indexer report OUT.html`: the `stats` figures as one self-contained page of charts.

Inline CSS and inline SVG only: no script, no font, no image, no link, so the file opens offline,
from an e-mail or an artefact store, exactly as written. Each chart is a <figure data-chart=NAME>
whose bars carry data-label/data-value, so tests (and curious users) can read the numbers back.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from indexer.atomic import atomic_file
from indexer.db.status import Status
from indexer.errors import IndexerError
from indexer.inspect import stats

ROW_HEIGHT = 22
LABEL_WIDTH = 170
BAR_WIDTH = 300
VALUE_WIDTH = 130
COLORS = {Status.OK: "#3a7d44", Status.MISSING_IMAGE: "#c0392b", Status.MISSING_JSON: "#d35400",
          Status.BAD_JSON: "#8e44ad", Status.BAD_IMAGE: "#7f8c8d", Status.READ_FAILED: "#2c3e50"}
DEFAULT_COLOR = "#2e6da4"

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #666; } .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr));
  gap: 8px 24px; }
figure { margin: 0 0 12px; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg text { font: 12px system-ui, sans-serif; fill: #222; } svg .value { fill: #555; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #ddd;
  text-align: left; } td.num { text-align: right; } .stale { color: #c0392b; font-weight: 600; }
.kpi { display: inline-block; margin: 8px 24px 8px 0; } .kpi b { display: block; font-size: 22px; }
"""


def write_report(db_path: str | os.PathLike[str], out: str | os.PathLike[str],
                 dataset_id: str | None = None) -> Path:
    """Compute the stats of one dataset and write them as OUT.html (atomically); returns the path."""
    figures = stats.dataset_stats(db_path, dataset_id)
    target = Path(out)
    if not target.parent.is_dir():
        raise IndexerError(f"cannot write {target}: folder {target.parent} does not exist")
    page = render_report(figures)
    with atomic_file(target) as temp:
        temp.write_text(page, encoding="utf-8")
    return target


def bar_chart(name: str, title: str, counts: dict[str, int], total: int | None = None,
              colors: dict[str, str] | None = None) -> str:
    """A horizontal bar chart in inline SVG; bars are scaled to the biggest one."""
    total = total if total is not None else sum(counts.values())
    peak = max(counts.values(), default=0) or 1
    height = ROW_HEIGHT * max(len(counts), 1) + 4
    width = LABEL_WIDTH + BAR_WIDTH + VALUE_WIDTH
    rows = []
    for i, (label, value) in enumerate(counts.items()):
        y = i * ROW_HEIGHT + 2
        length = round(BAR_WIDTH * value / peak, 1)
        share = f" ({100 * value / total:.1f}%)" if total else ""
        color = (colors or {}).get(label, DEFAULT_COLOR)
        text = html.escape(label)
        rows.append(
            f'<g class="bar" data-label="{text}" data-value="{value}">'
            f"<title>{text}: {value:,}{share}</title>"
            f'<text x="{LABEL_WIDTH - 8}" y="{y + 15}" text-anchor="end">{_clip(text)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y + 3}" width="{length}" height="{ROW_HEIGHT - 6}"'
            f' fill="{color}" rx="2"/>'
            f'<text class="value" x="{LABEL_WIDTH + length + 6}" y="{y + 15}">{value:,}{share}</text></g>'
        )
    empty = "" if counts else f'<text x="{LABEL_WIDTH}" y="16">nothing to show</text>'
    return (f'<figure data-chart="{name}"><figcaption>{html.escape(title)}</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}"'
            f' style="width: 100%; max-width: {width}px; height: auto" role="img"'
            f' aria-label="{html.escape(title)}">'
            f'{"".join(rows)}{empty}</svg></figure>')


def _clip(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(headers: list[str], rows: list[list[str]], name: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell for cell in row) + "</tr>" for row in rows)
    return f'<table data-table="{name}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(value: object, num: bool = False, css: str = "") -> str:
    text = "" if value is None else f"{value:,}" if isinstance(value, int) and num else str(value)
    classes = " ".join(c for c in ("num" if num else "", css) if c)
    return f'<td class="{classes}">{html.escape(text)}</td>' if classes else f"<td>{html.escape(text)}</td>"


def render_report(figures: dict) -> str:
    total = figures["samples"]
    sizes = figures["sizes"]
    rules = sizes["area_rules"]
    problems = {k: v for k, v in figures["status"].items() if k != Status.OK}
    dup = figures["duplicates"]
    kpis = [("samples", f"{total:,}"), ("ok", f"{figures['status'].get(Status.OK, 0):,}"),
            ("problems", f"{sum(problems.values()):,}"), ("distinct sizes", f"{sizes['distinct']:,}"),
            ("duplicate copies (file md5)", f"{dup['file_hash']['extra']:,}"),
            ("duplicate copies (pixel md5)", f"{dup['pil_hash']['extra']:,}")]
    charts = [
        bar_chart("status", "Samples by status", figures["status"], total, COLORS),
        bar_chart("problems", "Problems (status other than ok)", problems, total, COLORS),
        bar_chart("sources", "Samples by source", figures["sources"], total),
        bar_chart("extensions", "Image extensions", figures["extensions"], total),
        bar_chart("sizes", f"Most common sizes ({sizes['distinct']:,} distinct)",
                  {f"{s['width']}x{s['height']}": s["samples"] for s in sizes["top"]}, total),
        bar_chart("aspect", "Aspect ratio (width:height)", sizes["aspect"], total),
        bar_chart("megapixels", "Megapixels", sizes["megapixels"], total),
        bar_chart("area_rules",
                  f"SimpleTuner area rules {rules['min_megapixels']:g}-{rules['max_megapixels']:g} MP",
                  {"within": rules["within"], "below (too small)": rules["below"],
                   "above (downsampled)": rules["above"], "size unknown": rules["unknown"]}, total),
    ]
    for field, figures_of_field in figures["captions"].items():
        charts.append(bar_chart(f"caption_{field}", f"{field} length (characters): median"
                                f" {figures_of_field['p50']}, mean {figures_of_field['mean']},"
                                f" missing {figures_of_field['missing']:,}",
                                figures_of_field["histogram"], total))
    charts.append(bar_chart("duplicates", "Duplicates (extra copies beyond the first)",
                            {"by file md5": dup["file_hash"]["extra"],
                             "by pixel md5": dup["pil_hash"]["extra"]}, total))
    runs = table(["run", "command", "started", "status", "added", "changed", "removed", "seconds"],
                 [[_td(r["id"]), _td(r["command"]), _td(r["started_at"]), _td(r["status"]),
                   _td(r["added"], True), _td(r["changed"], True), _td(r["removed"], True),
                   _td(r["seconds"], True)] for r in figures["runs"]], "runs")
    exports = table(["kind", "path", "rows", "exported", "state"],
                    [[_td(e["kind"]), _td(e["path"]), _td(e["rows"], True), _td(e["exported_at"]),
                      _td(_export_state(e), css="stale" if e["stale"] else "")]
                     for e in figures["exports"]], "exports")
    title = f"indexer report: {figures['dataset']}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(figures["root"])} · data version {figures["data_version"]}</p>',
        "<div>" + "".join(f'<span class="kpi"><b>{v}</b>{html.escape(k)}</span>' for k, v in kpis) + "</div>",
        '<div class="grid">', *charts, "</div>",
        "<h2>Last runs</h2>", runs if figures["runs"] else "<p>No run recorded.</p>",
        "<h2>Exports</h2>", exports if figures["exports"] else "<p>No export recorded.</p>",
        "</body></html>", "",
    ])


def _export_state(export: dict) -> str:
    if export.get("failed"):
        return f"STALE: {export['failed']:,} files not written; export again"
    return "STALE: export again" if export["stale"] else "up to date"
