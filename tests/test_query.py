"""`indexer query`: read-only enforcement, parameters and every output format parsed back."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.db import readonly
from indexer.errors import IndexerError
from indexer.ingest.index import index_root
from indexer.inspect import query
from indexer.render import rows


@pytest.fixture
def indexed(tmp_path, gen):
    root = tmp_path / "data"
    gen.make_dataset(root, 40, faults=0.2, seed=3)
    db = tmp_path / "q.sqlite"
    index_root(db, root, workers=1)
    return db


def snapshot(db) -> tuple:
    conn = sqlite3.connect(db)
    try:
        return (conn.execute("SELECT count(*), total(width), group_concat(key) FROM samples").fetchone(),
                conn.execute("SELECT * FROM datasets").fetchall(),
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone(),
                conn.execute("PRAGMA user_version").fetchone(),
                conn.execute("PRAGMA journal_mode").fetchone())
    finally:
        conn.close()


WRITES = [
    ("INSERT INTO datasets (id, root, created_ns) VALUES ('x', '/x', 0)", "insert datasets"),
    ("UPDATE samples SET width = 1", "update samples"),
    ("DELETE FROM samples", "delete samples"),
    ("DROP TABLE samples", "drop table samples"),
    ("DROP VIEW problems", "drop view problems"),
    ("CREATE TABLE t (a)", "create table t"),
    ("CREATE TEMP TABLE t (a)", "create temp table t"),
    ("CREATE INDEX i ON samples (key)", "create index i"),
    ("ALTER TABLE samples ADD COLUMN x", "alter table"),
    ("ATTACH DATABASE 'other.sqlite' AS other", "attach"),
    ("PRAGMA user_version = 99", "pragma user_version"),
    ("PRAGMA journal_mode = DELETE", "pragma journal_mode"),
    ("PRAGMA wal_checkpoint", "pragma wal_checkpoint"),
    ("VACUUM", "(vacuum)"),
    ("/* tidy */ -- up\n  vacuum main", "(vacuum)"),
    ("VACUUM INTO 'other.sqlite'", "(vacuum into other.sqlite)"),
    ("REINDEX", "reindex"),
    ("INSERT INTO samples_fts (samples_fts) VALUES ('rebuild')", "insert samples_fts"),
    ("WITH x AS (SELECT 1) DELETE FROM samples WHERE id IN (SELECT * FROM x)", "delete samples"),
]


@pytest.mark.parametrize(("sql", "named"), WRITES)
def test_every_kind_of_write_is_refused_and_changes_nothing(indexed, tmp_path, monkeypatch, cli, sql, named):
    monkeypatch.chdir(tmp_path)
    before = snapshot(indexed)
    result = cli("query", sql, "--db", indexed)
    assert result.exit_code == 1
    assert "read-only" in result.stderr and named in result.stderr
    assert snapshot(indexed) == before
    assert not (tmp_path / "other.sqlite").exists()


def test_schema_table_writes_are_refused_by_sqlite_too(indexed, cli):
    before = snapshot(indexed)
    result = cli("query", "DELETE FROM sqlite_master", "--db", indexed)
    assert result.exit_code == 1 and "error" in result.stderr
    assert snapshot(indexed) == before


def test_reading_pragmas_and_views_are_allowed(indexed, cli):
    result = cli("query", "PRAGMA table_info(samples)", "--db", indexed, "--format", "jsonl")
    names = [json.loads(line)["name"] for line in result.stdout.splitlines()]
    assert "meta" in names and "status" in names
    result = cli("query", "SELECT name FROM pragma_table_info('datasets')", "--db", indexed,
                 "--format", "csv")
    assert result.stdout.split() == ["name", "id", "root", "created_ns", "data_version", "json_bytes"]
    result = cli("query", "SELECT count(*) AS n FROM problems", "--db", indexed, "--format", "json")
    conn = sqlite3.connect(indexed)
    expected = conn.execute("SELECT count(*) FROM samples WHERE status != 'ok'").fetchone()[0]
    assert json.loads(result.stdout) == [{"n": expected}]


def test_several_statements_and_bad_sql_are_clear_errors(indexed, cli):
    result = cli("query", "SELECT 1; SELECT 2", "--db", indexed)
    assert result.exit_code == 1 and "one statement" in result.stderr
    result = cli("query", "SELECT nope FROM samples", "--db", indexed)
    assert result.exit_code == 1 and "no such column" in result.stderr
    result = cli("query", "SELECT :w", "--db", indexed, "-p", "oops")
    assert result.exit_code == 1 and "NAME=VALUE" in result.stderr


def expected_rows(db, sql: str, params: dict) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


SQL = ("SELECT id, key, width, height, status, short_caption, meta ->> '$.width' AS raw_width "
       "FROM samples WHERE width >= :w OR width IS NULL ORDER BY key")


def test_json_and_jsonl_round_trip_with_parameters(indexed, cli):
    expected = expected_rows(indexed, SQL, {"w": "1000"})
    assert expected, "the fixture must give rows"
    as_json = cli("query", SQL, "--db", indexed, "--format", "json", "-p", "w=1000")
    assert json.loads(as_json.stdout) == expected
    as_jsonl = cli("query", SQL, "--db", indexed, "--format", "jsonl", "-p", "w=1000")
    assert [json.loads(line) for line in as_jsonl.stdout.splitlines()] == expected


def test_csv_round_trip(indexed, cli):
    expected = expected_rows(indexed, SQL, {"w": "0"})
    result = cli("query", SQL, "--db", indexed, "--format", "csv", "-p", "w=0")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected, strict=True):
        assert got == {k: "" if v is None else str(v) for k, v in want.items()}


def test_table_is_aligned_and_complete(indexed, cli):
    expected = expected_rows(indexed, "SELECT key, width, status FROM samples ORDER BY key", {})
    result = cli("query", "SELECT key, width, status FROM samples ORDER BY key", "--db", indexed)
    header, rule, *lines = result.stdout.splitlines()
    assert header.split() == ["key", "width", "status"]
    assert len(lines) == len(expected)
    starts = [header.index("width")]
    for line, want in zip(lines, expected, strict=True):
        assert line.split()[0] == want["key"]
        assert line.split()[-1] == want["status"]
        assert line[: starts[0]].strip() == want["key"]
    assert set(rule.replace(" ", "")) == {"-"}


class RecordingCursor:
    """A cursor that only offers fetchmany and records the batch sizes asked for."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.cursor = cursor
        self.sizes: list[int] = []

    def fetchmany(self, size: int) -> list:
        self.sizes.append(size)
        return self.cursor.fetchmany(size)


