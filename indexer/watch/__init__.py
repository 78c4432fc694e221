"""The `watch` stage: catch up once, then keep the index current from filesystem events.

Events are only hints. A touched path waits until it has been quiet for `settle` seconds and two
stat looks agree (debounce.py), so a half-written JSON is never recorded as bad; then the paths
that are ready are re-indexed together through `index.update_paths` (one short transaction per
batch, session.py). Whatever the events miss (kernel queue overflow, a kill) is caught by a full
rescan: on overflow, every `rescan_every` seconds, and at the next start. After a change, the
caller's follow-up actions (the exports the CLI builds from `indexer.export.registry`) run once
the burst is over (follow.py); watch itself never imports the export code.

Modules: events.py (event intake), debounce.py (quiet + stable stat), observer.py (inotify or
polling), session.py (the loop: batches and rescans), follow.py (follow-up actions), runlog.py
(totals, the `runs` row, signals).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from indexer.watch.follow import Emit, FollowUp
from indexer.watch.session import Watcher

__all__ = ["FollowUp", "watch_root"]


def watch_root(
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
    handle_signals: bool = False,
) -> dict:
    """Keep the index of ROOT current until stop_event is set; returns the session summary.

    `after_change` maps a name to an action called with the dataset id once at start and after
    each burst of changes (e.g. `indexer.export.registry.follow_up_exports(...)`); its result is
    reported as an `export` event. `on_batch` receives one dict per batch, rescan, export and
    warning (key "event" says which). `handle_signals` (main thread only) makes SIGINT/SIGTERM
    stop the session cleanly.
    """
    watcher = Watcher(
        db_path, root, dataset_id=dataset_id, settle=settle, rescan_every=rescan_every,
        workers=workers, after_change=after_change, on_batch=on_batch, stop_event=stop_event,
        observer_factory=observer_factory,
    )
    return watcher.run(handle_signals=handle_signals)
