"""`indexer query SQL`: run one read-only statement and stream its rows as table, CSV, JSON or JSONL.

Read-only twice over: the file is opened with mode=ro (SQLite itself refuses writes) and an
authorizer refuses, before anything runs, every action that is not reading - so a write fails with a
message naming what was refused rather than SQLite's "attempt to write a readonly database", and
even schema-less writes (ATTACH, PRAGMA x = y, temp tables) are caught.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from indexer import store
from indexer.errors import IndexerError

FETCH_ROWS = 1000  # rows held in memory at a time

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
