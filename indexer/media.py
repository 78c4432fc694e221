"""Where the database lies: whether SQLite can write it there, and how to read it when it cannot.

A database on a read-only file system (a team share, a mounted dataset volume, a published copy)
or in a folder this user cannot write is still read by every reading command and export, and a
writing command says what it is before SQLite tries; store.py opens connections through these.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from indexer.errors import IndexerError


def read_only_reason(db_path: str | os.PathLike[str]) -> str | None:
    """Why SQLite could not write this database where it lies; None when it can.

    A writer needs the file and its folder: WAL creates `-wal` and `-shm` files beside the
    database. A read-only file system (a mounted dataset volume, a published copy) says so itself;
    otherwise the permissions of this user decide (root writes whatever the permissions say).
    """
    real = os.path.realpath(db_path)
    folder = os.path.dirname(real)
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    except OSError:
        return None  # a folder we cannot even look at: opening it says what is wrong
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"this user cannot write its folder {folder}"
    if os.path.exists(real) and not os.access(real, os.W_OK):
        return "this user cannot write the file"
    return None


def refuse_read_only(db_path: str, fresh: bool) -> None:
    """A writing command on a read-only database stops with what it is, before SQLite tries."""
    reason = read_only_reason(db_path)
    if reason is None:
        return
    if fresh and not os.path.exists(db_path):
        raise IndexerError(f"cannot create database {db_path}: {reason}; pass a --db path in a "
                           "folder you can write")
    raise IndexerError(
        f"database {db_path} is read-only ({reason}) and this command writes to it: copy it "
        "somewhere writable and pass the copy with --db. Reading it needs no copy: query, stats, "
        "problems, search, report and the exports work on it where it is"
    )


def read_uri(db_path: str) -> str:
    """The URI a read-only connection opens db_path with, wherever it lies.

    Where SQLite may create files beside the database, plain mode=ro: it shares a running
    writer's `-shm`, so reads stay consistent while an index runs. On read-only media it cannot
    create the `-shm` a WAL database needs (https://www.sqlite.org/wal.html, "Read-Only
    Databases"): a database whose last writer closed cleanly has no WAL content, its main file
    holds every commit, and nothing can change it there, so it is opened immutable (no `-shm`, no
    locks). One whose `-wal` still holds commits is readable only with its `-shm` beside it.
    """
    if read_only_reason(db_path) is None:
        return uri(db_path, mode="ro")
    if not _wal_has_content(db_path):
        return uri(db_path, mode="ro", immutable=True)
    if os.path.exists(db_path + "-shm"):
        return uri(db_path, mode="ro")
    raise IndexerError(
        f"database {db_path} is read-only and was not closed cleanly: {db_path}-wal holds commits "
        f"that are not in the database file yet, and SQLite cannot read them without creating "
        f"{db_path}-shm. Copy both files somewhere writable, fold the -wal in there (`sqlite3 COPY "
        "'PRAGMA wal_checkpoint(TRUNCATE)'`, or any `indexer index` on it) and publish that "
        "database file alone"
    )


def _wal_has_content(db_path: str) -> bool:
    try:
        return os.path.getsize(db_path + "-wal") > 0
    except OSError:
        return False


def uri(db_path: str, **params: str | bool) -> str:
    """A file: URI for db_path; quoting keeps a '?' or '#' in a folder name from ending the path."""
    query = "&".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in params.items()
                     if v is not False)
    return "file:" + urllib.parse.quote(Path(db_path).resolve().as_posix()) + "?" + query
