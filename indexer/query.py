"""`indexer query SQL`: run one read-only statement and stream its rows as table, CSV, JSON or JSONL.

Read-only twice over: the file is opened with mode=ro (SQLite itself refuses writes) and an
authorizer refuses, before anything runs, every action that is not reading - so a write fails with a
message naming what was refused rather than SQLite's "attempt to write a readonly database", and
even schema-less writes (ATTACH, PRAGMA x = y, temp tables) are caught.
"""

from __future__ import annotations

import base64
import csv
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

import orjson

from indexer import store
from indexer.errors import IndexerError

FORMATS = ("table", "csv", "json", "jsonl")
FETCH_ROWS = 1000  # rows held in memory at a time
TABLE_PREVIEW_ROWS = 1000  # the table format sizes its columns from this many rows
TABLE_MAX_WIDTH = 60  # longer cells are cut with "…" in the table format (csv/json keep them whole)

# Pragmas whose argument is a name to look at, not a value to set: they read even with one.
NAME_ARGUMENT_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
})
# Pragmas that act even without an argument.
ACTING_PRAGMAS = frozenset({"optimize", "wal_checkpoint", "incremental_vacuum", "shrink_memory"})

READ_ACTIONS = {
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE,
}

AUTHORIZER_ACTIONS = (
    "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER",
    "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE", "DROP_INDEX", "DROP_TABLE",
    "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER",
    "DROP_VIEW", "INSERT", "PRAGMA", "READ", "SELECT", "TRANSACTION", "UPDATE", "ATTACH", "DETACH",
    "ALTER_TABLE", "REINDEX", "ANALYZE", "CREATE_VTABLE", "DROP_VTABLE", "FUNCTION", "SAVEPOINT",
    "RECURSIVE",
)
ACTION_NAMES = {getattr(sqlite3, f"SQLITE_{name}"): name.lower().replace("_", " ")
                for name in AUTHORIZER_ACTIONS if hasattr(sqlite3, f"SQLITE_{name}")}


LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.DOTALL)
SCHEMA_TABLES = ("sqlite_master", "sqlite_temp_master", "sqlite_schema", "sqlite_temp_schema")
SCHEMA_WRITES = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)


class ReadOnlyGuard:
    """sqlite3 authorizer that allows reading only and remembers what it refused, for the message."""

    def __init__(self) -> None:
        self.refused: str | None = None

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db_name: str | None,
                 trigger: str | None) -> int:
        if action in READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and self._pragma_reads(arg1 or "", arg2):
            return sqlite3.SQLITE_OK
        if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
            return sqlite3.SQLITE_OK  # BEGIN/COMMIT of a read-only connection change nothing
        if action in SCHEMA_WRITES and arg1 in SCHEMA_TABLES:
            # Bookkeeping of a CREATE/DROP (refused below under its own name), or SQLite connecting
            # a table-valued pragma (pragma_table_info(...)), which writes nothing. A real schema
            # write is still stopped by mode=ro + query_only.
            return sqlite3.SQLITE_OK
        what = ACTION_NAMES.get(action, f"action {action}")
        target = " ".join(part for part in (arg1, arg2) if part)
        self.refused = self.refused or f"{what} {target}".strip()
        return sqlite3.SQLITE_DENY

    @staticmethod
    def _pragma_reads(name: str, argument: str | None) -> bool:
        name = name.lower()
        if name in ACTING_PRAGMAS:
            return False
        return argument is None or name in NAME_ARGUMENT_PRAGMAS


def connect_readonly(db_path: str | os.PathLike[str]) -> tuple[sqlite3.Connection, ReadOnlyGuard]:
    conn = store.connect(db_path, readonly=True)
    conn.execute("PRAGMA query_only = ON")
    guard = ReadOnlyGuard()
    conn.set_authorizer(guard)
    return conn, guard


