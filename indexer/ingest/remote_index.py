"""`indexer index URL`: a remote root indexed in place, through the same recorder as a local one.

One listing decides everything (change.py): a shard or object whose size, version and time are
what the database holds is not read at all, so a no-change rerun is one listing and zero object
reads. Tar shards are walked by range requests (tar_members.iter_members_in over
remote.RemoteObject): the headers, the JSON members and, only when a size must come from it, an
image's head; image data is never fetched. A shard's webshart index listed beside it (`X.json`,
never a sample, and no part of the shard's record) has those reads fetched ahead, many at once,
instead of one round trip after another (remote_walk.py). Loose pairs (`<key>.json` + `<key>.png`
objects) are read object by object. Reading is latency-bound, not CPU-bound, so it runs in
threads, many shards and objects at once, and the writer records them in key and shard order.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

from indexer.db.counts import sample_count
from indexer.db.fts import sync_search_index
from indexer.errors import IndexerError
from indexer.ingest import remote_walk
from indexer.ingest.change import object_record, object_shard_record
from indexer.ingest.derived import build_derived
from indexer.ingest.engines import default_readers, fallback_for, pool_for, run_report
from indexer.ingest.guard import describe, failed_sample, raise_if_environment
from indexer.ingest.read import build_sample, header_size_of
from indexer.ingest.recorder import SHOWN_LIMIT, Recorder
from indexer.ingest.records import recorded_files
from indexer.ingest.remote import ObjectInfo, RemoteError, RemoteRoot
from indexer.ingest.remote_walk import Plan, Prefetch
from indexer.ingest.rows import CompactResult, ReadSettings, compact
from indexer.ingest.run import writer_run
from indexer.ingest.scan import shard_index_path
from indexer.ingest.shards import (
    HEAD_BYTES,
    ShardCounts,
    ShardRead,
    is_compressed_shard_name,
    is_shard_name,
    read_shard_file,
    shard_task_failed,
    update_shards,
)
from indexer.ingest.walk import IMAGE_EXTENSIONS, JSON_EXTENSION, is_utf8, split_sample_path
from indexer.ingest.workers import LARGE_TASKS_AHEAD, SMALL_TASKS_AHEAD, map_in_order
from indexer.progress import bar

INDEX_MAX = 256 << 20  # a webshart index larger than this is not fetched (a DALLE-3 shard's: ~10 MB)
DEFAULT_CONCURRENCY = 32
# Ranges fetched ahead at once, a reader: 20 indexed shards behind a 20 ms link (bench_remote) took
# 1.67 s with 64 threads, 1.30 s with 128, 1.57 s with 256 (the client's CPU bounds it from there).
RANGES_PER_READER = 4  # objects read at once: 20 shards over a 20 ms proxy, 26.5 s with 16, 13.8 s with 32
KEYS_PER_BATCH = 256


def index_remote(db_path: str, root: RemoteRoot, *, dataset_id: str | None = None, workers: int | None = None,
                 verify_images: bool = False, progress: bool = False, engine: str = "local",
                 ray_address: str | None = None) -> dict:
    """Bring the index of a remote root up to date and return the run summary."""
    started = time.monotonic()
    concurrency = workers or default_readers(engine, ray_address, DEFAULT_CONCURRENCY)
    with writer_run(db_path, root, "index", dataset_id) as run:  # type: ignore[arg-type]
        summary = update_remote(run.conn, run.dataset, root, concurrency=concurrency,
                                verify_images=verify_images, progress=progress, engine=engine,
                                ray_address=ray_address)
        summary.update(run_id=run.id, seconds=round(time.monotonic() - started, 3))
        run.finish(summary)
    return summary


def update_remote(conn: sqlite3.Connection, dataset: str, root: RemoteRoot, *, concurrency: int,
                  verify_images: bool = False, progress: bool = False, engine: str = "local",
                  ray_address: str | None = None) -> dict:
    """List the root once, then read what changed: loose pairs, then tar shards."""
    settings = ReadSettings(root.display, time.time_ns(), verify_images, concurrency, engine, ray_address)
    recorder = Recorder(conn, dataset)
    before = sample_count(conn, dataset)
    listing = root.listing()  # all or nothing: a failed listing changes nothing
    if not listing and before:
        raise IndexerError(f"{root.display} lists no object, yet dataset {dataset} holds {before:,} samples"
                           " from it: check the endpoint and credentials (nothing was changed); to forget"
                           " the dataset, delete its rows or use a new database")
    shards = {o.path: o for o in listing if is_shard_name(o.path)}
    indexes = {shard_index_path(path) for path in shards}
    loose = [o for o in listing if o.path not in indexes and split_sample_path(o.path) and is_utf8(o.path)]
    unread = _update_loose(recorder, root, loose, settings, progress)
    by_path = {o.path: o for o in listing}
    index_of = {path: by_path.get(shard_index_path(path)) for path in shards}  # type: ignore[arg-type]
    shard_counts = _update_shards(recorder, root, shards, index_of, settings, progress)
    shard_counts.compressed = [o.path for o in listing if is_compressed_shard_name(o.path)]
    sync_search_index(conn)
    build_derived(conn, progress)  # what a stopped run left deferred: every writing run finishes it
    unread += shard_counts.unread
    return {"dataset": dataset, "root": root.display, **recorder.summary(), "samples_before": before,
            "objects_listed": len(listing), "shards": shard_counts.summary(), "readers": concurrency,
            "unread": unread[:SHOWN_LIMIT], "unread_count": len(unread), **run_report(engine)}


# --- loose pairs -------------------------------------------------------------------------------


def _update_loose(recorder: Recorder, root: RemoteRoot, loose: list[ObjectInfo], settings: ReadSettings,
                  progress: bool) -> list[str]:
    """Re-read the keys whose objects changed, appeared or went away; returns why objects could not
    be read (the network, after retries)."""
    unread: list[str] = []
    by_key: dict[str, dict[str, ObjectInfo]] = {}
    for info in loose:
        by_key.setdefault(split_sample_path(info.path)[0], {})[info.path] = info  # type: ignore[index]
    stored = {row[0]: recorded_files(*row) for row in recorder.conn.execute(
        "SELECT key, json_ext, json_sig, image_ext, image_sig, other_files FROM samples"
        " WHERE dataset = ? AND shard IS NULL", (recorder.dataset,))}
    changed = sorted(key for key in by_key.keys() | stored.keys()
                     if _signatures(by_key.get(key, {})) != stored.get(key, {}))
    with bar(progress, desc="read", unit=" samples", total=len(changed)) as read_bar:
        calls = ((root, key, by_key.get(key, {}), settings.verify_images) for key in changed)
        pending: list[CompactResult] = []
        for result, reason in map_in_order(_read_key, calls, settings.workers,
                                           settings.workers * SMALL_TASKS_AHEAD, recorder.counts.waited,
                                           pool_of=pool_for(settings.engine, settings.ray_address, True),
                                           on_error=fallback_for(settings.engine, _key_task_failed)):
            if reason is not None:
                unread.append(reason)
            pending.append(result)
            read_bar.update(1)
            if len(pending) >= KEYS_PER_BATCH:
                recorder.record(pending)
                pending = []
        recorder.record(pending)
    return unread


def _key_task_failed(call: tuple, exc: Exception) -> tuple[CompactResult, str]:
    return failed_sample(call[1], sorted(call[2]), exc), describe(exc)


def _shard_task_failed(call: tuple, exc: Exception) -> ShardRead:
    return shard_task_failed((None, call[1].path), exc)


def _signatures(objects: dict[str, ObjectInfo]) -> dict[str, int | None]:
    return {path: object_record(path, o.size, o.version, o.mtime_ns).signature for path, o in objects.items()}


def _read_key(root: RemoteRoot, key: str, objects: dict[str, ObjectInfo],
              verify_images: bool) -> tuple[CompactResult, str | None]:
    """One key's objects read into its result, under the guard, and why it could not be read when
    the network kept it from it (it is then recorded read_failed, to be read again next run). The
    reason comes back with the result: a Ray task's arguments are copies."""
    try:
        return compact(*_read_objects(root, key, objects, verify_images)), None
    except RemoteError as exc:
        return failed_sample(key, sorted(objects), exc), str(exc)
    except Exception as exc:
        raise_if_environment(exc)
        return failed_sample(key, sorted(objects), exc), None


