"""Bookkeeping shared by the file exports: where OUT may go and the `exports` table (the files
themselves are replaced whole through indexer.atomic).

A file export is "up to date" only when the dataset's data_version and the options match the
last export to the same path AND the file is still the one written (same size and mtime), so a
replaced, edited or deleted output is always rewritten.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import orjson

from indexer import media, store
from indexer.errors import IndexerError


def output_path(out: str | os.PathLike[str], what: str) -> Path:
    """Absolute OUT whose folder exists; OUT itself may not be a folder."""
    path = Path(out).expanduser().absolute()
    if path.is_dir():
        raise IndexerError(f"{what} output {path} is a folder: give a file name, e.g. {path}/dataset.{what}")
    if not path.parent.is_dir():
        raise IndexerError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    return path


def previous_export(conn: sqlite3.Connection, dataset: str, kind: str, path: Path) -> dict | None:
    row = conn.execute(
        "SELECT options, data_version, rows, file_size, file_mtime_ns, summary, exported_at FROM exports"
        " WHERE dataset = ? AND kind = ? AND path = ?",
        (dataset, kind, str(path)),
    ).fetchone()
    if row is None:
        return None
    keys = ("options", "data_version", "rows", "file_size", "file_mtime_ns", "summary", "exported_at")
    found = dict(zip(keys, row, strict=True))
    found["summary"] = orjson.loads(found["summary"]) if found["summary"] else {}
    return found


def is_up_to_date(previous: dict | None, options: str, data_version: int, path: Path) -> bool:
    if previous is None or previous["options"] != options or previous["data_version"] != data_version:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == previous["file_size"] and st.st_mtime_ns == previous["file_mtime_ns"]


def record_export(
    db_path: str | os.PathLike[str],
    dataset: str,
    kind: str,
    path: Path,
    *,
    options: str,
    data_version: int,
    rows: int | None,
    summary: dict,
    file_path: Path | None = None,
    failed: int = 0,
) -> None:
    """Upsert the exports row in one short write transaction (never the indexer's writer lock).

    `failed` counts files the export could not write: while it is not 0 the export is stale.
    A read-only database is exported from where it lies and never written: nothing is recorded,
    and `summary["not_recorded"]` says why (its next run cannot be "up to date").
    """
    read_only = media.read_only_reason(db_path)
    if read_only:
        summary["not_recorded"] = f"the database is read-only ({read_only})"
        return
    size = mtime_ns = None
    if file_path is not None:
        st = os.stat(file_path)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    conn = store.connect(db_path)
    try:
        with store.transaction(conn):
            conn.execute(
                "INSERT INTO exports (dataset, kind, path, options, data_version, rows, exported_at,"
                " file_size, file_mtime_ns, summary, failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (dataset, kind, path) DO UPDATE SET options = excluded.options,"
                " data_version = excluded.data_version, rows = excluded.rows,"
                " exported_at = excluded.exported_at, file_size = excluded.file_size,"
                " file_mtime_ns = excluded.file_mtime_ns, summary = excluded.summary,"
                " failed = excluded.failed",
                (dataset, kind, str(path), options, data_version, rows, store.now_iso(), size, mtime_ns,
                 orjson.dumps(summary).decode(), failed),
            )
    finally:
        conn.close()
