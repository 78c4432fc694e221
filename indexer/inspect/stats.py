"""`indexer stats`: the figures that tell whether a dataset is fit to train on, in one pass of SQL.

Every figure comes from a narrow index (schema/003_query.sql), never from the ~1.5 KB sample rows:
that is what keeps the whole screen under 2 s on 1M samples. Sizes, sources and extensions share one
grouped scan; Python then folds the few hundred groups into the histograms.
"""

from __future__ import annotations

import itertools
import math
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable

import orjson

from indexer import media, store
from indexer.db.counts import status_counts
from indexer.db.readonly import reading
from indexer.ingest.derived import deferred_status

CAPTION_FIELDS = ("short_caption", "long_caption")  # the caption columns with a length index
HASH_FIELDS = {"file_hash": "md5_file_hash", "pil_hash": "md5_pil_hash"}
# SimpleTuner's area rules (resolution_type: area) at their usual 0.75-2.0 megapixels, 1 MP = 1e6 px.
MIN_MEGAPIXELS = 0.75
MAX_MEGAPIXELS = 2.0
# Aspect-ratio (width / height) buckets: [low, high) with a readable label.
ASPECT_BUCKETS = [
    (0.0, 0.5, "< 1:2"), (0.5, 0.7, "1:2 - 2:3"), (0.7, 0.95, "2:3 - 1:1"), (0.95, 1.05, "1:1"),
    (1.05, 1.45, "1:1 - 3:2"), (1.45, 2.0, "3:2 - 2:1"), (2.0, math.inf, "> 2:1"),
]
MEGAPIXEL_BUCKETS = [
    (0.0, 0.25, "< 0.25"), (0.25, 0.5, "0.25 - 0.5"), (0.5, 0.75, "0.5 - 0.75"), (0.75, 1.0, "0.75 - 1"),
    (1.0, 1.5, "1 - 1.5"), (1.5, 2.0, "1.5 - 2"), (2.0, 4.0, "2 - 4"), (4.0, math.inf, ">= 4"),
]
CAPTION_BUCKETS = [0, 1, 50, 100, 200, 400, 800, 1200, 1600, 2400, math.inf]
RECENT_RUNS = 5
TOP_SIZES = 10


def dataset_stats(db_path: str | os.PathLike[str], dataset_id: str | None, *,
                  min_megapixels: float = MIN_MEGAPIXELS,
                  max_megapixels: float = MAX_MEGAPIXELS) -> dict:
    """All stats figures of one dataset (the `stats --json` object).

    Only reads. When the narrow indexes the figures come from are not built (the writing run
    that deferred them is going on, or stopped before its end), the same figures come from full
    scans, and `derived` says why (`derived_ready` is False), with `read_only` naming why the
    database cannot be written here (None when it can: the next writing run builds them).
    """
    with reading(db_path) as conn:
        dataset, _root = store.resolve_dataset(conn, dataset_id)
        figures = collect_stats(conn, dataset, min_megapixels=min_megapixels,
                                max_megapixels=max_megapixels)
        deferred = deferred_status(conn)
    if deferred is not None:
        deferred["read_only"] = media.read_only_reason(db_path)
    figures["derived_ready"] = deferred is None
    figures["derived"] = deferred
    return figures


def collect_stats(conn: sqlite3.Connection, dataset: str, *, min_megapixels: float = MIN_MEGAPIXELS,
                  max_megapixels: float = MAX_MEGAPIXELS) -> dict:
    root, data_version = conn.execute(
        "SELECT root, data_version FROM datasets WHERE id = ?", (dataset,)).fetchone()
    status = status_counts(conn, dataset)
    groups = conn.execute(
        "SELECT source, width, height, lower(image_ext), count(*) FROM samples WHERE dataset = ?"
        " GROUP BY source, width, height, image_ext", (dataset,)).fetchall()
    sizes = Counter[tuple[int | None, int | None]]()
    sources = Counter[str]()
    extensions = Counter[str]()
    for source, width, height, ext, count in groups:
        sources[_label(source)] += count
        extensions[ext or "(no image)"] += count
        sizes[(width, height)] += count
    return {
        "dataset": dataset,
        "root": root,
        "data_version": data_version,
        "samples": sum(status.values()),
        "status": status,
        "sources": dict(sources.most_common()),
        "extensions": dict(extensions.most_common()),
        "sizes": size_figures(sizes, min_megapixels, max_megapixels),
        "captions": {field: caption_figures(conn, dataset, field) for field in CAPTION_FIELDS},
        "duplicates": {name: duplicate_figures(conn, dataset, column)
                       for name, column in HASH_FIELDS.items()},
        "runs": recent_runs(conn, dataset),
        "exports": export_figures(conn, dataset, data_version),
        "search_pending": conn.execute("SELECT count(*) FROM search_pending").fetchone()[0],
    }