def _read_objects(root: RemoteRoot, key: str, objects: dict[str, ObjectInfo], verify_images: bool) -> tuple:
    """(key, sample, file records, objects read): the JSON fetched whole, an image's head only
    when its size must come from it."""
    if not objects:
        return key, None, [], 0
    cut = len(key) + 1
    paths = sorted(objects)
    jsons = [p for p in paths if p[cut:].lower() == JSON_EXTENSION]
    images = [p for p in paths if p[cut:].lower() in IMAGE_EXTENSIONS]
    json_data, reads = None, 0
    if jsons:
        json_data = root.open(objects[jsons[0]]).read_all()
        reads += 1

    def header(image: str) -> tuple[int, int] | str:
        info = objects[image]
        return header_size_of(root.open(info).pread(min(info.size, HEAD_BYTES), 0))

    sample, header_reads = build_sample(key, jsons[0] if jsons else None, jsons[1:], images, json_data,
                                        None, verify_images, header)
    records = [object_record(p, o.size, o.version, o.mtime_ns) for p, o in sorted(objects.items())]
    return key, sample, records, reads + header_reads


# --- tar shards --------------------------------------------------------------------------------


def _update_shards(recorder: Recorder, root: RemoteRoot, shards: dict[str, ObjectInfo],
                   index_of: dict[str, ObjectInfo | None], settings: ReadSettings,
                   progress: bool) -> ShardCounts:
    """Read the new and changed shards (each with its webshart index, when one is listed beside
    it: the index is not part of the shard's record, so a changed index alone reads nothing)."""
    current = {path: object_shard_record(o.size, o.version, o.mtime_ns) for path, o in shards.items()}

    def read_in_order(pending: list[str]) -> Iterator[ShardRead]:
        with bar(progress, desc="shards", unit=" shards", total=len(pending)) as shard_bar:
            calls = ((root, shards[path], settings.verify_images, index_of[path],
                      settings.workers * RANGES_PER_READER, rank) for rank, path in enumerate(pending))
            for shard in map_in_order(read_remote_shard, calls, min(settings.workers, len(pending)),
                                      settings.workers * LARGE_TASKS_AHEAD, recorder.counts.waited,
                                      pool_of=pool_for(settings.engine, settings.ray_address, True),
                                      on_error=fallback_for(settings.engine, _shard_task_failed)):
                shard_bar.update(1)
                yield shard

    counts = update_shards(recorder, current, read_in_order)
    counts.per_shard = _per_shard(recorder)
    return counts


