"""Observer setup: inotify when the kernel allows it, else polling, with the reason and the fix."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEventHandler
from watchdog.observers.polling import PollingObserver

from indexer.watch.events import EVENT_FILTER

JOIN_SECONDS = 5


def inotify_limit_message(exc: OSError) -> str:
    """What to tell a user whose kernel refused more inotify watches or instances."""
    what = "watches" if exc.errno == errno.ENOSPC else "instances"
    setting = "max_user_watches" if exc.errno == errno.ENOSPC else "max_user_instances"
    return (
        f"inotify {what} ran out ({exc.strerror or exc}); falling back to polling, which re-lists the "
        f"whole folder every poll. To use inotify, raise the limit, e.g. "
        f"`sudo sysctl fs.inotify.{setting}=524288` (persist it in /etc/sysctl.d/), then restart watch"
    )


def inotify_observer() -> Any:
    from watchdog.observers.inotify import InotifyObserver

    return InotifyObserver()


@contextlib.contextmanager
def observing(handler: FileSystemEventHandler, root: Path, *, poll_seconds: float,
              factory: Callable[[], Any] | None, warn: Callable[[str], None]) -> Iterator[None]:
    """Feed handler with the events under root while the block runs.

    `factory` makes the preferred observer (inotify by default). When the kernel refuses it
    (watch or instance limit reached) the reason and the fix go to `warn`, and a polling
    observer that re-lists the tree every poll_seconds takes over.
    """
    observer = _start(handler, root, poll_seconds, factory or inotify_observer, warn)
    try:
        yield
    finally:
        observer.stop()
        with contextlib.suppress(RuntimeError):
            observer.join(timeout=JOIN_SECONDS)


def _start(handler: FileSystemEventHandler, root: Path, poll_seconds: float,
           factory: Callable[[], Any], warn: Callable[[str], None]) -> Any:
    observer = None
    try:
        observer = factory()
        observer.schedule(handler, str(root), recursive=True, event_filter=EVENT_FILTER)
        observer.start()
        return observer
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EMFILE):
            raise
        if observer is not None:
            with contextlib.suppress(Exception):
                observer.stop()
        warn(inotify_limit_message(exc))
    polling = PollingObserver(timeout=poll_seconds)
    polling.schedule(handler, str(root), recursive=True, event_filter=EVENT_FILTER)
    polling.start()
    return polling
