"""Bulk copies into `samples` that leave its virtual generated columns alone.

SQLite evaluates every generated column of a table on each INSERT, VIRTUAL ones included (its
insert.c computes them for any table that has one, 3.40 as today's sources), although a virtual
column is never stored: for `samples` that is six JSON extractions from `meta` (a parse of the
whole JSON) and two concatenations a row, thrown away once computed. Measured on a first load of
300k DALLE-3-sized rows: 0.75 of the 1.5 CPU-seconds its INSERT ... SELECTs took.

A table declared without those columns stores exactly the same record (a virtual column takes no
place in it). So, inside the writer's own transaction and for the INSERT only, the writer's
connection is shown `samples` declared without them: its row in sqlite_master is rewritten
(PRAGMA writable_schema), the schema reloaded, and the row put back, character for character,
before the transaction may go on. Readers only ever see committed data, in which the definition
never changed (the schema cookie is left alone: they do not even re-read it); a kill or an error
rolls the rewrite back with everything else.

Done only when nothing on `samples` needs a virtual column while rows go in (no trigger, no index
naming one: a bulk write defers the derived structures) and the definition holds nothing the
stand-in would not rebuild (CHECK, COLLATE, STRICT, ...). The stand-in is checked once per schema
against the real definition, in a savepoint rolled back at once: the same stored columns, keys,
index columns and collations, foreign keys. Anything unexpected keeps the plain INSERT.
"""

from __future__ import annotations

import re
import sqlite3
from typing import NamedTuple

from indexer.errors import IndexerError

TABLE = "samples"
SAVEPOINT = "stored_columns_only"
VIRTUAL, STORED = 2, 3  # table_xinfo's `hidden` for generated columns
# What a stand-in built from the pragmas would lose: such a definition keeps the plain INSERT.
UNREBUILT = re.compile(r"\b(CHECK|COLLATE|STRICT|WITHOUT|AUTOINCREMENT|CONSTRAINT)\b", re.IGNORECASE)


class Plan(NamedTuple):
    original: str  # the definition as sqlite_master holds it
    stand_in: str  # the same table without its virtual columns


_plans: dict[tuple, Plan | None] = {}  # by the schema of `samples` (its table, index and trigger SQL)


def insert_rows(conn: sqlite3.Connection, sql: str, params: tuple = ()) -> None:
    """Run `sql`, an INSERT INTO samples, inside the caller's open transaction, without SQLite
    computing the virtual columns of the rows it adds; the plain INSERT when that is not safe."""
    key = tuple(conn.execute("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ?"
                             " ORDER BY type, name", (TABLE,)))
    if key not in _plans:
        _plans[key] = _plan(conn)
    plan = _plans[key]
    if plan is None:
        conn.execute(sql, params)
        return
    conn.execute(f"SAVEPOINT {SAVEPOINT}")
    try:
        _define(conn, plan.stand_in)
        conn.execute(sql, params)
        _define(conn, plan.original)
        if _definition(conn) != plan.original:
            raise IndexerError("the definition of table samples did not come back after a bulk copy"
                               " (nothing was committed): run index again; report it if it persists")
    except BaseException:
        try:
            conn.execute(f"ROLLBACK TO {SAVEPOINT}")
            conn.execute(f"RELEASE {SAVEPOINT}")
        finally:
            conn.execute("PRAGMA writable_schema = RESET")  # the schema as the database holds it
        raise
    conn.execute(f"RELEASE {SAVEPOINT}")


