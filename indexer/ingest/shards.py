"""Tar shards indexed in place: the samples inside `*.tar` files under a root, read by offset.

Each shard is one reader task (one sequential pass with `tar_members.iter_members`: headers and
JSON members are read, image data is jumped over; an image's head is read by offset only when its
size must come from the header). A shard is recorded like a file (size, mtime_ns, ctime_ns, inode
in `tar_shards`), so a rerun re-reads only new or changed shards and forgets removed ones. A
sample's key is the member path without its extension: the key `indexer extract` would give it.

The same key in two shards (or as loose files and in a shard) is owned by whoever had it first;
the other shard records it in `tar_shards.duplicates`, and when the owner lets go of it (changed
or removed), the other shard is read again so the key is not lost.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from indexer import store
from indexer.ingest.change import NS_PER_SECOND, ShardRecord, clamp_int64, diff, fits_int64, shard_record
from indexer.ingest.engines import fallback_for, pool_for
from indexer.ingest.guard import REPORT, describe, failed_sample, raise_if_environment
from indexer.ingest.read import build_sample, header_size_of, with_warnings
from indexer.ingest.recorder import SHOWN_LIMIT, Recorder
from indexer.ingest.records import member_stats
from indexer.ingest.rows import ReadSettings
from indexer.ingest.tar_members import BLOCK, Member, TarDamaged, TarReadError, iter_members_in
from indexer.ingest.walk import JSON_EXTENSION, split_sample_path
from indexer.ingest.workers import LARGE_TASKS_AHEAD, map_in_order

SHARD_SUFFIX = ".tar"
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
HEAD_BYTES = 64 << 10  # enough for a JPEG's frame header behind its EXIF and ICC segments


@dataclass
class ShardRead:
    """What one reader task found in one shard (plain data: it crosses the process boundary)."""

    path: str  # relative to the root
    stat: ShardRecord | None  # what decides "changed" (change.py); None: it changed while read
    results: list[tuple] = field(default_factory=list)  # CompactResult per key, sorted by key
    members: int = 0
    json_read: int = 0
    bytes_read: int = 0  # what the shard's reads returned, read-ahead included
    bytes_used: int = 0  # of it, the headers, JSON and image heads the samples were made of
    refusals: list[list[str]] = field(default_factory=list)
    error: str | None = None
    requests: int | None = None  # range requests a remote shard took (None: a local file)
    fetched: int | None = None  # bytes those requests fetched


class ShardFile(Protocol):
    """Where a shard's bytes come from: a local file (LocalShard) or a remote object
    (remote.RemoteObject): its name for messages, its size, and byte ranges of it."""

    name: str

    @property
    def size(self) -> int: ...

    def pread(self, count: int, offset: int) -> bytes: ...


@dataclass
class LocalShard:
    name: str
    fd: int
    size: int
    bytes: int = 0  # what its reads returned (as remote.RemoteObject counts what it fetched)

    def pread(self, count: int, offset: int) -> bytes:
        data = os.pread(self.fd, count, offset)
        self.bytes += len(data)
        return data


def _want(name: str) -> int:
    """Read JSON members whole; skip image data (its head is read by offset only if needed)."""
    return -1 if name[name.rfind(".") + 1 :].lower() == JSON_EXTENSION else 0


def read_shard(root: str, rel: str, verify_images: bool) -> ShardRead:
    """Read one local shard's members into sample rows (runs in a reader process)."""
    full = os.path.join(root, rel)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block the open
    except OSError as exc:
        raise_if_environment(exc)
        return ShardRead(rel, (0, 0, 0, 0, None), error=f"{full}: cannot read it ({exc.strerror}); check it"
                         " and run index again")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ShardRead(rel, shard_record(st), error=f"{full}: not a regular file; give the path of a"
                             " .tar shard")
        local = LocalShard(full, fd, st.st_size)
        found = read_shard_file(local, rel, shard_record(st), verify_images)
        found.bytes_read = local.bytes
        return found
    finally:
        os.close(fd)


Walk = Callable[[Callable[[str], int]], Iterator[Member]]  # want_data -> the shard's members


