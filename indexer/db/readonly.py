"""The one read-only connection: every reading command (query, stats, problems, search) and every
export's snapshot opens the database through `connect_readonly`.

Read-only twice over: `PRAGMA query_only` is on (a reading command also opens the file with
mode=ro) and an authorizer refuses, before anything runs, every action that is not reading, so even
schema-less writes (ATTACH, PRAGMA x = y, temp tables) are caught.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from indexer import media, store

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


SCHEMA_TABLES = ("sqlite_master", "sqlite_temp_master", "sqlite_schema", "sqlite_temp_schema")
SCHEMA_WRITES = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)


class ReadOnlyGuard:
    """The authorizer of every reading connection: reading only; remembers what it refused.

    Allowed: SELECT and its reads, functions and recursion; pragmas that read; BEGIN/COMMIT; and
    the sqlite_master bookkeeping SQLite itself does (it reports an UPDATE of sqlite_master while
    it sets up json_each or a table-valued pragma). Everything else is denied before it runs.
    """

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
            # write is still stopped by query_only.
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


def connect_readonly(db_path: str | os.PathLike[str], *, upgrade: bool = False,
                     cache_kib: int | None = None) -> tuple[sqlite3.Connection, ReadOnlyGuard]:
    """A connection that can only read, and its guard (which names what it refused).

    `upgrade`: for a command that also writes elsewhere (an export records itself), so an older
    schema is upgraded first, as writing commands do; a reading command refuses it instead, and so
    does an export of a read-only database (read where it lies, never written).
    `cache_kib` sets the page cache before the guard is on (one pass in key order needs little).
    """
    writable = upgrade and media.read_only_reason(db_path) is None
    conn = store.connect(db_path, readonly=not writable)
    try:
        conn.execute("PRAGMA query_only = ON")
        if cache_kib is not None:
            conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        guard = ReadOnlyGuard()
        conn.set_authorizer(guard)
    except BaseException:
        conn.close()
        raise
    return conn, guard


@contextlib.contextmanager
def reading(db_path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """connect_readonly for a block, closed at its end."""
    conn, _guard = connect_readonly(db_path)
    try:
        yield conn
    finally:
        conn.close()
