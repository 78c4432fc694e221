"""SQLite connection, schema migrations, dataset rows and the run log (the writer lock: db/lock.py).

The schema lives only in `schema/NNN_*.sql`; files are applied in order and PRAGMA user_version
records the highest applied number, so an old database is upgraded in place on open.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from indexer import media, unsynced
from indexer.errors import IndexerError

DEFAULT_DB = "indexer.sqlite"
BUSY_TIMEOUT_MS = 30_000
# Pages of a new database file. ~1.5 KB sample rows waste less of larger pages, and a first load
# writes fewer of them: measured at 300k rows, 16 KiB against 8 KiB made the file 9% smaller and
# the first load's writer ~20% cheaper in CPU; reruns, `stats` and `search` at 100k cost no more.
PAGE_SIZE = 16384
CACHE_KIB = 16384  # each connection's page cache: larger gained no speed, cost 100 MB RSS


def default_db_path() -> str:
    return os.environ.get("INDEXER_DB") or DEFAULT_DB


def schema_dir() -> Path:
    """Installed wheels carry the SQL inside the package; a source checkout keeps it at the top."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schema", here.parent / "schema"):
        if candidate.is_dir():
            return candidate
    raise IndexerError("schema folder not found: the installation is incomplete; reinstall indexer")


def schema_files() -> list[tuple[int, Path]]:
    found = []
    for path in schema_dir().glob("*.sql"):
        match = re.match(r"(\d+)_", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def connect(db_path: str | os.PathLike[str], *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database in WAL mode (readers never block the writer) and bring its schema up to date.

    What the file is gets decided before anything is written to it: a folder, a file that is not
    SQLite, another application's database, one from a newer indexer or one from an unreleased
    development version is refused with one clear line, and left exactly as it was.
    """
    db_path = os.fspath(db_path)
    fresh = identify(db_path, readonly=readonly)
    _OPENED.add(os.path.realpath(db_path))
    if readonly:
        return _open(media.read_uri(db_path), uri=True)
    media.refuse_read_only(db_path, fresh)
    conn = _open(db_path)
    try:
        if fresh:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # a new file takes it before its first table
            # SQLite keeps the number of pages it worked out from the page size the cache was set
            # under (4 KiB): 16 MiB of cache would hold 64 MiB of 16 KiB pages for this connection
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
        _check_columns(conn, db_path, latest_version())
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise IndexerError(
            f"database {db_path} is unusable ({exc}); move it aside and rerun to rebuild it"
        ) from exc
    except IndexerError:
        conn.close()
        raise
    return conn


def latest_version() -> int:
    return schema_files()[-1][0]


def identify(db_path: str, *, readonly: bool = False) -> bool:
    """Refuse what this code must not open; True when the database is new or empty (to be created).

    Runs on a separate read-only probe connection, so a refused file gets no byte written and no
    -wal/-shm file left beside it.
    """
    try:
        mode = os.stat(db_path).st_mode
    except FileNotFoundError:
        return _new_database(db_path, readonly)
    except OSError as exc:
        raise IndexerError(f"cannot open database {db_path} ({exc.strerror}): pass another --db") from exc
    if stat.S_ISDIR(mode):
        raise IndexerError(
            f"database {db_path} is a folder, not a file: pass a file path with --db "
            f"(e.g. {os.path.join(db_path, DEFAULT_DB)})"
        )
    if not stat.S_ISREG(mode):
        raise IndexerError(f"database {db_path} is not a regular file: pass a file path with --db")
    size = _check_header(db_path)
    unsynced.refuse_if_restarted(db_path, fresh=size == 0)
    version = 0 if size == 0 else _probe(db_path)
    latest = latest_version()
    if readonly and version == 0:
        raise IndexerError(f"database {db_path} is empty: run `indexer index ROOT --db {db_path}` first")
    if readonly and version < latest:
        where = " on a writable copy (this one is read-only)" if media.read_only_reason(db_path) else ""
        raise IndexerError(
            f"database {db_path} has schema version {version}, this indexer needs {latest}: "
            f"run any writing command (e.g. `indexer index`) once{where} to upgrade it"
        )
    return version == 0


def _new_database(db_path: str, readonly: bool) -> bool:
    if readonly:
        raise IndexerError(
            f"database {db_path} does not exist: run `indexer index ROOT --db {db_path}` first"
        )
    parent = Path(db_path).resolve().parent
    if not parent.is_dir():
        raise IndexerError(f"cannot create database {db_path}: folder {parent} does not exist")
    return True


SQLITE_HEADER = b"SQLite format 3\x00"
# Databases this process has opened through SQLite. Closing any descriptor of a file drops every
# POSIX lock the process holds on it, SQLite's included: a connection that loses its lock on the
# database file looks gone to the others, and the next one to close deletes the WAL it still
# writes into. So a database already open here is never opened by hand again (a watch's exports
# run in its own process).
_OPENED: set[str] = set()


def _check_header(db_path: str) -> int:
    """Read the first bytes ourselves: SQLite would answer a stranger file with a raw error."""
    if os.path.realpath(db_path) in _OPENED:
        return os.path.getsize(db_path)  # SQLite's already: nothing to check, and no descriptor to close
    try:
        with open(db_path, "rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise IndexerError(
            f"cannot read database {db_path} ({exc.strerror}): check its permissions or pass another --db"
        ) from exc
    if size and head != SQLITE_HEADER:
        raise IndexerError(
            f"database {db_path} is unusable: it is not an SQLite file ({size} bytes without the SQLite "
            "header); pass another --db path (nothing was written to it)"
        )
    return size


def _probe(db_path: str) -> int:
    """Check what the database is without writing anything; its user_version (0: empty, create it).

    Without a -wal file the main file holds every committed page, so it is read as immutable (no
    -shm created either); with one, a connection as `read_uri` opens it sees the WAL's pages too. (A
    writer that starts in between can only make this read stale or fail, never write.)
    """
    uri = media.uri(db_path, mode="ro", immutable=True)
    if os.path.exists(db_path + "-wal"):
        uri = media.read_uri(db_path)
    try:
        probe = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.DatabaseError as exc:
        raise IndexerError(f"cannot open database {db_path}: {exc}") from exc
    try:
        version = probe.execute("PRAGMA user_version").fetchone()[0]
        tables = [row[0] for row in probe.execute(
            "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view')"
            " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")]
        if tables or version:
            _check_identity(db_path, version, tables)
            _check_columns(probe, db_path, version)
        return version
    except sqlite3.DatabaseError as exc:
        raise IndexerError(
            f"database {db_path} is unusable ({exc}); move it aside and rerun to rebuild it"
        ) from exc
    finally:
        probe.close()


def _check_identity(db_path: str, version: int, tables: list[str]) -> None:
    """Another application's database, or one from a newer indexer, is not ours to change."""
    latest = latest_version()
    # the tables of the first schema that the latest still has: every indexer database holds them
    core = set(expected_columns(1)) & set(expected_columns(latest))
    if version == 0 or not core <= set(tables):
        shown = ", ".join(_printable(name) for name in tables[:5])
        more = f" and {len(tables) - 5} more" if len(tables) > 5 else ""
        holds = f"other tables: {shown}{more}" if tables else f"no tables but user_version {version}"
        raise IndexerError(
            f"database {db_path} is not an indexer database (it holds {holds}): pass another --db "
            "path; indexer adds nothing to another application's database"
        )
    if version > latest:
        raise IndexerError(
            f"database {db_path} was made by a newer indexer (schema {version}, this one knows "
            f"{latest}): upgrade indexer (pip install -U indexer) to use it"
        )


def _check_columns(conn: sqlite3.Connection, db_path: str, version: int) -> None:
    """Every column the released schema files up to `version` create must be there.

    A database made while a released file was still being edited has the right user_version but
    not the columns; migrations cannot add them, so it is refused instead of failing later with a
    raw `no such column`.
    """
    missing = []
    for table, columns in expected_columns(version).items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_xinfo({_quote(table)})")}
        missing += [f"{table}.{column}" for column in sorted(columns - have)] if have else [table]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise IndexerError(
            f"database {db_path} was made by an unreleased development version of indexer (schema "
            f"{version} without {shown}) and cannot be upgraded: move it aside and rerun "
            "`indexer index` to rebuild it"
        )


@functools.cache
def expected_columns(version: int) -> dict[str, frozenset[str]]:
    """Table -> columns as schema files 1..version create them, from an in-memory copy (~2 ms)."""
    memory = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(memory, upto=version)
        tables = [row[0] for row in memory.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")]
        return {table: frozenset(row[1] for row in memory.execute(f"PRAGMA table_xinfo({_quote(table)})"))
                for table in tables}
    finally:
        memory.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _printable(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in name)


def _open(target: str, uri: bool = False) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            target, uri=uri, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Foreign keys are declared for readers but not enforced: the checks cost ~25% of insert
        # time on a first index, and this code is the only writer.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute("PRAGMA temp_store = FILE")
    except sqlite3.DatabaseError as exc:
        raise IndexerError(f"cannot open database {target}: {exc}") from exc
    return conn


def migrate(conn: sqlite3.Connection, upto: int | None = None) -> int:
    """Apply every schema file newer than user_version (up to `upto`), each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, path in schema_files():
        if number <= version or (upto is not None and number > upto):
            continue
        with transaction(conn):
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if number <= current:  # another process migrated meanwhile
                continue
            for statement in _split_sql(path.read_text(encoding="utf-8")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        version = number
    return version


def _split_sql(script: str) -> Iterator[str]:
    """Split a schema file into statements, keeping trigger bodies (BEGIN ... END;) whole."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--") and not buffer.strip():
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def ensure_dataset(conn: sqlite3.Connection, dataset_id: str | None, root: Path) -> str:
    """Return the dataset id for root, creating the row; the same root keeps its id."""
    root_text = str(root)
    row = conn.execute("SELECT id FROM datasets WHERE root = ?", (root_text,)).fetchone()
    if row:
        if dataset_id and dataset_id != row[0]:
            raise IndexerError(
                f"{root_text} is already indexed as dataset {row[0]!r}; "
                f"pass --id {row[0]} (or omit --id) to update it"
            )
        return row[0]
    dataset_id = dataset_id or root.name or "root"
    other = conn.execute("SELECT root FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
    if other:
        raise IndexerError(
            f"dataset id {dataset_id!r} already names {other[0]}; choose another with --id NAME"
        )
    with transaction(conn):
        conn.execute(
            "INSERT INTO datasets (id, root, created_ns, json_bytes) VALUES (?, ?, ?, 0)",
            (dataset_id, root_text, time.time_ns()),
        )
    return dataset_id


def resolve_dataset(conn: sqlite3.Connection, dataset_id: str | None) -> tuple[str, Path]:
    """Pick the dataset a reading command works on: the named one, or the only one."""
    rows = conn.execute("SELECT id, root FROM datasets ORDER BY id").fetchall()
    if dataset_id is not None:
        for row_id, root in rows:
            if row_id == dataset_id:
                return row_id, Path(root)
        known = ", ".join(r[0] for r in rows) or "none yet"
        raise IndexerError(f"no dataset {dataset_id!r} in the database (known: {known})")
    if not rows:
        raise IndexerError("the database holds no dataset yet: run `indexer index ROOT` first")
    if len(rows) > 1:
        names = ", ".join(r[0] for r in rows)
        raise IndexerError(f"the database holds several datasets ({names}): pick one with --id")
    return rows[0][0], Path(rows[0][1])


def start_run(conn: sqlite3.Connection, dataset: str | None, command: str) -> int:
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO runs (dataset, command, started_at) VALUES (?, ?, ?)",
            (dataset, command, now_iso()),
        )
    return int(cur.lastrowid or 0)


def finish_run(conn: sqlite3.Connection, run_id: int, summary: dict, status: str = "done",
               error: str | None = None) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE runs SET finished_at = ?, status = ?, added = ?, changed = ?, removed = ?,"
            " unchanged = ?, files_read = ?, problems = ?, seconds = ?, error = ? WHERE id = ?",
            (
                now_iso(), status, summary.get("added"), summary.get("changed"),
                summary.get("removed"), summary.get("unchanged"), summary.get("files_read"),
                orjson.dumps(summary.get("problems", {})).decode(), summary.get("seconds"),
                error, run_id,
            ),
        )
