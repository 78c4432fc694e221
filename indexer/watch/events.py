"""Event intake: watchdog's events become root-relative sample paths and folders, and a kernel
queue overflow (which watchdog only logs) becomes a flag."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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

from indexer.ingest.walk import STAGING_PREFIX, split_sample_path

# Opened / closed-without-write events are left out: our own reads would otherwise feed the queue.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileDeletedEvent,
    FileMovedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]
WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


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


@contextlib.contextmanager
def overflow_alarm() -> Iterator[OverflowAlarm]:
    """An alarm listening to watchdog's inotify loggers for as long as the block runs."""
    alarm = OverflowAlarm()
    for name in WATCHDOG_LOGGERS:
        logging.getLogger(name).addHandler(alarm)
    try:
        yield alarm
    finally:
        for name in WATCHDOG_LOGGERS:
            logging.getLogger(name).removeHandler(alarm)
