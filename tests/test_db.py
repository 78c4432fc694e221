"""The shared database vocabulary: statuses, counts and the one read-only connection."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from indexer.db import readonly
from indexer.db.counts import problem_counts, sample_count, status_counts
from indexer.db.status import PROBLEM_STATUSES, Status
from indexer.errors import IndexerError
from indexer.export.parquet import export_parquet
from indexer.ingest.index import index_root
from indexer.render import rows


@pytest.fixture
def faulty(gen, data_root: Path, db_path: Path) -> Path:
    """An index of 120 generated samples with every kind of fault mixed in."""
    gen.make_dataset(data_root, 120, faults=0.3, seed=7)
    index_root(db_path, data_root, workers=1)
    return db_path


def plain_counts(db: Path, sql: str, params: tuple = ()) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def test_every_status_the_index_writes_is_a_status(faulty):
    written = plain_counts(faulty, "SELECT status, count(*) FROM samples GROUP BY status")
    assert len(written) > 2 and set(written) <= {status.value for status in Status}
    assert Status.OK not in PROBLEM_STATUSES and len(PROBLEM_STATUSES) == len(Status) - 1


def test_counts_agree_with_a_plain_group_by(faulty):
    every = plain_counts(faulty, "SELECT status, count(*) FROM samples GROUP BY status")
    conn = sqlite3.connect(faulty)
    try:
        keys = [key for (key,) in conn.execute("SELECT key FROM samples ORDER BY key LIMIT 40")]
        among = plain_counts(faulty, f"SELECT status, count(*) FROM samples WHERE status != 'ok' AND key IN"
                                     f" ({', '.join('?' * len(keys))}) GROUP BY status", tuple(keys))
        assert sample_count(conn, "data") == sum(every.values()) == 120
        assert problem_counts(conn, "data") == {s: n for s, n in sorted(every.items()) if s != "ok"}
        assert problem_counts(conn, "data", keys + keys[:5]) == dict(sorted(among.items()))  # once each
        assert problem_counts(conn, "data", []) == {}
        assert status_counts(conn, "data") == {status.value: every.get(status.value, 0) for status in Status}
    finally:
        conn.close()


def test_query_and_export_snapshots_follow_one_rule(faulty, tmp_path):
    """A reading pragma is allowed wherever SQL runs read-only, a write is refused everywhere."""
    reading = "(SELECT count(*) FROM pragma_table_info('samples')) > 0"
    out = tmp_path / "x.parquet"
    summary = export_parquet(faulty, out, where=reading)
    assert summary["rows"] == pq.read_metadata(out).num_rows > 0
    conn, guard = readonly.connect_readonly(faulty, upgrade=True)
    try:
        assert conn.execute(f"SELECT {reading}").fetchone() == (1,)
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("DELETE FROM samples")
        assert guard.refused == "delete samples"
    finally:
        conn.close()
    with pytest.raises(IndexerError, match="refused this statement"):
        rows.run_query(faulty, "DELETE FROM samples", io.StringIO())
    assert plain_counts(faulty, "SELECT 'n', count(*) FROM samples") == {"n": 120}
