"""Run bookkeeping of a watch session: its totals, and how signals stop it (its row in `runs` is
the ingest's one run lifecycle, ingest/run.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


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
