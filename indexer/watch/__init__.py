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
(totals, signals); its `runs` row is the ingest's run lifecycle (ingest/run.py).
"""

from __future__ import annotations

import os
from typing import Any

from indexer.watch.follow import FollowUp
from indexer.watch.session import Watcher

__all__ = ["FollowUp", "Watcher", "watch_root"]


def watch_root(db_path: str | os.PathLike[str], root: str | os.PathLike[str], *,
               handle_signals: bool = False, **options: Any) -> dict:
    """Keep the index of ROOT current until `stop_event` is set; returns the session summary.

    The options are Watcher's: `dataset_id`, `settle` (2 s), `rescan_every` (600 s), `workers`,
    `after_change` (a name -> action called with the dataset id once at start and after each
    burst of changes, e.g. `indexer.export.registry.follow_up_exports(...)`; its result is
    reported as an `export` event), `on_batch` (receives one dict per batch, rescan, export and
    warning; key "event" says which), `stop_event` and `observer_factory` (for tests).
    `handle_signals` (main thread only) makes SIGINT/SIGTERM stop the session cleanly.
    """
    return Watcher(db_path, root, **options).run(handle_signals=handle_signals)
