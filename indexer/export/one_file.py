"""The flow every one-file export follows (parquet, jsonl, kohya): one snapshot, the selection
checked, nothing written when the last export to the same path is up to date, else the file
written beside OUT and renamed over it, then the export recorded."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from indexer.atomic import atomic_file
from indexer.export.record import is_up_to_date, previous_export, record_export
from indexer.export.select import ReadSnapshot, check_selection, excluded_summary, open_snapshot, options_json
from indexer.export.selection import Selection

FileWriter = Callable[[ReadSnapshot, Path], int]  # writes the selected rows to a temp path; returns rows


def export_file(
    db_path: str | os.PathLike[str],
    path: Path,
    kind: str,
    selection: Selection,
    options: dict,
    write: FileWriter,
    *,
    dataset_id: str | None,
    counts: dict | None = None,
    sized: bool = False,
    local_files: bool = True,
) -> dict:
    """Write PATH through `write` unless the last export of this kind there holds the same rows
    (same options, data and file); return the summary.

    `counts` is what the writer tallies while it writes; it goes into the summary (and comes back
    from the recorded one when nothing had to be written). `sized` adds the file's `bytes`.
    """
    counts = {} if counts is None else counts
    started = time.monotonic()
    recorded = options_json(options)
    with open_snapshot(db_path, dataset_id, local_files=local_files) as snapshot:
        check_selection(snapshot, selection)
        previous = previous_export(snapshot.conn, snapshot.dataset, kind, path)
        up_to_date = is_up_to_date(previous, recorded, snapshot.data_version, path)
        if up_to_date and previous is not None:
            rows, excluded = previous["rows"], previous["summary"].get("excluded", {})
            counts.update({name: previous["summary"].get(name, value) for name, value in counts.items()})
        else:
            with atomic_file(path) as temp:
                rows = write(snapshot, temp)
            excluded = excluded_summary(snapshot.excluded)
    summary = {
        "kind": kind, "dataset": snapshot.dataset, "path": str(path), "rows": rows,
        "up_to_date": up_to_date, "excluded": excluded, "data_version": snapshot.data_version,
        **({"bytes": os.path.getsize(path)} if sized else {}),
        **counts, "seconds": round(time.monotonic() - started, 3),
    }
    if not up_to_date:
        record_export(db_path, snapshot.dataset, kind, path, options=recorded,
                      data_version=snapshot.data_version, rows=rows, summary=summary, file_path=path)
    return summary