def read_shard_file(shard: ShardFile, rel: str, record: ShardRecord, verify_images: bool,
                    walk: Walk | None = None) -> ShardRead:
    """Read one shard's members into sample rows, under the guard: whatever the shard's bytes make
    fail is the shard's recorded error, never the run's end. walk: how its members are walked
    (a remote shard's: remote_walk.members), else tar_members' walk over shard.pread."""
    found = ShardRead(rel, record)
    try:
        keys = _sample_members(shard, found, walk)
    except Exception as exc:
        raise_if_environment(exc)
        found.error = f"{shard.name}: reading stopped ({describe(exc)}); {REPORT}"
        return found
    if keys is None:
        return found
    for key in sorted(keys):
        try:
            found.results.append(_member_sample(rel, key, keys[key], shard, verify_images, found))
        except Exception as exc:
            raise_if_environment(exc)
            found.results.append(failed_sample(key, sorted(keys[key]), exc, shard=rel))
    return found


def _sample_members(shard: ShardFile, found: ShardRead,
                    walk: Walk | None) -> dict[str, dict[str, Member]] | None:
    """The shard's sample members by key; None when it cannot be read at all. Damage (a garbled
    header, a cut file, a malformed number: anything the walk raises) ends the walk, records the
    error with its offset, and keeps every member before it."""
    keys: dict[str, dict[str, Member]] = collections.defaultdict(dict)
    position = 0  # where the last complete member ends
    try:
        walked = walk or (lambda want: iter_members_in(shard.pread, shard.name, shard.size, want_data=want))
        for member in walked(_want):
            position = member.data_offset + member.size
            found.members += 1
            found.bytes_used += BLOCK + len(member.data or b"")
            if member.refusal is not None:
                found.refusals.append([member.name, member.refusal])
                continue
            if member.kind != "file":
                continue
            parts = split_sample_path(member.name)
            if parts is not None:
                keys[parts[0]][member.name] = member  # a name given twice: the last wins, as in tar xf
    except TarDamaged as exc:
        found.error = str(exc)
    except TarReadError as exc:
        found.error = str(exc)
        return None
    except Exception as exc:
        raise_if_environment(exc)
        found.error = (f"{shard.name}: damaged tar after byte {position} ({describe(exc)}); the members"
                       " before it were read: re-download or re-create the shard")
    return keys


def _member_sample(shard: str, key: str, members: dict[str, Member], source: ShardFile, verify_images: bool,
                   found: ShardRead) -> tuple:
    """One key's CompactResult from its members (the same rules as for loose files)."""
    cut = len(key) + 1
    jsons = sorted(name for name in members if name[cut:].lower() == JSON_EXTENSION)
    images = sorted(name for name in members if name[cut:].lower() != JSON_EXTENSION)
    json_name = jsons[0] if jsons else None
    json_data = members[json_name].data if json_name else None
    found.json_read += json_name is not None

    def header(image: str) -> tuple[int, int] | str:
        member = members[image]
        head = source.pread(min(member.size, HEAD_BYTES), member.data_offset)
        found.bytes_used += len(head)
        return header_size_of(head)

    sample, _header_reads = build_sample(key, json_name, jsons[1:], images, json_data, None,
                                         verify_images, header)
    json_member = members[json_name] if json_name else None
    image_member = members[sample.image] if sample.image else None
    odd = [f"{shard}:{m.name}: its header time is outside the years 1677-2262; stored clamped to that range"
           for m in (json_member, image_member) if m is not None and not fits_int64(m.mtime_ns)]
    if odd:
        sample = with_warnings(sample, odd)
    row = (sample.image[cut:] if sample.image else None, json_name[cut:] if json_name else None,
           *sample[2:])
    stats = member_stats(shard, json_member.size if json_member else None,
                         json_member.data_offset if json_member else None,
                         image_member.size if image_member else None,
                         clamp_int64(image_member.mtime * NS_PER_SECOND) if image_member else None,
                         image_member.data_offset if image_member else None)
    return key, row, stats, 1 if json_name else 0


