"""Writes that have not reached the disk yet: the first load of a database that holds nothing else.

WAL with synchronous=NORMAL (every other write) waits for the disk at each checkpoint: the WAL,
then the database file, so every page of a first load is written to the disk twice, and the
writer waits for both. A first load into a database that holds nothing but it (no sample, shard
or export record yet) runs with synchronous=OFF instead: the OS page cache holds the WAL, which is
rewritten in place, and the database file, which the OS writes back once; the writer waits for
the disk once, at the load's end (`settle`). Readers are not concerned: every process on the
machine sees the same page cache, so what a reader reads is the same whether it reached the disk
or not, and no lock or journal mode changes.

What it risks is the machine stopping (power loss, an OS crash) before the load's end: the
database file may then be damaged. That is known for sure: before the first unsynced write a
marker file (`DB-unsynced`) is written and flushed, holding the kernel's boot id, and it is
removed only once everything written is on the disk. A marker from another boot means the machine
restarted meanwhile: every command refuses the database (which held nothing but that load: delete
it and index again). A marker from this boot is a load still going on, or one killed while the
OS kept its pages: the next writer flushes them and removes it. Where there is no boot id (not
Linux) a first load keeps synchronous=NORMAL.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from indexer.errors import IndexerError

MARKER_SUFFIX = "-unsynced"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str | None:
    """This boot of the machine's kernel (Linux); None where it cannot be known."""
    try:
        with open(BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip() or None
    except (OSError, ValueError):
        return None


def marker_path(db_path: str | os.PathLike[str]) -> str:
    return os.path.realpath(db_path) + MARKER_SUFFIX  # as SQLite names the file it opened


def refuse_if_restarted(db_path: str | os.PathLike[str], fresh: bool) -> None:
    """Stop before a database whose unsynced first load the machine's restart cut short (it may be
    damaged). A fresh (missing or empty) database has nothing to refuse: its marker is stale."""
    if fresh:
        return
    written = _marker_boot(db_path)
    if written is None or written == boot_id():
        return
    raise IndexerError(
        f"database {db_path} was being filled by its first index, which does not wait for the disk,"
        " when this machine restarted (a crash or a power loss): it may be damaged, and it held"
        f" nothing else. Delete it (with {os.path.basename(db_path)}-wal, -shm and -unsynced beside it)"
        " and run `indexer index` again"
    )


def begin(db_path: str | os.PathLike[str]) -> bool:
    """Write the marker and flush it to the disk, before any unsynced write; False (no marker)
    where this machine's boot cannot be known or the marker cannot be written: then every write
    keeps waiting for the disk."""
    boot = boot_id()
    if boot is None:
        return False
    marker = marker_path(db_path)
    partial = marker + ".partial"
    try:
        with open(partial, "w", encoding="ascii") as handle:
            handle.write(boot + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, marker)  # the marker is there whole, or not at all
        _flush_folder(marker)
    except OSError:
        for path in (partial, marker):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return False
    return True


def settle(db_path: str | os.PathLike[str]) -> None:
    """Flush the database and its WAL to the disk, then remove the marker (a no-op without one).
    Only the holder of the writer lock may call it: a marker is a running load's until it ends."""
    marker = marker_path(db_path)
    if not os.path.exists(marker):
        return
    main = os.path.realpath(db_path)
    try:
        _flush_elsewhere([main, main + "-wal"])
        _flush_folder(main)  # the files' own entries, created by this load
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)
        _flush_folder(marker)
    except OSError as exc:
        raise IndexerError(f"cannot flush database {db_path} to the disk ({exc}): check the disk, then"
                           " run any writing command again (it flushes it first)") from None


# Opens each file and fsyncs it: run in a process of its own, because closing any descriptor of a
# file drops every POSIX lock this process holds on it, SQLite's own included (its connection
# would lose the lock that tells others it still uses the WAL).
_FLUSH = """
import os, sys
for path in sys.argv[1:]:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        continue
    os.fsync(descriptor)
"""


def _flush_elsewhere(paths: list[str]) -> None:
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _FLUSH, *paths], check=False,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise OSError(lines[-1] if lines else f"exit status {done.returncode}")


def _marker_boot(db_path: str | os.PathLike[str]) -> str | None:
    try:
        with open(marker_path(db_path), encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return ""  # there, but unreadable: not this boot's


def _flush_folder(path: str) -> None:
    descriptor = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
