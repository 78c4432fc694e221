"""`indexer problems`: every sample that is not ok (and, on request, every warning), with the file to
look at and what to do.

The `error` column already names the file, the problem and the fix (written by `index`); this adds
the absolute path, so the list can be acted on from any folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from indexer import store
from indexer.db.readonly import reading
from indexer.db.status import PROBLEM_STATUSES, Status
from indexer.errors import IndexerError

FETCH_ROWS = 1000


def list_problems(db_path: str | os.PathLike[str], dataset_id: str | None = None,
                  statuses: Sequence[str] = (), warnings: bool = False) -> Iterator[dict]:
    """Stream the problem samples of one dataset, in key order (the `problems` view).

    With `warnings`, ok samples that carry a warning (an image_name that disagrees with the file,
    several images for one stem) are listed too: they are exported, but may not be what was meant.
    They come from a partial index, so the (many) ok samples without one are never read.
    """
    unknown = sorted(set(statuses) - set(PROBLEM_STATUSES))
    if unknown:
        raise IndexerError(f"unknown --status {', '.join(unknown)}: use {', '.join(PROBLEM_STATUSES)}")
    with reading(db_path) as conn:
        dataset, root = store.resolve_dataset(conn, dataset_id)
        wanted = list(statuses or PROBLEM_STATUSES)
        # Found through the status and warning indexes, then sorted: ordering by key straight
        # away would make SQLite walk every sample of the dataset in key order.
        sql = ("SELECT key, status, file, error, warning FROM problems WHERE dataset = ?"
               f" AND status IN ({', '.join('?' * len(wanted))})")
        params: list = [dataset, *wanted]
        if warnings:  # +status: the partial index of warnings, not the status index's many ok rows
            sql += (" UNION ALL SELECT key, status, json, error, warning FROM samples"
                    f" WHERE dataset = ? AND +status = '{Status.OK}' AND warning IS NOT NULL")
            params.append(dataset)
        cursor = conn.execute(f"SELECT * FROM ({sql}) ORDER BY key", params)
        while rows := cursor.fetchmany(FETCH_ROWS):
            for key, status, file, error, warning in rows:
                yield {"key": key, "status": status, "file": file,
                       "path": str(root / file) if file else None, "error": error, "warning": warning}