def _plan(conn: sqlite3.Connection) -> Plan | None:
    """The stand-in for this schema, tried in a savepoint rolled back at once; None when there is
    nothing to gain or it would not be the same table."""
    original = _definition(conn)
    columns = conn.execute(f"PRAGMA table_xinfo({TABLE})").fetchall()
    hidden = {column[6] for column in columns}
    if original is None or VIRTUAL not in hidden or not hidden <= {0, VIRTUAL}:
        return None
    if UNREBUILT.search(re.sub(r"--[^\n]*", "", original)):
        return None
    virtual = "|".join(re.escape(column[1]) for column in columns if column[6] == VIRTUAL)
    for kind, sql in conn.execute(
            "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger')",
            (TABLE,)):
        if kind == "trigger" or (sql and re.search(rf"\b({virtual})\b", sql, re.IGNORECASE)):
            return None
    stand_in = _stand_in(conn, columns)
    expected = _shape(conn)
    conn.execute(f"SAVEPOINT {SAVEPOINT}")
    try:
        _define(conn, stand_in)
        same = _shape(conn) == expected
    except sqlite3.Error:
        same = False
    finally:
        try:
            conn.execute(f"ROLLBACK TO {SAVEPOINT}")
            conn.execute(f"RELEASE {SAVEPOINT}")
        finally:
            conn.execute("PRAGMA writable_schema = RESET")
    return Plan(original, stand_in) if same else None


def _definition(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    return row[0] if row else None


def _define(conn: sqlite3.Connection, sql: str) -> None:
    """Rewrite the table's row in sqlite_master and reload this connection's schema from it."""
    conn.execute("PRAGMA writable_schema = ON")
    try:
        conn.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (sql, TABLE))
    finally:
        conn.execute("PRAGMA writable_schema = RESET")


def _stand_in(conn: sqlite3.Connection, columns: list[tuple]) -> str:
    """CREATE TABLE for the table's stored columns (in their order: a virtual column takes no place
    in a record), with its NOT NULLs, defaults, keys, UNIQUE constraints and foreign keys."""
    keys = sorted((column for column in columns if column[5]), key=lambda column: column[5])
    parts = []
    for _cid, name, declared, notnull, default, key, hidden in columns:
        if hidden:
            continue
        part = f"{_quote(name)} {declared}".rstrip()
        part += " PRIMARY KEY" if key and len(keys) == 1 else ""
        part += " NOT NULL" if notnull else ""
        part += f" DEFAULT {default}" if default is not None else ""
        parts.append(part)
    if len(keys) > 1:
        parts.append(f"PRIMARY KEY ({', '.join(_quote(column[1]) for column in keys)})")
    uniques = sorted((row[1] for row in conn.execute(f"PRAGMA index_list({TABLE})") if row[3] == "u"),
                     key=lambda name: int(name.rsplit("_", 1)[1]))
    for name in uniques:
        names = [row[2] for row in conn.execute(f"PRAGMA index_info({_quote(name)})")]
        parts.append(f"UNIQUE ({', '.join(map(_quote, names))})")
    foreign: dict[int, list[tuple]] = {}
    for row in conn.execute(f"PRAGMA foreign_key_list({TABLE})"):
        foreign.setdefault(row[0], []).append(row)
    for rows in foreign.values():
        here = ", ".join(_quote(row[3]) for row in rows)
        there = ", ".join(_quote(row[4]) for row in rows if row[4] is not None)
        target = f"{_quote(rows[0][2])} ({there})" if there else _quote(rows[0][2])
        parts.append(f"FOREIGN KEY ({here}) REFERENCES {target}"
                     f" ON UPDATE {rows[0][5]} ON DELETE {rows[0][6]}")
    return f"CREATE TABLE {TABLE} ({', '.join(parts)})"


def _shape(conn: sqlite3.Connection) -> tuple:
    """What a stored row and its index entries depend on, as this connection sees the table: its
    stored columns in order (type, NOT NULL, default, key), each index's columns, order,
    collation and kind, and the foreign keys."""
    columns = conn.execute(f"PRAGMA table_xinfo({TABLE})").fetchall()
    names = {column[0]: column[1] for column in columns}
    stored = [column[1:6] for column in columns if not column[6]]
    indexes = sorted(
        (name, unique, origin, partial,
         [(names.get(cid, cid), desc, collation, key) for _seq, cid, _name, desc, collation, key
          in conn.execute(f"PRAGMA index_xinfo({_quote(name)})")])
        for _seq, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({TABLE})"))
    foreign = [row[1:] for row in conn.execute(f"PRAGMA foreign_key_list({TABLE})")]
    return stored, indexes, foreign


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