def read_remote_shard(root: RemoteRoot, info: ObjectInfo, verify_images: bool,
                      index: ObjectInfo | None = None, fetchers: int = DEFAULT_CONCURRENCY,
                      rank: int = 0) -> ShardRead:
    """One remote shard walked by range requests (the ranges its webshart index points at fetched
    ahead by the process's `fetchers` threads, lowest rank first: its place in the run's order);
    re-checked against the listing at the end, so a shard replaced while it was read is never
    recorded half old, half new."""
    record = object_shard_record(info.size, info.version, info.mtime_ns)
    source = root.open(info)
    plan, index_requests, index_bytes = _index_plan(root, index, info.size)
    with Prefetch(plan, source.fetch_range, fetchers, rank) as prefetched:
        found = read_shard_file(source, info.path, record, verify_images, lambda want: remote_walk.members(
            source.pread, source.name, source.size, prefetched if plan else None, want))
    found.requests, found.fetched = source.requests + index_requests, source.bytes + index_bytes
    found.bytes_read = found.fetched  # what the reads returned, as for a local shard
    if source.failure is not None:  # the network, not the shard: nothing recorded, read again next run
        found.stat, found.error = None, source.failure
    elif not root.unchanged(info):
        found.stat = None
        found.error = f"{source.name}: the object changed while it was read; run index again"
    return found


def _index_plan(root: RemoteRoot, index: ObjectInfo | None, tar_size: int) -> tuple[Plan, int, int]:
    """The read plan from a shard's index (remote_walk.read_plan), with the requests and bytes
    fetching the index took; no plan when there is none, it is too large or cannot be fetched."""
    if index is None or index.size > INDEX_MAX:
        return [], 0, 0
    source = root.open(index)
    try:
        data = source.read_all()
    except RemoteError:
        return [], source.requests, source.bytes
    return remote_walk.read_plan(data, tar_size), source.requests, source.bytes


def _per_shard(recorder: Recorder) -> list[dict]:
    """Requests and bytes each remote shard took when it was last read (the first SHOWN_LIMIT)."""
    return [{"shard": path, "samples": samples, "requests": requests, "bytes": fetched}
            for path, samples, requests, fetched in recorder.conn.execute(
                "SELECT path, samples, requests, bytes_read FROM tar_shards WHERE dataset = ?"
                " AND requests IS NOT NULL ORDER BY path LIMIT ?", (recorder.dataset, SHOWN_LIMIT))]