@dataclass
class ShardCounts:
    seen: int = 0
    read: int = 0
    removed: int = 0
    members: int = 0
    bytes_read: int = 0
    bytes_used: int = 0
    refused: int = 0
    duplicates: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    compressed: list[str] = field(default_factory=list)
    requests: int = 0  # range requests remote shards took, this run
    fetched: int = 0  # bytes those requests fetched
    per_shard: list[dict] = field(default_factory=list)  # remote shards: requests and bytes each
    unread: list[str] = field(default_factory=list)  # remote shards not read (network, or replaced)

    def add(self, shard: ShardRead, conflicts: list[tuple[str, str | None, str | None]]) -> None:
        """Count a shard just recorded, and the keys it met in other origins."""
        self.read += 1
        self.members += shard.members
        self.bytes_read += shard.bytes_read
        self.bytes_used += shard.bytes_used
        self.refused += len(shard.refusals)
        self.duplicates += [f"{key}: in {loser or 'loose files'} and in {owner or 'loose files'};"
                            f" using {owner or 'the loose files'}" for key, loser, owner in conflicts]
        if shard.error:
            self.errors.append(shard.error)
        self.requests += shard.requests or 0
        self.fetched += shard.fetched or 0

    def summary(self) -> dict:
        remote = {"requests": self.requests, "fetched_bytes": self.fetched, "per_shard": self.per_shard} \
            if self.per_shard else {}
        return {"seen": self.seen, "read": self.read, "removed": self.removed, "members": self.members,
                "bytes_read": self.bytes_read, "bytes_used": self.bytes_used, "refused": self.refused,
                "duplicates": self.duplicates[:SHOWN_LIMIT], "duplicates_count": len(self.duplicates),
                "errors": self.errors, "compressed": self.compressed, **remote}

    def unread_summary(self) -> dict:
        """Shards not read to their end for a reason outside them (the network, a task out of
        retries): what the run summary lists as `unread` (exit 4)."""
        return {"unread": self.unread[:SHOWN_LIMIT], "unread_count": len(self.unread)}


ReadInOrder = Callable[[list[str]], Iterator[ShardRead]]


def update_shards(recorder: Recorder, current: dict[str, ShardRecord], read_in_order: ReadInOrder,
                  skipped_prefixes: tuple[str, ...] = ()) -> ShardCounts:
    """Bring the samples of the shards up to date: read new or changed shards (current: every
    shard there is now, with its record), forget removed ones, through the recorder (one home for
    the write rules). read_in_order(paths) reads shards, yielding them in the given order (local
    files in reader processes, remote objects in threads)."""
    conn, dataset, counts = recorder.conn, recorder.dataset, recorder.counts
    shard_counts = ShardCounts(seen=len(current))
    with store.transaction(conn):  # loose files that took a key over from a shard, this run
        for key, loser, owner in counts.conflicts:
            if loser is not None:
                note_duplicate(conn, dataset, loser, key, owner)
    pending, removed = diff(stored_shards(conn, dataset), current)
    holding = shards_holding_samples(conn, dataset) if pending else set()
    for rel in removed:
        if not rel.startswith(skipped_prefixes):  # a folder that could not be listed: not gone
            _forget_shard(recorder, rel)
            shard_counts.removed += 1
    for _round in range(2):  # the second round: shards whose duplicate keys lost their owner
        for shard in read_in_order(pending):
            _record_shard(recorder, shard, shard_counts, holding)
        pending = sorted(set(_orphaned_duplicates(conn, dataset)) & set(current))
        if not pending:
            break
    return shard_counts


def local_shards(root: Path, found: list[str]) -> dict[str, ShardRecord]:
    """The records of the local shards found (one that vanished since the walk is left out)."""
    current = {}
    for rel in found:
        try:
            current[rel] = shard_record(os.stat(os.path.join(root, rel)))
        except OSError:
            continue
    return current


def read_local_in_order(shards: list[str], settings: ReadSettings) -> Iterator[ShardRead]:
    """Local shards read in reader processes, yielded in the given (sorted) order: who owns a
    duplicate key is then the same whatever the timing."""
    calls = ((settings.root, rel, settings.verify_images) for rel in shards)
    yield from map_in_order(read_shard, calls, min(settings.workers, len(shards)),
                            settings.workers * LARGE_TASKS_AHEAD,
                            pool_of=pool_for(settings.engine, settings.ray_address, False),
                            on_error=fallback_for(settings.engine, shard_task_failed))


def shard_task_failed(call: tuple, exc: Exception) -> ShardRead:
    """A shard whose read task failed for good (out of retries): not recorded, read again next run."""
    rel = call[1]
    return ShardRead(rel, None, error=f"{rel}: its read task failed ({describe(exc)}); run index again")


def shards_holding_samples(conn: sqlite3.Connection, dataset: str) -> set[str]:
    """The shards some sample row names, in one pass (after a bulk run the (dataset, shard) index
    is not there yet, and a lookup a shard would scan the table once a shard)."""
    return {shard for (shard,) in conn.execute(
        "SELECT DISTINCT shard FROM samples WHERE dataset = ? AND shard IS NOT NULL", (dataset,))}


