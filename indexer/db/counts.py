"""The counts every stage reports: samples of a dataset, and its samples by status."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import orjson

from indexer.db.status import Status


def sample_count(conn: sqlite3.Connection, dataset: str) -> int:
    return conn.execute("SELECT count(*) FROM samples WHERE dataset = ?", (dataset,)).fetchone()[0]


def problem_counts(conn: sqlite3.Connection, dataset: str,
                   keys: Iterable[str] | None = None) -> dict[str, int]:
    """Samples by status other than ok, in status order; with `keys`, among those keys only.

    The whole dataset: two ranges of the status index around 'ok', never a walk over the (many)
    ok rows. Some keys (a watch batch): each key looked up, whatever the dataset's size.
    """
    if keys is None:
        rows = conn.execute(
            f"SELECT status, count(*) FROM samples WHERE dataset = ?1 AND status < '{Status.OK}'"
            " GROUP BY status UNION ALL SELECT status, count(*) FROM samples WHERE dataset = ?1"
            f" AND status > '{Status.OK}' GROUP BY status ORDER BY status", (dataset,))
    else:
        rows = conn.execute(
            "SELECT status, count(*) FROM json_each(?2) AS wanted CROSS JOIN samples"
            " ON samples.dataset = ?1 AND samples.key = wanted.value"
            f" WHERE samples.status != '{Status.OK}' GROUP BY status ORDER BY status",
            (dataset, orjson.dumps(sorted(set(keys))).decode()))
    return dict(rows.fetchall())


def status_counts(conn: sqlite3.Connection, dataset: str) -> dict[str, int]:
    """Samples by every status, ok included, each status present (0 when none has it)."""
    counts = {status.value: 0 for status in Status}
    counts.update(conn.execute(
        "SELECT status, count(*) FROM samples WHERE dataset = ? GROUP BY status", (dataset,)).fetchall())
    return counts
