"""The `watch` stage: catch up once, then keep the index current from filesystem events.

Events are only hints. A touched path waits until it has been quiet for `settle` seconds and two
stat looks agree, so a half-written JSON is never recorded as bad; then the paths that are ready
are re-indexed together through `index.update_paths` (one short transaction per batch). Whatever
the events miss (kernel queue overflow, a kill) is caught by a full rescan: on overflow, every
`rescan_every` seconds, and at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.polling import PollingObserver

from indexer import index, store
from indexer.derived import build_derived
from indexer.errors import IndexerError
from indexer.scan import STAGING_PREFIX, split_sample_path, walk

# Opened / closed-without-write events are left out: our own reads would otherwise feed the queue.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileDeletedEvent,
    FileMovedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]
WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")
MAX_BATCH_PATHS = 8192  # a batch this size commits in well under a second and stays stoppable
PARALLEL_MIN_PATHS = 2048  # below this, forking reader processes costs more than it saves
MAX_TICK = 0.2
RACY_RECHECK_SECONDS = 3.5  # the index marks files younger than 3 s racy; rescan once they are not

StatLook = tuple[int, int, int, int] | None  # size, mtime_ns, ctime_ns, inode; None = not a file
Emit = Callable[[dict], None]


class Exporter(Protocol):
    def __call__(self, db_path: str, **options: Any) -> Any: ...


def inotify_limit_message(exc: OSError) -> str:
    """What to tell a user whose kernel refused more inotify watches or instances."""
    what = "watches" if exc.errno == errno.ENOSPC else "instances"
    setting = "max_user_watches" if exc.errno == errno.ENOSPC else "max_user_instances"
    return (
        f"inotify {what} ran out ({exc.strerror or exc}); falling back to polling, which re-lists the "
        f"whole folder every poll. To use inotify, raise the limit, e.g. "
        f"`sudo sysctl fs.inotify.{setting}=524288` (persist it in /etc/sysctl.d/), then restart watch"
    )


def stat_look(path: str) -> StatLook:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


@dataclass(slots=True)
class Pending:
    key: str
    last_event: float
    look: StatLook = None
    looked_at: float | None = None  # None: no look since the last event


class Debouncer:
    """Holds touched paths until each key's files are quiet and their stat is stable.

    A path is looked at (stat) once it has been quiet for settle/2 and again once quiet for
    settle; it is ready when the two looks agree. A key is released only when all its touched
    paths are ready, so a pair copied file by file is read once, complete.
    """

    def __init__(self, settle: float, look: Callable[[str], StatLook]) -> None:
        self.settle = settle
        self.look = look
        self.paths: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def touch(self, path: str, when: float) -> None:
        entry = self.paths.get(path)
        if entry is None:
            self.paths[path] = Pending(split_sample_path(path)[0], when)  # type: ignore[index]
        elif when >= entry.last_event:
            entry.last_event = when
            entry.looked_at = None

    def pop_ready(self, now: float) -> list[str]:
        settled: dict[str, bool] = {}  # key -> all of its touched paths ready
        for path, entry in self.paths.items():
            ready = self._is_settled(path, entry, now)
            settled[entry.key] = settled.get(entry.key, True) and ready
        out = [path for path, entry in self.paths.items() if settled[entry.key]]
        for path in out:
            del self.paths[path]
        return out

    def _is_settled(self, path: str, entry: Pending, now: float) -> bool:
        quiet = now - entry.last_event
        if quiet < self.settle / 2:
            return False
        if entry.looked_at is None:
            entry.look, entry.looked_at = self.look(path), now
            return False
        if quiet < self.settle or entry.looked_at >= now:
            return False
        current = self.look(path)
        if current == entry.look:
            return True
        entry.look, entry.looked_at = current, now  # still changing: wait for the next agreement
        return False


class EventInbox(FileSystemEventHandler):
    """Runs on watchdog's thread: turns events into root-relative paths, nothing slower."""

    def __init__(self, root: Path) -> None:
        self.prefix = str(root).rstrip("/") + "/"
        self.lock = threading.Lock()
        self.files: dict[str, float] = {}
        self.added_dirs: dict[str, float] = {}
        self.removed_dirs: dict[str, float] = {}
        self.count = 0
        self.last_event = 0.0

    def on_any_event(self, event: FileSystemEvent) -> None:
        now = time.monotonic()
        with self.lock:
            self.count += 1
            self.last_event = now
            if isinstance(event, DirMovedEvent):
                self._dir(event.src_path, now, self.removed_dirs)
                self._dir(event.dest_path, now, self.added_dirs)
            elif isinstance(event, DirCreatedEvent):
                self._dir(event.src_path, now, self.added_dirs)
            elif isinstance(event, DirDeletedEvent):
                self._dir(event.src_path, now, self.removed_dirs)
            elif not event.is_directory:
                self._file(event.src_path, now)
                if isinstance(event, FileMovedEvent):
                    self._file(event.dest_path, now)

    def _relative(self, path: bytes | str) -> str | None:
        path = os.fsdecode(path)
        if not path.startswith(self.prefix):
            return None
        rel = path[len(self.prefix):]
        if not rel or ("/" + rel).find("/" + STAGING_PREFIX) >= 0:
            return None
        return rel

    def _file(self, path: bytes | str, now: float) -> None:
        rel = self._relative(path)
        if rel is not None and split_sample_path(rel) is not None:
            self.files[rel] = now

    def _dir(self, path: bytes | str, now: float, into: dict[str, float]) -> None:
        rel = self._relative(path)
        if rel is not None:
            into[rel.rstrip("/")] = now

    def drain(self) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        with self.lock:
            taken = self.files, self.added_dirs, self.removed_dirs
            self.files, self.added_dirs, self.removed_dirs = {}, {}, {}
        return taken


