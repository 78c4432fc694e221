"""The one rule for "this file changed": what a file record keeps, and when two of them differ.

As in watchdog's DirectorySnapshotDiff, the decision is pure: it takes stat values (from
`os.stat`, a directory file descriptor, a tar header or a future object listing) and says what to
store and whether a stored record still describes the file. Every reader (loose files, tar shards,
`extract`, `watch`) builds its records here, so a patched window or a new kind of signature
reaches all of them.

- Signature: size, mtime_ns, ctime_ns and inode mixed into 63 bits (git, borg and restic compare
  the same four fields: mtime alone misses a same-size rewrite that restores the old mtime).
- Racy: a file whose mtime or ctime is within RACY_WINDOW_NS of the run's start may still change
  within the clock's tick; its record gets NEVER_MATCHES, so the next run reads it again.
- Out of range: SQLite stores signed 64-bit integers. A time past 2262 (or before 1677) in
  nanoseconds does not fit; it is stored clamped and the sample says so, while the signature is
  taken from the exact values, so a later change of any field is still seen.
"""

from __future__ import annotations

import hashlib
import os
from typing import NamedTuple

RACY_WINDOW_NS = 3_000_000_000  # read at call time, so a patched window reaches every reader
NEVER_MATCHES = -1  # a signature is never negative: a record with this one always looks changed
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
NS_PER_SECOND = 1_000_000_000
FUTURE_MTIME_NS = 86_400 * NS_PER_SECOND  # a run (its scan and reads) is assumed shorter than a day


class FileRecord(NamedTuple):
    """One file of a sample as a reader saw it (path relative to the root)."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    racy: bool

    @property
    def signature(self) -> int:
        """What the record stores for the next run to compare (NEVER_MATCHES when racy)."""
        return NEVER_MATCHES if self.racy else stat_signature(self.size, self.mtime_ns, self.ctime_ns,
                                                              self.inode)

    @property
    def stored_mtime_ns(self) -> int:
        """The mtime as a database column holds it (clamped into 64 bits)."""
        return clamp_int64(self.mtime_ns)

    def trusted(self) -> FileRecord:
        """The same record with its content known (the run wrote the file itself): not racy."""
        return self._replace(racy=False)


def stat_signature(size: int, mtime_ns: int, ctime_ns: int, inode: int) -> int:
    """A 63-bit mix of the four stat fields, stored with each file record.

    Stable across processes and Python versions (unlike hash() of a tuple); each field is multiplied
    by an odd constant, so a change in any one field alone always changes the signature. Python's
    integers do not overflow, so times outside 64 bits mix in exactly.
    """
    return (size * 0x9E3779B97F4A7C15 ^ mtime_ns * 0xC2B2AE3D27D4EB4F
            ^ ctime_ns * 0x165667B19E3779F9 ^ inode * 0x27D4EB2F165667C5) & 0x7FFF_FFFF_FFFF_FFFF


def is_racy(mtime_ns: int, ctime_ns: int, scan_start_ns: int) -> bool:
    """Whether a file is too young, at a run that started at scan_start_ns, to trust its stat.

    The kernel sets ctime to its clock at every change, so a recent ctime says it all; mtime is
    checked too for filesystems whose ctime is not kept, but only up to FUTURE_MTIME_NS past the
    run's start: a file dated years ahead (a wrong camera clock) is not young, and taking it for
    racy would re-read it on every run."""
    cut = scan_start_ns - RACY_WINDOW_NS
    return ctime_ns >= cut or cut <= mtime_ns <= scan_start_ns + FUTURE_MTIME_NS


def file_record(path: str, st: os.stat_result, scan_start_ns: int) -> FileRecord:
    """The record of a file a reader just stat-ed (built with tuple.__new__: a million of these in
    a first run, and the named constructor is a Python call)."""
    mtime_ns, ctime_ns = st.st_mtime_ns, st.st_ctime_ns
    cut = scan_start_ns - RACY_WINDOW_NS  # is_racy, inline
    racy = ctime_ns >= cut or cut <= mtime_ns <= scan_start_ns + FUTURE_MTIME_NS
    return _new_tuple(FileRecord, (path, st.st_size, mtime_ns, ctime_ns, st.st_ino, racy))


_new_tuple = tuple.__new__


def current_signature(st: os.stat_result) -> int:
    """The signature a stored record must equal for the file to count as unchanged."""
    return stat_signature(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def clamp_int64(value: int) -> int:
    """value, or the nearest value a SQLite INTEGER holds."""
    return INT64_MIN if value < INT64_MIN else INT64_MAX if value > INT64_MAX else value


def fits_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


def out_of_range_warning(record: FileRecord) -> str | None:
    """What a sample says about a file whose times the database cannot hold exactly."""
    odd = [name for name, value in (("modification", record.mtime_ns), ("change", record.ctime_ns))
           if not fits_int64(value)]
    if not odd:
        return None
    return (f"{record.path}: its {' and '.join(odd)} time is outside the years 1677-2262 (a wrong clock?);"
            " stored clamped to that range, changes to the file are still detected")


def diff(stored: dict[str, tuple], current: dict[str, tuple]) -> tuple[list[str], list[str]]:
    """(new or changed, removed) paths, sorted, between stored and current records of whole
    files (tar shards; objects in a bucket): a record that differs in any field is a change."""
    changed = sorted(path for path, record in current.items() if stored.get(path) != record)
    return changed, sorted(path for path in stored if path not in current)


ShardRecord = tuple[int, int, int, int, str | None]  # size, mtime_ns, ctime_ns, inode, version


def shard_record(st: os.stat_result) -> ShardRecord:
    """A local tar shard's record as its row stores it and a rerun compares it."""
    return (st.st_size, clamp_int64(st.st_mtime_ns), clamp_int64(st.st_ctime_ns), st.st_ino, None)


def object_shard_record(size: int, version: str, mtime_ns: int) -> ShardRecord:
    """A remote shard's record: size, last-modified and version from the listing (no ctime, no
    inode), so a rerun decides from one listing, reading no object."""
    return (size, clamp_int64(mtime_ns), 0, 0, version)


def object_record(path: str, size: int, version: str, mtime_ns: int) -> FileRecord:
    """A remote object's file record: the version stands in for the inode in the signature (it
    changes whenever the bytes do), and an object is never racy (a version is immutable)."""
    return FileRecord(path, size, mtime_ns, 0, version_number(version), False)


def version_number(version: str) -> int:
    """A stable 63-bit number for a version string (hash() differs between processes)."""
    digest = hashlib.blake2b(version.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