def parse_params(pairs: Iterable[str]) -> dict[str, str]:
    """-p NAME=VALUE pairs into named parameters (:NAME in the SQL); values are bound as text."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise IndexerError(f"parameter {pair!r} is not NAME=VALUE: write it as -p name=value "
                               "and use :name in the SQL")
        params[name.strip().lstrip(":$@")] = value
    return params


def execute_readonly(conn: sqlite3.Connection, guard: ReadOnlyGuard, sql: str,
                     params: dict[str, str] | Sequence[Any] = ()) -> sqlite3.Cursor:
    """Run one statement under the guard; a refused or invalid statement becomes an IndexerError."""
    guard.refused = None
    try:
        return conn.execute(sql, params)
    except sqlite3.ProgrammingError as exc:
        raise IndexerError(f"cannot run this SQL: {exc}; pass one statement, and one -p NAME=VALUE "
                           "for each :name it uses") from exc
    except sqlite3.DatabaseError as exc:
        if guard.refused or "readonly" in str(exc) or "query_only" in str(exc):
            refused = statement_action(sql, guard.refused or "a write")
            raise IndexerError(
                f"`indexer query` is read-only and refused this statement ({refused}); nothing was "
                "changed. Use SELECT (or WITH ... SELECT); the index commands are the only writers"
            ) from exc
        raise IndexerError(f"SQL error: {exc}") from exc


def statement_action(sql: str, refused: str) -> str:
    """The action to name in a refusal. SQLite authorizes VACUUM as an ATTACH of its scratch (or
    INTO) database, which would read as if the user had asked to attach something."""
    if refused.startswith("attach") and LEADING_COMMENTS.sub("", sql)[:6].lower() == "vacuum":
        target = refused[len("attach"):].strip()
        return f"vacuum into {target}" if target else "vacuum"
    return refused


def column_names(cursor: sqlite3.Cursor) -> list[str]:
    """Column names made unique (`id`, `id_2`) so JSON objects do not lose a column."""
    seen: dict[str, int] = {}
    names = []
    for description in cursor.description or ():
        name = description[0]
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def iter_rows(cursor: sqlite3.Cursor) -> Iterator[tuple]:
    try:
        while rows := cursor.fetchmany(FETCH_ROWS):
            yield from rows
    except sqlite3.DatabaseError as exc:
        raise IndexerError(f"SQL error while reading results: {exc}") from exc


def run_query(db_path: str | os.PathLike[str], sql: str, out: TextIO, *, fmt: str = "table",
              params: dict[str, str] | None = None) -> int:
    """Run SQL read-only against the database and write its rows to out; returns the row count."""
    if fmt not in FORMATS:
        raise IndexerError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    conn, guard = connect_readonly(db_path)
    try:
        cursor = execute_readonly(conn, guard, sql, params or {})
        names = column_names(cursor)
        return WRITERS[fmt](names, iter_rows(cursor), out)
    finally:
        conn.close()


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": True, "encoded": base64.b64encode(value).decode()}
    return value


def _dumps(names: list[str], row: tuple) -> str:
    return orjson.dumps(dict(zip(names, map(_json_value, row), strict=True))).decode()


def write_jsonl(names: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(_dumps(names, row) + "\n")
        count += 1
    return count


def write_json(names: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    """A JSON array written row by row, so it streams like jsonl."""
    count = 0
    out.write("[")
    for row in rows:
        out.write(("\n " if count == 0 else ",\n ") + _dumps(names, row))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def write_csv(names: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    count = 0
    for row in rows:
        writer.writerow(["" if v is None else base64.b64encode(v).decode() if isinstance(v, bytes)
                         else v for v in row])
        count += 1
    return count


def table_cell(value: Any) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= TABLE_MAX_WIDTH else text[: TABLE_MAX_WIDTH - 1] + "…"


def write_table(names: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    """Columns sized from the first TABLE_PREVIEW_ROWS rows; later rows stream with those widths."""
    iterator = iter(rows)
    preview = []
    for row in iterator:
        preview.append(tuple(map(table_cell, row)))
        if len(preview) >= TABLE_PREVIEW_ROWS:
            break
    widths = [len(name) for name in names]
    numeric = [True] * len(names)
    for cells in preview:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], len(cell))
    for row in preview:
        for i, cell in enumerate(row):
            numeric[i] = numeric[i] and (cell == "NULL" or _looks_numeric(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if num else cell.ljust(w)
                         for cell, w, num in zip(cells, widths, numeric, strict=True)).rstrip()

    out.write(line(names) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for cells in preview:
        out.write(line(cells) + "\n")
    count = len(preview)
    for row in iterator:
        out.write(line(tuple(map(table_cell, row))) + "\n")
        count += 1
    return count


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


WRITERS = {"table": write_table, "csv": write_csv, "json": write_json, "jsonl": write_jsonl}
