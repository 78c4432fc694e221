"""`indexer query SQL`: run one statement on the read-only connection (db/readonly.py) and fetch
its rows in bounded batches; render/rows.py writes them as table, CSV, JSON or JSONL.

A refused write names what was refused rather than SQLite's "attempt to write a readonly database".
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from indexer.db.readonly import ReadOnlyGuard
from indexer.errors import IndexerError

FETCH_ROWS = 1000  # rows held in memory at a time

LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.DOTALL)


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
