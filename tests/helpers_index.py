"""Helpers for the tests of every stage: write samples by hand and read the database back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

SAMPLE_COLUMNS = ("dataset", "key", "image", "json", "width", "height", "size_from", "status",
                  "error", "warning", "meta")


def sample_rows(db: Path, columns: tuple[str, ...] = SAMPLE_COLUMNS,
                order: str = "dataset, key") -> list[tuple]:
    """The samples table as rows of these columns, read by a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT {', '.join(columns)} FROM samples ORDER BY {order}").fetchall()
    finally:
        conn.close()


def samples(db: Path) -> dict[str, dict]:
    """key -> the sample's SAMPLE_COLUMNS as a dict."""
    return {row[1]: dict(zip(SAMPLE_COLUMNS, row, strict=True)) for row in sample_rows(db)}


def files(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT dataset, path, size, sig FROM files ORDER BY dataset, path"
    ).fetchall()
    conn.close()
    return rows


def same_files(a: list[tuple], b: list[tuple]) -> bool:
    """Equal file records, where a racy one (signature -1: too young to trust when it was read)
    matches any signature: whether a file was still racy depends on when each run looked."""
    if [row[:3] for row in a] != [row[:3] for row in b]:
        return False
    return all(x[3] == y[3] or -1 in (x[3], y[3]) for x, y in zip(a, b, strict=True))
