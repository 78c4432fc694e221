"""--caption-mode first|all, decided once in the selection layer for every export of rows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.errors import IndexerError
from indexer.export.captions import export_captions
from indexer.export.jsonl import export_jsonl
from indexer.export.parquet import export_parquet
from indexer.export.select import join_captions
from indexer.export.selection import make_selection
from indexer.ingest.index import index_root

FIELDS = ("short_caption", "short_caption2", "long_caption")
RECORDS = {
    # every field, a list with blanks, a repeat, a nested list and a number, surrounding whitespace
    "many": {"short_caption": " a red fox ", "short_caption2": ["a fox", " ", "a red fox", ["nested"], 7,
                                                               "a fox in snow\n"],
             "long_caption": "\tA red fox stands in the snow.\r\n"},
    # first field empty: first mode falls back, all mode starts there too
    "fallback": {"short_caption": "  ", "short_caption2": [], "long_caption": "only the long one"},
    # a line break inside one field is kept in both modes
    "multiline": {"short_caption": "line one\nline two", "long_caption": "line one\nline two"},
    # nothing usable: excluded as no_caption in both modes
    "blank": {"short_caption": "", "short_caption2": [" ", 3], "long_caption": {"text": "an object"}},
}
ALL = {
    "many": "a red fox\na fox\na fox in snow\nA red fox stands in the snow.",
    "fallback": "only the long one",
    "multiline": "line one\nline two",
}
FIRST = {"many": "a red fox", "fallback": "only the long one", "multiline": "line one\nline two"}


@pytest.fixture
def varied(sample_files, data_root: Path, db_path: Path) -> Path:
    for key, record in RECORDS.items():
        sample_files.pair(data_root, key, record={"width": 1024, "height": 768, **record})
    index_root(db_path, data_root, workers=1)
    return data_root


def simpletuner_captions(text: str) -> list[str]:
    """A caption .txt as SimpleTuner's textfile strategy reads it: one caption a line."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def test_join_captions_flattens_strips_and_drops_repeats() -> None:
    assert join_captions('[" b ", ["a", "b", " ", ["x"], 1], null, {"c": "d"}, "a\\nz"]') == "b\na\na\nz"
    assert join_captions('[null, [], " ", 3]') is None


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(IndexerError, match="--caption-mode 'every': use first or all"):
        make_selection(FIELDS, None, caption_mode="every")


def test_caption_files_hold_one_caption_a_line(varied: Path, db_path: Path) -> None:
    summary = export_captions(db_path, captions=FIELDS, caption_mode="all")
    assert summary["excluded"] == {"no_caption": 1} and summary["written"] == 3
    texts = {key: (varied / f"{key}.txt").read_text("utf-8") for key in ALL}
    assert texts == ALL and not (varied / "blank.txt").exists()
    assert simpletuner_captions(texts["many"]) == ["a red fox", "a fox", "a fox in snow",
                                                   "A red fox stands in the snow."]
    first = export_captions(db_path, captions=FIELDS)  # back to one caption a sample: rewritten
    assert first["written"] == 1 and first["unchanged"] == 2  # only "many" differs between modes
    assert {key: (varied / f"{key}.txt").read_text("utf-8") for key in FIRST} == FIRST


def test_jsonl_text_stays_one_string(varied: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "metadata.jsonl"
    summary = export_jsonl(db_path, out, captions=FIELDS, caption_mode="all")
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert {line["file_name"]: line["text"] for line in lines} == {f"{k}.png": v for k, v in ALL.items()}
    assert summary["excluded"] == {"no_caption": 1}
    assert export_jsonl(db_path, out, captions=FIELDS, caption_mode="all")["up_to_date"] is True
    first = export_jsonl(db_path, out, captions=FIELDS)
    assert first["up_to_date"] is False  # the mode is part of the recorded options
    assert {json.loads(line)["text"] for line in out.read_text("utf-8").splitlines()} == set(FIRST.values())


def test_the_mode_is_recorded_with_the_options(varied: Path, db_path: Path, tmp_path: Path) -> None:
    export_captions(db_path, captions=FIELDS, caption_mode="all")
    export_parquet(db_path, tmp_path / "p.parquet")
    conn = sqlite3.connect(db_path)
    options = dict(conn.execute("SELECT kind, options FROM exports").fetchall())
    conn.close()
    assert json.loads(options["captions"])["caption_mode"] == "all"
    assert json.loads(options["parquet"])["caption_mode"] == "first"


def test_parquet_holds_every_caption_as_a_list(cli, varied: Path, db_path: Path, tmp_path: Path) -> None:
    """What SimpleTuner's parquet check takes (no null, no empty array, no empty string in one) and
    its caption cache makes of a cell (a list of the items), one caption a list item."""
    out = tmp_path / "p.parquet"
    summary = export_parquet(db_path, out, captions=FIELDS, caption_mode="all")
    assert summary["rows"] == 3 and summary["excluded"] == {"no_caption": 1}
    table = pq.read_table(out)
    assert table.schema.field("caption").type == pa.list_(pa.string())
    captions = {row["filename"]: row["caption"] for row in table.to_pylist()}
    assert captions == {f"{key}.png": text.split("\n") for key, text in ALL.items() if key != "multiline"} | {
        "multiline.png": ["line one\nline two"]}  # a field's own line break stays inside its caption
    assert all(items and all(item.strip() for item in items) for items in captions.values())
    first = export_parquet(db_path, out, captions=FIELDS)  # the mode is part of the recorded options
    assert not first["up_to_date"] and pq.read_schema(out).field("caption").type == pa.string()


def test_config_takes_its_captions_from_a_list_parquet(cli, varied: Path, db_path: Path,
                                                       tmp_path: Path) -> None:
    out, config = tmp_path / "p.parquet", tmp_path / "multidatabackend.json"
    export_captions(db_path, captions=FIELDS)  # a .txt for every exported image, first mode
    (varied / "blank.png").unlink()
    args = [arg for field in FIELDS for arg in ("--caption", field)]
    assert cli("export", "parquet", out, "--db", db_path, *args, "--caption-mode", "all").exit_code == 0
    result = cli("export", "config", config, "--db", db_path, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["caption_strategy"] == "parquet" and "every caption of each image" in summary["reason"]
    assert summary["entry"]["parquet"]["caption_column"] == "caption"  # a column name, never a list of them
    assert cli("export", "parquet", out, "--db", db_path, *args).exit_code == 0
    textfile = json.loads(cli("export", "config", config, "--db", db_path, "--json").stdout)
    assert textfile["caption_strategy"] == "textfile"  # one caption a row: the .txt files serve as well


def test_cli_caption_mode_for_captions_and_jsonl(cli, varied: Path, db_path: Path, tmp_path: Path) -> None:
    args = [arg for field in FIELDS for arg in ("--caption", field)]
    result = cli("export", "captions", "--db", db_path, *args, "--caption-mode", "all")
    assert result.exit_code == 0, result.stderr
    assert (varied / "many.txt").read_text("utf-8") == ALL["many"]
    out = tmp_path / "m.jsonl"
    assert cli("export", "jsonl", out, "--db", db_path, *args, "--caption-mode", "all").exit_code == 0
    assert json.loads(out.read_text("utf-8").splitlines()[1])["text"] == ALL["many"]
    bad = cli("export", "jsonl", out, "--db", db_path, "--caption-mode", "every")
    assert bad.exit_code == 2