def _record_shard(recorder: Recorder, shard: ShardRead, shard_counts: ShardCounts,
                  holding: set[str]) -> None:
    """Write a shard's samples in batches, then its tar_shards row (a kill in between: read again).
    A shard whose stat is None changed while it was read: nothing of it is recorded (its old
    samples stay, and the next run reads it again)."""
    if shard.stat is None:
        shard_counts.unread.append(shard.error or f"{shard.path}: changed while read")
        return
    conn, dataset, counts = recorder.conn, recorder.dataset, recorder.counts
    results = list(shard.results)
    fresh = {result[0] for result in results}
    if shard.path in holding:  # keys it held that it no longer has: removed
        results += [(key, None, None, 0) for (key,) in conn.execute(
            "SELECT key FROM samples WHERE dataset = ? AND shard = ?", (dataset, shard.path))
            if key not in fresh]
    results.sort(key=lambda result: result[0])
    holding.add(shard.path)
    seen_conflicts = len(counts.conflicts)
    recorder.record(results, origin=shard.path)
    conflicts = counts.conflicts[seen_conflicts:]
    lost = [[key, owner] for key, loser, owner in conflicts if loser == shard.path]
    with store.transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO tar_shards (dataset, path, size, mtime_ns, ctime_ns, inode, version,"
            " members, samples, refusals, duplicates, error, indexed_at, requests, bytes_read)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (dataset, shard.path, *shard.stat, shard.members, len(fresh) - len(lost),
             orjson.dumps(shard.refusals).decode() if shard.refusals else None,
             orjson.dumps(lost).decode() if lost else None, shard.error, store.now_iso(), shard.requests,
             shard.fetched),
        )
        for key, loser, owner in conflicts:  # keys this shard took over from a later shard
            if loser not in (None, shard.path):
                note_duplicate(conn, dataset, loser, key, owner)
    shard_counts.add(shard, conflicts)


def stored_shards(conn: sqlite3.Connection, dataset: str) -> dict[str, ShardRecord]:
    """Each recorded shard's record (change.py compares it with the current one)."""
    return {path: tuple(rest) for path, *rest in conn.execute(  # type: ignore[misc]
        "SELECT path, size, mtime_ns, ctime_ns, inode, version FROM tar_shards WHERE dataset = ?",
        (dataset,))}


def note_duplicate(conn: sqlite3.Connection, dataset: str, shard: str, key: str, owner: str | None) -> None:
    """Remember in `shard`'s row that another origin owns one of its keys (read it again when the
    owner lets go)."""
    row = conn.execute("SELECT duplicates FROM tar_shards WHERE dataset = ? AND path = ?",
                       (dataset, shard)).fetchone()
    if row is None:
        return
    duplicates = [entry for entry in orjson.loads(row[0] or "[]") if entry[0] != key] + [[key, owner]]
    conn.execute("UPDATE tar_shards SET duplicates = ? WHERE dataset = ? AND path = ?",
                 (orjson.dumps(duplicates).decode(), dataset, shard))


def _forget_shard(recorder: Recorder, rel: str) -> None:
    conn, dataset = recorder.conn, recorder.dataset
    keys = [(key, None, None, 0) for (key,) in conn.execute(
        "SELECT key FROM samples WHERE dataset = ? AND shard = ? ORDER BY key", (dataset, rel))]
    recorder.record(keys, origin=rel)
    with store.transaction(conn):
        conn.execute("DELETE FROM tar_shards WHERE dataset = ? AND path = ?", (dataset, rel))


def _orphaned_duplicates(conn: sqlite3.Connection, dataset: str) -> list[str]:
    """Shards holding a duplicate key that no sample has any more (its owner changed or left)."""
    orphaned = []
    for path, duplicates in conn.execute("SELECT path, duplicates FROM tar_shards WHERE dataset = ?"
                                         " AND duplicates IS NOT NULL", (dataset,)):
        keys = [key for key, _owner in orjson.loads(duplicates)]
        held = conn.execute(
            "SELECT count(*) FROM samples WHERE dataset = ? AND key IN (SELECT value FROM json_each(?))",
            (dataset, orjson.dumps(keys).decode())).fetchone()[0]
        if held < len(keys):
            orphaned.append(path)
    return orphaned


def is_shard_name(path: str) -> bool:
    return path.lower().endswith(SHARD_SUFFIX)


def is_compressed_shard_name(path: str) -> bool:
    return path.lower().endswith(COMPRESSED_SUFFIXES)