def _label(value: object) -> str:
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def size_figures(sizes: Counter[tuple[int | None, int | None]], min_megapixels: float,
                 max_megapixels: float) -> dict:
    """Top sizes, aspect-ratio and megapixel histograms and SimpleTuner's area bands."""
    known = {wh: n for wh, n in sizes.items() if _usable(wh)}
    unknown = sum(sizes.values()) - sum(known.values())
    aspect = Counter[str]()
    megapixels = Counter[str]()
    bands = {"below": 0, "within": 0, "above": 0, "unknown": unknown}
    for (width, height), count in known.items():
        ratio = width / height
        area = width * height / 1e6
        aspect[_bucket(ratio, ASPECT_BUCKETS)] += count
        megapixels[_bucket(area, MEGAPIXEL_BUCKETS)] += count
        band = "below" if area < min_megapixels else "above" if area > max_megapixels else "within"
        bands[band] += count
    top = sorted(known.items(), key=lambda item: (-item[1], item[0]))[:TOP_SIZES]
    return {
        "known": sum(known.values()),
        "unknown": unknown,
        "distinct": len(known),
        "top": [{"width": w, "height": h, "samples": n} for (w, h), n in top],
        "aspect": {label: aspect.get(label, 0) for _, _, label in ASPECT_BUCKETS},
        "megapixels": {label: megapixels.get(label, 0) for _, _, label in MEGAPIXEL_BUCKETS},
        "area_rules": {"min_megapixels": min_megapixels, "max_megapixels": max_megapixels, **bands},
    }


def _usable(size: tuple[int | None, int | None]) -> bool:
    width, height = size
    return isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0


def _bucket(value: float, buckets: list[tuple[float, float, str]]) -> str:
    for low, high, label in buckets:
        if low <= value < high:
            return label
    return buckets[-1][2]


def caption_figures(conn: sqlite3.Connection, dataset: str, field: str) -> dict:
    """Length in characters of one caption field: present/empty/missing, quantiles, histogram."""
    if field not in CAPTION_FIELDS:
        raise ValueError(f"no caption length index for {field}")
    lengths = conn.execute(
        f"SELECT length({field}), count(*) FROM samples WHERE dataset = ? GROUP BY length({field})",
        (dataset,)).fetchall()
    return length_figures(lengths)


def length_figures(lengths: Iterable[tuple[int | None, int]]) -> dict:
    counts = sorted((length, n) for length, n in lengths if length is not None)
    missing = sum(n for length, n in lengths if length is None)
    present = sum(n for _, n in counts)
    empty = sum(n for length, n in counts if length == 0)
    histogram = {}
    for low, high in itertools.pairwise(CAPTION_BUCKETS):
        label = "0" if high == 1 else f">= {low}" if math.isinf(high) else f"{low} - {high - 1}"
        histogram[label] = sum(n for length, n in counts if low <= length < high)
    return {
        "present": present,
        "missing": missing,
        "empty": empty,
        "min": counts[0][0] if counts else None,
        "p50": _quantile(counts, present, 0.5),
        "p90": _quantile(counts, present, 0.9),
        "max": counts[-1][0] if counts else None,
        "mean": round(sum(length * n for length, n in counts) / present, 1) if present else None,
        "histogram": histogram,
    }


def _quantile(counts: list[tuple[int, int]], total: int, q: float) -> int | None:
    """The smallest length with at least q of the captions at or below it."""
    if not total:
        return None
    seen = 0
    for length, n in counts:
        seen += n
        if seen >= q * total:
            return length
    return counts[-1][0]


def duplicate_figures(conn: sqlite3.Connection, dataset: str, column: str) -> dict:
    """Hashes shared by several samples: groups, samples in them and the copies beyond the first."""
    groups, samples = conn.execute(
        f"""WITH firsts AS (
                SELECT min(id) AS id FROM samples
                WHERE dataset = :d AND substr({column}, 1, 12) > ''
                GROUP BY substr({column}, 1, 12) HAVING count(*) > 1),
            candidates AS (
                SELECT substr(s.{column}, 1, 12) AS prefix FROM firsts AS f JOIN samples AS s ON s.id = f.id)
            SELECT count(*), coalesce(sum(n), 0) FROM (
                SELECT count(*) AS n FROM candidates AS c
                CROSS JOIN samples AS s ON s.dataset = :d AND substr(s.{column}, 1, 12) = c.prefix
                GROUP BY s.{column} HAVING count(*) > 1)""",
        {"d": dataset}).fetchone()
    return {"groups": groups, "samples": samples, "extra": samples - groups}


def recent_runs(conn: sqlite3.Connection, dataset: str) -> list[dict]:
    cursor = conn.execute(
        "SELECT id, command, started_at, finished_at, status, added, changed, removed, unchanged,"
        " seconds, error FROM runs WHERE dataset = ? ORDER BY id DESC LIMIT ?", (dataset, RECENT_RUNS))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def export_figures(conn: sqlite3.Connection, dataset: str, data_version: int) -> list[dict]:
    """Each recorded export, and whether it needs doing again (as the export_status view says):
    samples changed after it was written, or some of its files could not be written."""
    rows = conn.execute(
        "SELECT kind, path, rows, data_version, exported_at, failed FROM exports WHERE dataset = ?"
        " ORDER BY kind, path", (dataset,)).fetchall()
    return [
        {"kind": kind, "path": path, "rows": count, "data_version": version, "exported_at": at,
         "failed": failed, "stale": version < data_version or failed > 0}
        for kind, path, count, version, at, failed in rows
    ]
