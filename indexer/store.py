"""SQLite connection, schema migrations, dataset rows, the writer lock and the run log.

The schema lives only in `schema/NNN_*.sql`; files are applied in order and PRAGMA user_version
records the highest applied number, so an old database is upgraded in place on open.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from indexer.errors import DatabaseLocked, IndexerError

DEFAULT_DB = "indexer.sqlite"
BUSY_TIMEOUT_MS = 30_000


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
    """Open the database in WAL mode (readers never block the writer) and bring its schema up to date."""
    db_path = os.fspath(db_path)
    if readonly:
        if not os.path.exists(db_path):
            raise IndexerError(
                f"database {db_path} does not exist: run `indexer index ROOT --db {db_path}` first"
            )
        uri = "file:" + Path(db_path).resolve().as_posix() + "?mode=ro"
        conn = _open(uri, uri=True)
        _check_version(conn, db_path)
        return conn
    parent = Path(db_path).resolve().parent
    if not parent.is_dir():
        raise IndexerError(f"cannot create database {db_path}: folder {parent} does not exist")
    conn = _open(db_path)
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.execute("PRAGMA page_size = 8192")  # ~1.5 KB sample rows waste less of 8 KiB pages
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise IndexerError(
            f"database {db_path} is unusable ({exc}); move it aside and rerun to rebuild it"
        ) from exc
    return conn


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
        conn.execute("PRAGMA cache_size = -16384")  # 16 MiB: larger gained no speed, cost 100 MB RSS
        conn.execute("PRAGMA temp_store = FILE")
    except sqlite3.DatabaseError as exc:
        raise IndexerError(f"cannot open database {target}: {exc}") from exc
    return conn


def _check_version(conn: sqlite3.Connection, db_path: str) -> None:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise IndexerError(f"database {db_path} is unusable: {exc}") from exc
    latest = schema_files()[-1][0]
    if version < latest:
        raise IndexerError(
            f"database {db_path} has schema version {version}, this indexer needs {latest}: "
            "run any writing command (e.g. `indexer index`) once to upgrade it"
        )


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every schema file newer than user_version, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, path in schema_files():
        if number <= version:
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


_HELD_LOCK_FDS: set[int] = set()


def release_inherited_locks() -> None:
    """Call first thing in a forked worker: flock belongs to the open file, which fork shares, so a
    worker that outlived a killed parent would otherwise keep the database locked."""
    for fd in list(_HELD_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCK_FDS.clear()


@contextlib.contextmanager
def writer_lock(db_path: str | os.PathLike[str], command: str, wait: bool = False) -> Iterator[None]:
    """One indexing writer per database at a time (index, watch, extract).

    SQLite's own locking keeps each transaction safe; this lock keeps two long runs from
    interleaving their batches. Held by an open file description, so a killed run frees it.
    """
    lock_path = os.fspath(db_path) + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise DatabaseLocked(
                f"database {db_path} is being written by {holder}; wait for it to finish "
                "(or stop it) and run this command again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`indexer {command}` (pid {os.getpid()})".encode(), 0)
        _HELD_LOCK_FDS.add(fd)
        yield
    finally:
        _HELD_LOCK_FDS.discard(fd)
        os.close(fd)


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
            "INSERT INTO datasets (id, root, created_ns) VALUES (?, ?, ?)",
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
