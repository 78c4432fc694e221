"""The watch loop: move settled paths into batches, rescan when events may have been missed."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from indexer import store
from indexer.db.counts import problem_counts, sample_count
from indexer.errors import IndexerError
from indexer.ingest import change
from indexer.ingest.index import update_dataset, update_paths
from indexer.ingest.run import resolve_root, writer_run
from indexer.ingest.walk import STAGING_PREFIX, split_sample_path, walk
from indexer.ingest.workers import default_workers
from indexer.watch.debounce import Debouncer, stat_look
from indexer.watch.events import EventInbox, overflow_alarm
from indexer.watch.follow import Emit, FollowUp, FollowUps
from indexer.watch.observer import observing
from indexer.watch.runlog import Totals, stop_on_signals

MAX_BATCH_PATHS = 8192  # a batch this size commits in well under a second and stays stoppable
PARALLEL_MIN_PATHS = 2048  # below this, forking reader processes costs more than it saves
MAX_TICK = 0.2
RACY_RECHECK_MARGIN = 0.5


def racy_recheck_seconds() -> float:
    """After an overflow rescan that changed samples, scan again once the files it read are no
    longer younger than the index's racy window (it marked them racy), plus a margin. Read at call
    time: the window is change.RACY_WINDOW_NS, wherever it is set."""
    return change.RACY_WINDOW_NS / change.NS_PER_SECOND + RACY_RECHECK_MARGIN


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
        after_change: Mapping[str, FollowUp] | None = None,
        on_batch: Emit | None = None,
        stop_event: threading.Event | None = None,
        observer_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.db_path = os.fspath(db_path)
        self.root = resolve_root(root)
        self.dataset_id = dataset_id
        self.settle = max(0.0, float(settle))
        self.rescan_every = float(rescan_every)
        self.workers = workers or default_workers()
        self.emit: Emit = on_batch or (lambda _event: None)
        self.follow_ups = FollowUps(after_change or {}, self.emit)
        self.stop_event = stop_event or threading.Event()
        self.observer_factory = observer_factory
        self.tick = min(MAX_TICK, max(0.02, self.settle / 4))
        self.inbox = EventInbox(self.root)
        self.debouncer = Debouncer(self.settle, lambda rel: stat_look(os.path.join(self.root, rel)))
        self.totals = Totals()
        self.phase = "starting"  # starting | scanning | following | stopping
        self.conn: sqlite3.Connection | None = None
        self.dataset = ""
        self.started = 0.0

    def run(self, *, handle_signals: bool = False) -> dict:
        """Catch up, follow events until stopped, and return the session summary."""
        self.started = time.monotonic()
        signals = (stop_on_signals(self.stop_event, lambda: self.phase == "scanning") if handle_signals
                   else contextlib.nullcontext())
        with signals, writer_run(self.db_path, self.root, "watch", self.dataset_id) as run:
            self.conn, self.dataset = run.conn, run.dataset
            run.so_far, run.name_silent_failures = self._summary, True
            status, error = "done", None
            try:
                self._follow()
            except KeyboardInterrupt:  # a signal during a scan: its committed batches stay, and the
                status, error = "interrupted", "stopped during a scan"  # next start finishes it
            summary = self._summary()
            run.finish(summary, status, error)
        return {**summary, "event": "stopped", "status": status, "run_id": run.id}

    def _summary(self) -> dict:
        """The session totals; `problems` and `samples` describe the whole dataset at the end."""
        assert self.conn is not None
        t = self.totals
        return {
            "dataset": self.dataset, "root": str(self.root), "added": t.added, "changed": t.changed,
            "removed": t.removed, "batches": t.batches, "rescans": t.rescans, "exports": t.exports,
            "samples": self._sample_count(), "problems": problem_counts(self.conn, self.dataset),
            "pending": len(self.debouncer),
            "seconds": round(time.monotonic() - self.started, 3),
        }

    def _follow(self) -> None:
        """Catch up, then turn events into batches until stopped; rescan on overflow and periodically."""
        with observing(self.inbox, self.root, poll_seconds=max(1.0, self.settle),
                       factory=self.observer_factory, warn=self._warn), overflow_alarm() as alarm:
            self._rescan("catch-up")
            next_rescan = time.monotonic() + self.rescan_every
            self.phase = "following"
            while not self.stop_event.wait(self.tick):
                self._check_root()
                self._collect()
                now = time.monotonic()
                if alarm.tripped.is_set() and now - self.inbox.last_event >= self.settle:
                    alarm.tripped.clear()
                    if self._rescan("overflow"):
                        next_rescan = min(next_rescan, now + racy_recheck_seconds())
                elif now >= next_rescan:
                    self._rescan("periodic")
                    next_rescan = time.monotonic() + self.rescan_every
                self._process_ready()
            self.phase = "stopping"
            self._collect()
            self._process_ready()  # finish what is already settled; the rest waits for the catch-up

    def _warn(self, message: str) -> None:
        self.emit({"event": "warning", "message": message})

    # -- events ------------------------------------------------------------------------------

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
        if self.follow_ups.due and not len(self.debouncer) and self.phase == "following":
            self.totals.exports += self.follow_ups.run(self.dataset)

    def _batch(self, paths: list[str]) -> None:
        assert self.conn is not None
        began = time.monotonic()
        workers = self.workers if len(paths) >= PARALLEL_MIN_PATHS else 1
        counts = update_paths(self.conn, self.dataset, self.root, paths, workers=workers)
        problems = self._problems_among(paths)
        self.totals.batches += 1
        if self.totals.count(counts.added, counts.changed, counts.removed):
            self.follow_ups.changed()
        self.emit({
            "event": "batch", "dataset": self.dataset, "paths": len(paths), "added": counts.added,
            "changed": counts.changed, "removed": counts.removed, "problems": problems,
            "samples": self._sample_count(), "seconds": round(time.monotonic() - began, 3),
            "at": store.now_iso(),
        })

    def _problems_among(self, paths: Iterable[str]) -> dict[str, int]:
        """Statuses other than ok among this batch's samples (the whole dataset's are in `stats`)."""
        assert self.conn is not None
        keys = {split_sample_path(p)[0] for p in paths}  # type: ignore[index]
        return problem_counts(self.conn, self.dataset, keys)

    def _sample_count(self) -> int:
        assert self.conn is not None
        return sample_count(self.conn, self.dataset)

    def _rescan(self, reason: str) -> bool:
        """A full diff of ROOT against the database; returns whether any sample changed."""
        assert self.conn is not None
        previous, self.phase = self.phase, "scanning"
        began = time.monotonic()
        try:
            summary = update_dataset(self.conn, self.dataset, self.root, workers=self.workers)
        finally:
            self.phase = previous
        self.totals.rescans += 1
        changed = self.totals.count(summary["added"], summary["changed"], summary["removed"])
        if changed:
            self.follow_ups.changed()
        self.emit({
            "event": "rescan", "reason": reason, "dataset": self.dataset,
            "added": summary["added"], "changed": summary["changed"], "removed": summary["removed"],
            "problems": summary["problems"], "samples": summary["samples"],
            "unreadable": summary["unreadable"], "seconds": round(time.monotonic() - began, 3),
            "at": store.now_iso(),
        })
        return changed
