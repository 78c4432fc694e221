"""export parquet: types and values, caption choice, --where, atomic replace, up to date, round trip."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import imagesize
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer import store
from indexer.db import lock
from indexer.errors import IndexerError
from indexer.export import one_file
from indexer.export import parquet as parquet_module
from indexer.export.parquet import export_parquet
from indexer.export.select import caption_sql
from indexer.export.selection import make_selection
from indexer.ingest.index import index_root

SIMPLETUNER_EXTENSIONS = {"png", "jpg", "jpeg", "webp"}


def reindex(db_path: Path, root: Path) -> dict:
    return index_root(db_path, root, workers=1)


@pytest.fixture
def indexed(gen, data_root: Path, db_path: Path) -> Path:
    gen.make_dataset(data_root, 150, faults=0.15, seed=3, subfolders=3)
    reindex(db_path, data_root)
    return data_root


def json_on_disk(root: Path) -> dict[str, dict]:
    found = {}
    for path in root.rglob("*.json"):
        try:
            found[path.relative_to(root).with_suffix("").as_posix()] = json.loads(path.read_text("utf-8"))
        except ValueError:
            continue
    return found


def test_default_columns_types_and_values(indexed: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    summary = export_parquet(db_path, out)
    table = pq.read_table(out)
    assert table.schema.names == ["width", "height", "caption", "filename"]
    assert [str(t) for t in table.schema.types] == ["int64", "int64", "string", "string"]
    assert summary["rows"] == table.num_rows > 100
    assert sum(summary["excluded"].values()) > 0  # the faults are excluded, and counted
    records = json_on_disk(indexed)
    for row in table.to_pylist():
        key = row["filename"].rsplit(".", 1)[0]
        assert (indexed / row["filename"]).is_file()
        assert row["caption"] == records[key]["short_caption"].strip()
        if "width" in records[key]:
            expected = (int(records[key]["width"]), int(records[key]["height"]))
        else:  # no size in the JSON: the index read the image header
            expected = imagesize.get(indexed / row["filename"])
        assert (row["width"], row["height"]) == expected
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"


def test_round_trip_matches_files_the_way_simpletuner_does(indexed: Path, db_path: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "dalle3.parquet"
    export_parquet(db_path, out, columns=("key", "source", "aspect_ratio"))
    frame = pd.read_parquet(out, engine="pyarrow")
    assert frame["filename"].map(type).eq(str).all()
    by_name = frame.drop_duplicates("filename").set_index("filename")
    assert len(by_name) == len(frame)  # one row per image
    discovered = [
        p.relative_to(indexed).as_posix() for p in indexed.rglob("*")
        if p.is_file() and p.suffix[1:] in SIMPLETUNER_EXTENSIONS
    ]
    matched = [name for name in discovered if name in by_name.index]
    assert set(matched) == set(by_name.index)  # every row names a discovered image
    conn = sqlite3.connect(db_path)
    ok = {row[0] for row in conn.execute("SELECT image FROM samples WHERE status = 'ok'")}
    assert ok == set(matched)  # and every good sample has its row
    for name, row in by_name.iterrows():
        assert int(row["width"]) > 0 and int(row["height"]) > 0 and row["caption"].strip()
        assert row["key"] == name.rsplit(".", 1)[0]
        assert row["aspect_ratio"] == pytest.approx(row["width"] / row["height"], abs=1e-4)


def test_caption_fallback_and_list_fields(sample_files, data_root: Path, db_path: Path,
                                          tmp_path: Path) -> None:
    base = {"width": 1024, "height": 768}
    sample_files.pair(data_root, "a",
                      record={**base, "short_caption": "", "short_caption2": ["", "  ", "from list"]})
    sample_files.pair(data_root, "b", record={**base, "short_caption": " own \n", "long_caption": "long b"})
    sample_files.pair(data_root, "c",
                      record={**base, "short_caption": None, "short_caption2": [], "long_caption": "long c"})
    sample_files.pair(data_root, "d", record={**base, "short_caption": 7, "short_caption2": "  "})
    reindex(db_path, data_root)
    out = tmp_path / "c.parquet"
    summary = export_parquet(db_path, out, captions=("short_caption", "short_caption2", "long_caption"))
    columns = pq.read_table(out, columns=["filename", "caption"]).to_pydict()
    captions = dict(zip(columns["filename"], columns["caption"], strict=True))
    assert captions == {"a.png": "from list", "b.png": "own", "c.png": "long c"}
    assert summary["excluded"] == {"no_caption": 1}


# NUL is left out: SQLite's text functions stop at it (a caption holding NUL is not a caption).
# Lone surrogates too: the index parses JSON with orjson, which refuses them, so meta never holds one.
CHARACTERS = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
TEXT = st.text(CHARACTERS, max_size=5) | st.sampled_from([" ", "\n", "\t x"])
FIELD_VALUES = st.one_of(st.none(), st.integers(), TEXT, st.lists(st.one_of(TEXT, st.integers()), max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["f1", "f2", "f3"]), FIELD_VALUES))
def test_caption_choice_is_the_first_non_empty_text(meta: dict) -> None:
    def expected() -> str | None:
        for name in ("f1", "f2", "f3"):
            value = meta.get(name)
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, str) and item.strip(" \t\r\n"):
                    return item.strip(" \t\r\n")
        return None

    params: dict = {}
    sql = caption_sql(("f1", "f2", "f3"), params)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE samples (meta TEXT)")
    conn.execute("INSERT INTO samples VALUES (?)", (json.dumps(meta),))
    assert conn.execute(f"SELECT {sql} FROM samples", params).fetchone()[0] == expected()


def test_where_filters_and_counts(indexed: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.parquet"
    everything = export_parquet(db_path, tmp_path / "all.parquet", columns=("source",))
    summary = export_parquet(db_path, out, where="width >= 1024 AND source != 'twitter'", columns=("source",))
    rows = pq.read_table(out).to_pylist()
    assert rows and all(r["width"] >= 1024 and r["source"] != "twitter" for r in rows)
    assert summary["excluded"]["where"] == everything["rows"] - summary["rows"] > 0


@pytest.mark.parametrize("where", [
    "no_such_column > 1", "width >=", "1); DROP TABLE samples; --", "width > 1 -- comment",
    "1) OR (1", "'unclosed", "width > (SELECT 1",
])
def test_bad_where_is_refused_and_changes_nothing(indexed: Path, db_path: Path, tmp_path: Path,
                                                 where: str) -> None:
    out = tmp_path / "keep.parquet"
    export_parquet(db_path, out)
    before = out.read_bytes()
    with pytest.raises(IndexerError, match="--where"):
        export_parquet(db_path, out, where=where)
    assert out.read_bytes() == before
    assert sqlite3.connect(db_path).execute("SELECT count(*) FROM samples").fetchone()[0] > 0


def test_where_cannot_write(indexed: Path, db_path: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexerError, match="--where"):
        export_parquet(db_path, tmp_path / "x.parquet",
                       where="(SELECT count(*) FROM pragma_user_version) AND load_extension('x')")
    assert not (tmp_path / "x.parquet").exists()


def test_failure_leaves_previous_file_intact(indexed: Path, db_path: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "atomic.parquet"
    export_parquet(db_path, out)
    before = out.read_bytes()

    def broken(*_args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(parquet_module, "_record_batch", broken)
    with pytest.raises(IndexerError, match="unchanged"):
        export_parquet(db_path, out, columns=("key",))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_up_to_date_until_data_options_or_file_change(sample_files, indexed: Path, db_path: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "u.parquet"
    assert export_parquet(db_path, out)["up_to_date"] is False
    mtime = out.stat().st_mtime_ns
    again = export_parquet(db_path, out)
    assert again["up_to_date"] is True and out.stat().st_mtime_ns == mtime
    assert export_parquet(db_path, out, columns=("key",))["up_to_date"] is False  # other options
    assert export_parquet(db_path, out, columns=("key",))["up_to_date"] is True
    sample_files.pair(indexed, "new_sample", record={"width": 640, "height": 480, "short_caption": "new"})
    reindex(db_path, indexed)
    changed = export_parquet(db_path, out, columns=("key",))
    assert changed["up_to_date"] is False and changed["rows"] == again["rows"] + 1
    out.write_bytes(b"not parquet")  # replaced by someone: never "up to date"
    assert export_parquet(db_path, out, columns=("key",))["up_to_date"] is False
    assert pq.read_table(out).num_rows == changed["rows"]


def test_runs_beside_a_writer_mid_transaction(indexed: Path, db_path: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads never wait for the writer: the export reads every row while another connection holds
    an open write transaction (which stays open until the rows are read, so a reader that waited
    would never get them in time); the one short bookkeeping write waits for its commit."""
    conn = store.connect(db_path)
    in_transaction, rows_read, recording = threading.Event(), threading.Event(), threading.Event()
    held_while_read: list[bool] = []
    write_rows, record = parquet_module.write_parquet, one_file.record_export

    def write_then_tell(*args: object) -> int:
        written = write_rows(*args)
        rows_read.set()
        return written

    def record_while_held(*args: object, **kwargs: object) -> None:
        recording.set()
        record(*args, **kwargs)

    monkeypatch.setattr(parquet_module, "write_parquet", write_then_tell)
    monkeypatch.setattr(one_file, "record_export", record_while_held)

    def writer() -> None:
        with store.transaction(conn):
            conn.execute("UPDATE samples SET warning = 'x' WHERE id = 1")
            in_transaction.set()
            held_while_read.append(rows_read.wait(10))
            recording.wait(10)
            time.sleep(0.2)  # still open while the bookkeeping write begins: it has to wait

    with lock.writer_lock(db_path, "index"):
        thread = threading.Thread(target=writer)
        thread.start()
        assert in_transaction.wait(10)
        summary = export_parquet(db_path, tmp_path / "live.parquet")
        thread.join()
    conn.close()
    assert held_while_read == [True], "the export's reads waited for the writer's commit"
    assert summary["rows"] == pq.read_table(tmp_path / "live.parquet").num_rows > 0
    recorded = sqlite3.connect(db_path)
    try:
        assert recorded.execute("SELECT rows FROM exports WHERE kind = 'parquet'").fetchall() == [
            (summary["rows"],)]
    finally:
        recorded.close()


