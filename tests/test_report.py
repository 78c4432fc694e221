"""`indexer report`: one self-contained HTML file whose charts carry the stats figures."""

from __future__ import annotations

import html.parser
import sqlite3

from indexer.ingest.index import index_root
from indexer.inspect import stats
from indexer.render import html as report_html


class ChartParser(html.parser.HTMLParser):
    """Collects charts (figure[data-chart] -> {label: value}) and anything that would load a resource."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, int]] = {}
        self.current: str | None = None
        self.external: list[str] = []
        self.scripts = 0
        self.svgs = 0
        self.tables: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure" and "data-chart" in a:
            self.current = a["data-chart"]
            self.charts[self.current] = {}
        elif tag == "g" and self.current and "data-label" in a:
            self.charts[self.current][a["data-label"] or ""] = int(a["data-value"] or 0)
        elif tag == "svg":
            self.svgs += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables.append(a.get("data-table") or "")
        for name in ("src", "href"):
            if a.get(name):
                self.external.append(f"{tag} {name}={a[name]}")
        if tag == "link" or "url(" in (a.get("style") or ""):
            self.external.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.current = None


def parse(path) -> ChartParser:
    parser = ChartParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_report_charts_carry_the_stats_figures(tmp_path, gen, cli):
    root = tmp_path / "data"
    gen.make_dataset(root, 80, faults=0.25, seed=11)
    db = tmp_path / "r.sqlite"
    index_root(db, root, workers=1)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO exports (dataset, kind, path, options, data_version, rows, exported_at)"
                     " VALUES ('data', 'parquet', '/out/x.parquet', '{}', 0, 80, '2024-01-01')")
    conn.close()
    out = tmp_path / "report.html"
    result = cli("report", str(out), "--db", db)
    assert result.exit_code == 0, result.stderr
    page = parse(out)
    figures = stats.dataset_stats(db, None)
    assert page.charts["status"] == figures["status"]
    assert page.charts["problems"] == {k: v for k, v in figures["status"].items() if k != "ok"}
    assert page.charts["sources"] == figures["sources"]
    assert page.charts["extensions"] == figures["extensions"]
    assert page.charts["aspect"] == figures["sizes"]["aspect"]
    assert page.charts["megapixels"] == figures["sizes"]["megapixels"]
    assert sum(page.charts["sizes"].values()) == sum(s["samples"] for s in figures["sizes"]["top"])
    rules = figures["sizes"]["area_rules"]
    assert page.charts["area_rules"]["within"] == rules["within"]
    for field in stats.CAPTION_FIELDS:
        assert page.charts[f"caption_{field}"] == figures["captions"][field]["histogram"]
    assert set(page.charts) >= {"duplicates", "caption_short_caption", "caption_long_caption"}
    assert page.svgs == len(page.charts)
    assert page.scripts == 0 and page.external == []  # self-contained: nothing to fetch
    assert page.tables == ["runs", "exports"]
    assert "STALE" in out.read_text(encoding="utf-8")


def test_labels_are_escaped_and_empty_charts_render(tmp_path):
    chart = report_html.bar_chart("x", "<b>title</b>", {"<script>alert(1)</script>": 3, "b&c": 0})
    page = tmp_path / "c.html"
    page.write_text(chart, encoding="utf-8")
    parsed = parse(page)
    assert parsed.scripts == 0
    assert parsed.charts["x"] == {"<script>alert(1)</script>": 3, "b&c": 0}
    assert "nothing to show" in report_html.bar_chart("y", "empty", {})


def test_report_into_a_missing_folder_is_a_clear_error(tmp_path, gen, cli):
    root = tmp_path / "data"
    gen.make_dataset(root, 5, faults=0)
    db = tmp_path / "r.sqlite"
    index_root(db, root, workers=1)
    result = cli("report", str(tmp_path / "nope" / "r.html"), "--db", db)
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "nope").exists()