class OverflowAlarm(logging.Handler):
    """watchdog only logs a kernel queue overflow (events were lost); turn that log into a flag."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.tripped = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.tripped.set()


@dataclass
class Exports:
    """Follow-up exports after a batch that changed something; the callables are injectable."""

    parquet_out: str | None = None
    captions: bool = False
    caption_fields: tuple[str, ...] = ("short_caption",)
    where: str | None = None
    allow_mass_removal: bool = False
    parquet: Exporter | None = None
    caption_files: Exporter | None = None

    @property
    def wanted(self) -> bool:
        return bool(self.parquet_out or self.captions)


def _export_parquet(db_path: str, **options: Any) -> Any:
    from indexer.export.parquet import export_parquet  # issue 3's code, imported when first used

    out = options.pop("out")
    return export_parquet(db_path, out, **options)


def _export_captions(db_path: str, **options: Any) -> Any:
    from indexer.export.captions import export_captions

    return export_captions(db_path, **options)


@dataclass
class Totals:
    added: int = 0
    changed: int = 0
    removed: int = 0
    batches: int = 0
    rescans: int = 0
    exports: int = 0


class Watcher:
    """One watch session: holds the writer lock and one connection from start to stop."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        root: str | os.PathLike[str],
        *,
        dataset_id: str | None = None,
        settle: float = 2.0,
        rescan_every: float = 600.0,
        workers: int | None = None,
        exports: Exports | None = None,
        on_batch: Emit | None = None,
        stop_event: threading.Event | None = None,
        observer_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.db_path = os.fspath(db_path)
        self.root = index.resolve_root(root)
        self.dataset_id = dataset_id
        self.settle = max(0.0, float(settle))
        self.rescan_every = float(rescan_every)
        self.workers = workers or index.default_workers()
        self.exports = exports or Exports()
        self.emit: Emit = on_batch or (lambda _event: None)
        self.stop_event = stop_event or threading.Event()
        self.observer_factory = observer_factory or _inotify_observer
        self.tick = min(MAX_TICK, max(0.02, self.settle / 4))
        self.inbox = EventInbox(self.root)
        self.debouncer = Debouncer(self.settle, lambda rel: stat_look(os.path.join(self.root, rel)))
        self.alarm = OverflowAlarm()
        self.totals = Totals()
        self.phase = "starting"  # starting | scanning | following | stopping
        self.export_due = self.exports.wanted  # bring the outputs up to date once at start
        self.export_rounds = 0
        self.conn: sqlite3.Connection | None = None
        self.dataset = ""

    # -- the session -------------------------------------------------------------------------

    def run(self, *, handle_signals: bool = False) -> dict:
        """Catch up, follow events until stopped, and return the session summary."""
        started = time.monotonic()
        conn = self.conn = store.connect(self.db_path)
        restore = self._install_signal_handlers() if handle_signals else {}
        try:
            with store.writer_lock(self.db_path, "watch"):
                self.dataset = store.ensure_dataset(conn, self.dataset_id, self.root)
                run_id = store.start_run(conn, self.dataset, "watch")
                status, error = "done", None
                try:
                    self._session()
                except KeyboardInterrupt:
                    status, error = "interrupted", "stopped during a scan"
                except BaseException as exc:
                    store.finish_run(conn, run_id, self._summary(started), status="failed",
                                     error=str(exc) or type(exc).__name__)
                    raise
                summary = self._summary(started)
                store.finish_run(conn, run_id, summary, status=status, error=error)
        finally:
            for signum, handler in restore.items():
                signal.signal(signum, handler)
            conn.close()
        summary.update(event="stopped", status=status, run_id=run_id)
        return summary

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM: stop after the batch in hand. A scan (catch-up, rescan) cannot pause at
        a batch boundary, so there the signal interrupts it; its committed batches stay, the next
        start finishes the rest. A second signal always interrupts."""
        owner = os.getpid()  # forked readers inherit the handler: they must ignore it

        def on_signal(signum: int, _frame: Any) -> None:
            if os.getpid() != owner:
                return
            if self.phase == "scanning" or self.stop_event.is_set():
                self.stop_event.set()
                raise KeyboardInterrupt
            self.stop_event.set()

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
        return previous

    def _session(self) -> None:
        observer = self._start_observer()
        for name in WATCHDOG_LOGGERS:
            logging.getLogger(name).addHandler(self.alarm)
        try:
            self._rescan("catch-up")
            next_rescan = time.monotonic() + self.rescan_every
            self.phase = "following"
            while not self.stop_event.wait(self.tick):
                self._check_root()
                self._collect()
                now = time.monotonic()
                if self.alarm.tripped.is_set() and now - self.inbox.last_event >= self.settle:
                    self.alarm.tripped.clear()
                    if self._rescan("overflow"):
                        next_rescan = min(next_rescan, now + RACY_RECHECK_SECONDS)
                elif now >= next_rescan:
                    self._rescan("periodic")
                    next_rescan = time.monotonic() + self.rescan_every
                self._process_ready()
            self.phase = "stopping"
            self._collect()
            self._process_ready()  # finish what is already settled; the rest waits for the catch-up
        finally:
            for name in WATCHDOG_LOGGERS:
                logging.getLogger(name).removeHandler(self.alarm)
            observer.stop()
            with contextlib.suppress(RuntimeError):
                observer.join(timeout=5)

    def _summary(self, started: float) -> dict:
        """The session totals; `problems` and `samples` describe the whole dataset at the end."""
        assert self.conn is not None
        t = self.totals
        return {
            "dataset": self.dataset, "root": str(self.root), "added": t.added, "changed": t.changed,
            "removed": t.removed, "batches": t.batches, "rescans": t.rescans, "exports": t.exports,
            "samples": self._sample_count(), "problems": index.problem_counts(self.conn, self.dataset),
            "pending": len(self.debouncer),
            "seconds": round(time.monotonic() - started, 3),
        }

    # -- events ------------------------------------------------------------------------------

    def _start_observer(self) -> Any:
        """inotify when the kernel allows it, else polling (with the reason and the fix)."""
        observer = None
        try:
            observer = self.observer_factory()
            observer.schedule(self.inbox, str(self.root), recursive=True, event_filter=EVENT_FILTER)
            observer.start()
            return observer
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            if observer is not None:
                with contextlib.suppress(Exception):
                    observer.stop()
            self.emit({"event": "warning", "message": inotify_limit_message(exc)})
        polling = PollingObserver(timeout=max(1.0, self.settle))
        polling.schedule(self.inbox, str(self.root), recursive=True, event_filter=EVENT_FILTER)
        polling.start()
        return polling

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise IndexerError(f"ROOT {self.root} disappeared while being watched; "
                               "restore it and start `indexer watch` again")

    def _collect(self) -> None:
        """Move the inbox into the debouncer; a folder stands for every sample path under it."""
        files, added_dirs, removed_dirs = self.inbox.drain()
        for rel, when in files.items():
            self.debouncer.touch(rel, when)
        for rel, when in removed_dirs.items():
            for path in self._stored_paths_under(rel):
                self.debouncer.touch(path, when)
        for rel, when in added_dirs.items():
            for path in self._paths_on_disk_under(rel):
                self.debouncer.touch(path, when)

    def _stored_paths_under(self, folder: str) -> list[str]:
        assert self.conn is not None
        # '0' follows '/' in every collation SQLite uses here, so [folder/, folder0) is the subtree.
        return [row[0] for row in self.conn.execute(
            "SELECT path FROM files WHERE dataset = ? AND key >= ? AND key < ?",
            (self.dataset, folder + "/", folder + "0"),
        ).fetchall()]

    def _paths_on_disk_under(self, folder: str) -> list[str]:
        if any(part.startswith(STAGING_PREFIX) for part in folder.split("/")):
            return []
        found: list[str] = []
        for _fd, prefix, names in walk(os.path.join(self.root, folder), []):
            found.extend(f"{folder}/{prefix}{name}" for name in names)
        return found

    # -- writing -----------------------------------------------------------------------------

    def _process_ready(self) -> None:
        ready = self.debouncer.pop_ready(time.monotonic())
        ready.sort()  # keys in order: update_paths writes the B-tree sequentially
        for start in range(0, len(ready), MAX_BATCH_PATHS):
            self._batch(ready[start:start + MAX_BATCH_PATHS])
        if self.export_due and not len(self.debouncer) and self.phase == "following":
            self._run_exports()

    def _batch(self, paths: list[str]) -> None:
        assert self.conn is not None
        began = time.monotonic()
        workers = self.workers if len(paths) >= PARALLEL_MIN_PATHS else 1
        counts = index.update_paths(self.conn, self.dataset, self.root, paths, workers=workers)
        problems = self._problems_among(paths)
        self._count(counts.added, counts.changed, counts.removed)
        self.emit({
            "event": "batch", "dataset": self.dataset, "paths": len(paths), "added": counts.added,
            "changed": counts.changed, "removed": counts.removed, "problems": problems,
            "samples": self._sample_count(), "seconds": round(time.monotonic() - began, 3),
            "at": store.now_iso(),
        })

    def _count(self, added: int, changed: int, removed: int) -> None:
        t = self.totals
        t.added += added
        t.changed += changed
        t.removed += removed
        t.batches += 1
        if added or changed or removed:
            self.export_due = self.exports.wanted

    def _problems_among(self, paths: Iterable[str]) -> dict[str, int]:
        """Statuses other than ok among this batch's samples (the whole dataset's are in `stats`)."""
        assert self.conn is not None
        import orjson

        keys = sorted({split_sample_path(p)[0] for p in paths})  # type: ignore[index]
        return dict(self.conn.execute(
            "SELECT status, count(*) FROM samples WHERE dataset = ? AND status != 'ok' "
            "AND key IN (SELECT value FROM json_each(?)) GROUP BY status ORDER BY status",
            (self.dataset, orjson.dumps(keys).decode()),
        ).fetchall())

    def _sample_count(self) -> int:
        assert self.conn is not None
        return self.conn.execute(
            "SELECT count(*) FROM samples WHERE dataset = ?", (self.dataset,)).fetchone()[0]

    def _rescan(self, reason: str) -> bool:
        """A full diff of ROOT against the database; returns whether any sample changed."""
        assert self.conn is not None
        previous, self.phase = self.phase, "scanning"
        began = time.monotonic()
        try:
            summary = index.update_dataset(self.conn, self.dataset, self.root, workers=self.workers)
            # A bulk catch-up deferred the stats indexes and search; the watcher holds the writer
            # lock, so nobody else could build them while it runs: do it now, once.
            build_derived(self.conn)
        finally:
            self.phase = previous
        self.totals.rescans += 1
        changed = bool(summary["added"] or summary["changed"] or summary["removed"])
        t = self.totals
        t.added += summary["added"]
        t.changed += summary["changed"]
        t.removed += summary["removed"]
        if changed:
            self.export_due = self.exports.wanted
        self.emit({
            "event": "rescan", "reason": reason, "dataset": self.dataset,
            "added": summary["added"], "changed": summary["changed"], "removed": summary["removed"],
            "problems": summary["problems"], "samples": summary["samples"],
            "unreadable": summary["unreadable"], "seconds": round(time.monotonic() - began, 3),
            "at": store.now_iso(),
        })
        return changed

    def _run_exports(self) -> None:
        """Follow-up exports; a failing export is reported and retried after the next change.

        In the first round an IndexerError (a bad --where, a misspelt --caption, a mass removal
        not confirmed) stops the watch: it is the user's option that is wrong, not the data.
        """
        self.export_due = False
        self.export_rounds += 1
        exports = self.exports
        common = {"dataset_id": self.dataset, "captions": exports.caption_fields,
                  "where": exports.where, "progress": False}
        jobs: list[tuple[str, Exporter, dict]] = []
        if exports.parquet_out:
            jobs.append(("parquet", exports.parquet or _export_parquet,
                         {"out": exports.parquet_out, **common}))
        if exports.captions:
            jobs.append(("captions", exports.caption_files or _export_captions,
                         {"overwrite": False, "allow_mass_removal": exports.allow_mass_removal,
                          **common}))
        for kind, exporter, options in jobs:
            began = time.monotonic()
            try:
                result = exporter(self.db_path, **options)
            except IndexerError:
                if self.export_rounds == 1:  # say so at once, not as a warning on every batch
                    raise
                self.emit({"event": "warning", "message": f"export {kind} failed: {sys.exc_info()[1]}"})
                continue
            except Exception as exc:  # an export problem must not stop the index from following
                self.emit({"event": "warning", "message": f"export {kind} failed: {exc}"})
                continue
            self.totals.exports += 1
            self.emit({"event": "export", "kind": kind, "result": _plain(result),
                       "seconds": round(time.monotonic() - began, 3), "at": store.now_iso()})
            if isinstance(result, dict) and result.get("complete") is False:
                errors = "; ".join(result.get("errors") or ())
                self.emit({"event": "warning", "message": (
                    f"export {kind} incomplete: {result.get('failed', 0):,} files could not be written or "
                    f"removed ({errors}); it is recorded as stale and retried after the next change")})


def _plain(value: Any) -> Any:
    """Export results as JSON-friendly values (dicts pass through, anything else becomes text)."""
    if value is None or isinstance(value, dict | list | str | int | float | bool):
        return value
    return str(value)


def _inotify_observer() -> Any:
    from watchdog.observers.inotify import InotifyObserver

    return InotifyObserver()


def watch_root(
    db_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    settle: float = 2.0,
    rescan_every: float = 600.0,
    workers: int | None = None,
    export_parquet: str | None = None,
    export_captions: bool = False,
    captions: Iterable[str] = ("short_caption",),
    where: str | None = None,
    allow_mass_removal: bool = False,
    on_batch: Emit | None = None,
    stop_event: threading.Event | None = None,
    observer_factory: Callable[[], Any] | None = None,
    exporters: dict[str, Exporter] | None = None,
    handle_signals: bool = False,
) -> dict:
    """Keep the index of ROOT current until stop_event is set; returns the session summary.

    `on_batch` receives one dict per batch, rescan, export and warning (key "event" says which).
    `exporters` may replace the export functions ({"parquet": f, "captions": g}), for tests.
    `handle_signals` (main thread only) makes SIGINT/SIGTERM stop the session cleanly.
    """
    exporters = exporters or {}
    exports = Exports(
        parquet_out=os.fspath(export_parquet) if export_parquet else None,
        captions=export_captions, caption_fields=tuple(captions) or ("short_caption",), where=where,
        allow_mass_removal=allow_mass_removal,
        parquet=exporters.get("parquet"), caption_files=exporters.get("captions"),
    )
    watcher = Watcher(
        db_path, root, dataset_id=dataset_id, settle=settle, rescan_every=rescan_every,
        workers=workers, exports=exports, on_batch=on_batch, stop_event=stop_event,
        observer_factory=observer_factory,
    )
    return watcher.run(handle_signals=handle_signals)
