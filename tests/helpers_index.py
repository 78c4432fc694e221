"""Helpers for the tests of every stage: write samples by hand and read the database back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

SAMPLE_COLUMNS = ("dataset", "key", "image", "json", "width", "height", "size_from", "status",
                  "error", "warning", "meta")


def write_pair(root: Path, key: str, gen, *, ext: str = "png", size=(1024, 768), record=None,
               json_text: str | None = None, image: bool = True, json_file: bool = True) -> None:
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    if json_file:
        if json_text is None:
            record = record if record is not None else {
                "image_name": f"{key.rsplit('/', 1)[-1]}.{ext}", "width": size[0], "height": size[1],
                "short_caption": f"caption of {key}", "source": "test",
            }
            json_text = json.dumps(record)
        (root / f"{key}.json").write_text(json_text, encoding="utf-8")
    if image:
        writer = gen.IMAGE_WRITERS[ext.lower()]
        (root / f"{key}.{ext}").write_bytes(writer(*size))


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