def test_results_stream_in_bounded_batches(indexed, monkeypatch):
    """Rows are pulled FETCH_ROWS at a time and written before the next batch is fetched."""
    monkeypatch.setattr(query, "FETCH_ROWS", 7)
    conn, guard = readonly.connect_readonly(indexed)
    try:
        cursor = RecordingCursor(query.execute_readonly(
            conn, guard, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)"
            " SELECT i FROM n"))
        out = io.StringIO()
        written_when_fetching = []
        original = cursor.fetchmany

        def fetch(size: int) -> list:
            written_when_fetching.append(out.getvalue().count("\n"))
            return original(size)

        cursor.fetchmany = fetch  # type: ignore[method-assign]
        count = rows.write_jsonl(["i"], query.iter_rows(cursor), out)  # type: ignore[arg-type]
    finally:
        conn.close()
    assert count == 100
    assert set(cursor.sizes) == {7}
    assert written_when_fetching[:3] == [0, 7, 14]
    assert [json.loads(line)["i"] for line in out.getvalue().splitlines()] == list(range(1, 101))


def test_duplicate_column_names_are_kept_apart(indexed):
    out = io.StringIO()
    rows.run_query(indexed, "SELECT 1 AS a, 2 AS a", out, fmt="jsonl")
    assert json.loads(out.getvalue()) == {"a": 1, "a_2": 2}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.none(), st.integers(-10**12, 10**12), st.text(max_size=30),
                                 st.floats(allow_nan=False, allow_infinity=False)), max_size=6))
def test_any_values_round_trip_through_json(indexed, values):
    sql = "SELECT " + ", ".join(f":v{i} AS c{i}" for i in range(len(values))) if values else "SELECT 1 AS c"
    params = {f"v{i}": v for i, v in enumerate(values)}
    conn, guard = readonly.connect_readonly(indexed)
    try:
        cursor = query.execute_readonly(conn, guard, sql, params)
        out = io.StringIO()
        rows.write_jsonl(query.column_names(cursor), query.iter_rows(cursor), out)
    finally:
        conn.close()
    got = json.loads(out.getvalue())
    assert list(got.values()) == (values or [1])


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(IndexerError, match="does not exist"):
        rows.run_query(tmp_path / "none.sqlite", "SELECT 1", io.StringIO())


def test_problems_with_warnings_lists_ok_samples_that_carry_one(tmp_path, gen, sample_files, cli):
    from indexer.inspect import problems

    root = tmp_path / "data"
    gen.make_dataset(root, 40, faults=0.2, seed=3)
    sample_files.pair(root, "zz_fine", size=(8, 8), record={"width": 8, "height": 8, "short_caption": "c",
                                                            "image_name": "elsewhere.jpg"})
    sample_files.pair(root, "zz_twice", size=(8, 8), record={"width": 8, "height": 8})
    sample_files.pair(root, "zz_twice", ext="webp", size=(8, 8), json_file=False)
    db = tmp_path / "w.sqlite"
    index_root(db, root, workers=1)
    conn = sqlite3.connect(db)
    warned = dict(conn.execute("SELECT key, warning FROM samples WHERE status = 'ok' AND warning NOTNULL"))
    plain = conn.execute("SELECT key FROM samples WHERE status != 'ok' ORDER BY key").fetchall()
    conn.close()
    assert {"zz_fine", "zz_twice"} <= set(warned)
    assert [p["key"] for p in problems.list_problems(db)] == [k for (k,) in plain]
    listed = list(problems.list_problems(db, warnings=True))
    assert [p["key"] for p in listed] == sorted([k for (k,) in plain] + list(warned))
    fine = next(p for p in listed if p["key"] == "zz_fine")
    assert (fine["status"], fine["path"]) == ("ok", str(root.resolve() / "zz_fine.json"))
    assert "elsewhere.jpg" in fine["warning"]
    bad_json = [p["key"] for p in listed if p["status"] == "bad_json"]
    assert bad_json
    only = [p["key"] for p in problems.list_problems(db, statuses=["bad_json"], warnings=True)]
    assert only == sorted(bad_json + list(warned))
    text = cli("problems", "--db", db, "--warnings")
    assert text.exit_code == 0
    assert "warning: several images for zz_twice" in text.stdout
    assert f"{len(plain):,} problem samples, {len(warned):,} ok samples with a warning" in text.stderr
    assert "zz_fine" not in cli("problems", "--db", db).stdout
    lines = cli("problems", "--db", db, "--warnings", "--json").stdout.splitlines()
    assert [json.loads(line)["key"] for line in lines] == [p["key"] for p in listed]
