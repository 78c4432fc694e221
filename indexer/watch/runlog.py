"""Run bookkeeping of a watch session: its totals, its row in `runs`, and how signals stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from indexer import store


@dataclass
class Totals:
    """What the session did so far (the `stopped` event's counts)."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    batches: int = 0
    rescans: int = 0
    exports: int = 0

    def count(self, added: int, changed: int, removed: int) -> bool:
        """Add one batch's or scan's counts; True when it changed any sample."""
        self.added += added
        self.changed += changed
        self.removed += removed
        return bool(added or changed or removed)


def record_run(conn: sqlite3.Connection, dataset: str, follow: Callable[[], None],
               summarize: Callable[[], dict]) -> dict:
    """Run `follow` as one `watch` row of `runs`; returns the final (`stopped`) summary.

    An interrupt during a scan ends the run as interrupted: its committed batches stay and the
    next start finishes the scan. Any other failure is recorded as failed and raised.
    """
    run_id = store.start_run(conn, dataset, "watch")
    status, error = "done", None
    try:
        follow()
    except KeyboardInterrupt:
        status, error = "interrupted", "stopped during a scan"
    except BaseException as exc:
        store.finish_run(conn, run_id, summarize(), status="failed", error=str(exc) or type(exc).__name__)
        raise
    summary = summarize()
    store.finish_run(conn, run_id, summary, status=status, error=error)
    return {**summary, "event": "stopped", "status": status, "run_id": run_id}


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, scanning: Callable[[], bool]) -> Iterator[None]:
    """SIGINT/SIGTERM: stop after the batch in hand. A scan (catch-up, rescan) cannot pause at a
    batch boundary, so there the signal interrupts it; its committed batches stay, the next start
    finishes the rest. A second signal always interrupts. Main thread only."""
    owner = os.getpid()  # forked readers inherit the handler: they must ignore it

    def on_signal(_signum: int, _frame: Any) -> None:
        if os.getpid() != owner:
            return
        if scanning() or stop.is_set():
            stop.set()
            raise KeyboardInterrupt
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