def test_extra_columns_and_bad_names(indexed: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cols.parquet"
    export_parquet(db_path, out, columns=("md5_file_hash", "short_caption2", "resolution"))
    table = pq.read_table(out)
    assert table.schema.field("md5_file_hash").type == pa.string()
    listed = [v for v in table.column("short_caption2").to_pylist() if v]
    assert listed and all(isinstance(json.loads(v), list) for v in listed)
    for bad in (("width",), ("key", "key"), ('a"b',)):
        with pytest.raises(IndexerError, match="--column"):
            make_selection(None, None, bad)


def test_empty_selection_still_writes_a_valid_file(sample_files, tmp_path: Path) -> None:
    root, db = tmp_path / "broken", tmp_path / "broken.sqlite"
    root.mkdir()
    sample_files.json(root, "only", "{truncated")
    sample_files.pair(root, "only", json_file=False)
    reindex(db, root)
    out = tmp_path / "empty.parquet"
    summary = export_parquet(db, out, where="width > 0")  # nothing exportable: no field to check
    assert (summary["rows"], summary["excluded"]) == (0, {"bad_json": 1})
    assert pq.read_table(out).schema.names == ["width", "height", "caption", "filename"]


@pytest.mark.parametrize("options, message", [
    ({"captions": ("short_captoin",)}, "--caption short_captoin (closest: short_caption"),
    ({"columns": ("sourse",)}, "--column sourse (closest: source"),
    ({"captions": ("short_caption", "long_captoin")}, "--caption long_captoin (closest: long_caption"),
])
def test_a_field_no_sample_has_is_refused_with_the_closest_fields(indexed: Path, db_path: Path,
                                                                  tmp_path: Path, options: dict,
                                                                  message: str) -> None:
    out = tmp_path / "typo.parquet"
    export_parquet(db_path, out)
    before = out.read_bytes()
    with pytest.raises(IndexerError) as caught:
        export_parquet(db_path, out, **options)
    assert message in str(caught.value) and "Most common fields: " in str(caught.value)
    assert out.read_bytes() == before


def test_a_field_only_some_samples_have_is_accepted(sample_files, indexed: Path, db_path: Path,
                                                    tmp_path: Path) -> None:
    sample_files.pair(indexed, "zz_rare",
                      record={"width": 640, "height": 480, "short_caption": "x", "rare": "here"})
    reindex(db_path, indexed)
    table = pq.read_table(export_parquet(db_path, tmp_path / "rare.parquet", columns=("rare",))["path"])
    assert [v for v in table.column("rare").to_pylist() if v] == ["here"]
    with pytest.raises(IndexerError, match=r"the --where has the JSON field --column rare \(only samples"):
        export_parquet(db_path, tmp_path / "rare.parquet", columns=("rare",), where="key != 'zz_rare'")


def test_a_where_matching_nothing_is_refused(indexed: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "where.parquet"
    export_parquet(db_path, out)
    before = out.read_bytes()
    exportable = sqlite3.connect(db_path).execute(
        "SELECT count(*) FROM samples WHERE status = 'ok' AND width AND height").fetchone()[0]
    with pytest.raises(IndexerError, match=f"matches none of the {exportable:,} exportable samples"):
        export_parquet(db_path, out, where="width > 100000")
    assert out.read_bytes() == before
    with pytest.raises(IndexerError, match="matches none"):
        export_parquet(db_path, tmp_path / "new.parquet", where="0")
    assert not (tmp_path / "new.parquet").exists()


def test_cli_json_and_errors(cli, indexed: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.parquet"
    result = cli("export", "parquet", out, "--db", db_path, "--json", "--column", "key")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == pq.read_table(out).num_rows and summary["up_to_date"] is False
    again = cli("--db", db_path, "export", "parquet", out, "--column", "key")
    assert "up to date" in again.stdout
    bad = cli("export", "parquet", out, "--db", db_path, "--where", "nope")
    assert bad.exit_code == 1 and "--where" in bad.stderr
    typo = cli("export", "parquet", out, "--db", db_path, "--caption", "short_captoin")
    assert typo.exit_code == 1 and "closest: short_caption" in typo.stderr
    missing = cli("export", "parquet", tmp_path / "no" / "x.parquet", "--db", db_path)
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    assert not os.path.exists(tmp_path / "no")
