"""The writer lock: one indexing writer per database at a time (index, watch, extract).

SQLite's own locking keeps each transaction safe; this lock keeps two long runs from interleaving
their batches. It is an flock on `DB.lock`, held by an open file description, so a killed run
frees it; the file names the holder for the message a second writer gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from indexer.errors import DatabaseLocked

LOCK_SUFFIX = ".lock"
HOLDER_TEXT_LIMIT = 200  # bytes of the holder's description read back for the message


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
    lock_path = os.fspath(db_path) + LOCK_SUFFIX
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            holder = os.pread(fd, HOLDER_TEXT_LIMIT, 0).decode("utf-8", "replace").strip()
            holder = holder or "another process"
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
