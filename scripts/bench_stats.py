#!/usr/bin/env python3
"""Benchmark query/stats/search: what schema/003 costs `index`, and stats/search speed on 1M samples.

    python scripts/bench_stats.py [--index-n 30000] [--n 1000000] [--skip-index-cost] [--skip-1m]

Part 1 (index cost): generates --index-n samples with make_sample.make_dataset into a temp folder and
times the first `index_root` run (2 workers) with the schema as it was before 003 (baseline), with 003's
indexes but no FTS, with 003's FTS but no indexes, and with the whole of 003; prints the ratio to the
baseline and the database size against the JSON bytes. Each variant runs twice, the best time counts.

Part 2 (1M samples): 1M files would take longer to write than to index, so the rows are synthesised
straight into a database through the real schema (the FTS triggers fire): a generator yields realistic
`meta` JSON (DALLE-3 field names, captions from a 5,000-word Zipf vocabulary, 1% duplicates, 3%
problems). Then it times `stats` (library call) and several `search` queries, each against a baseline
measured in the same run: a full scan of the samples table (`SELECT count(*) ... WHERE meta LIKE ...`).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample import make_dataset

from indexer import store
from indexer.db.fts import sync_search_index
from indexer.ingest import index
from indexer.inspect import search, stats

TRIGGER = re.compile(r"CREATE TRIGGER .*?\nEND;\n", re.S)
FTS_TABLE = re.compile(r"CREATE VIRTUAL TABLE samples_fts .*?\);\n", re.S)
REBUILD = re.compile(r"INSERT INTO samples_fts \(samples_fts\) VALUES \('rebuild'\);\n")
INDEXES = re.compile(r"CREATE INDEX .*?;\n", re.S)
DUP_VIEWS = re.compile(r"CREATE VIEW duplicates_by_\w+ AS.*?;\n", re.S)


def schema_variant(target: Path, keep_fts: bool, keep_indexes: bool, keep_003: bool = True) -> Path:
    """A copy of schema/ with parts of 003 removed (the views stay; they cost nothing to write)."""
    target.mkdir(parents=True)
    for number, path in store.schema_files():
        text = path.read_text(encoding="utf-8")
        if number == 3:
            if not keep_003:
                text = "SELECT 1;\n"
            if not keep_fts:
                text = REBUILD.sub("", TRIGGER.sub("", FTS_TABLE.sub("", text)))
            if not keep_indexes:
                text = DUP_VIEWS.sub("", INDEXES.sub("", text))
        (target / path.name).write_text(text, encoding="utf-8")
    return target


def index_cost(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_stats_"))
    try:
        root = tmp / "data"
        make_dataset(root, n)
        variants = {
            "before 003 (baseline)": dict(keep_fts=False, keep_indexes=False, keep_003=False),
            "003 indexes, no FTS": dict(keep_fts=False, keep_indexes=True),
            "003 FTS, no indexes": dict(keep_fts=True, keep_indexes=False),
            "003 whole (FTS + indexes)": dict(keep_fts=True, keep_indexes=True),
        }
        results: dict[str, tuple[float, int, int]] = {}
        for rep in range(2):
            for name, options in variants.items():
                schema = schema_variant(tmp / f"schema{rep}_{len(results)}_{os.getpid()}_{time.time_ns()}",
                                        **options)
                db = tmp / "bench.sqlite"
                for suffix in ("", "-wal", "-shm", ".lock"):
                    Path(str(db) + suffix).unlink(missing_ok=True)
                with mock.patch.object(store, "schema_dir", lambda schema=schema: schema):
                    start = time.perf_counter()
                    summary = index.index_root(db, root, workers=2)
                    seconds = time.perf_counter() - start
                best = results.get(name)
                if best is None or seconds < best[0]:
                    results[name] = (seconds, summary["db_bytes"], summary["json_bytes"])
        base_seconds = results["before 003 (baseline)"][0]
        print(f"first `index` run, {n:,} samples (make_sample.py), 2 workers, best of 2:")
        for name, (seconds, db_bytes, json_bytes) in results.items():
            print(f"  {name:<28} {seconds:6.2f} s  {seconds / base_seconds:5.2f}x baseline time"
                  f"  db {db_bytes / 2**20:7.1f} MiB = {db_bytes / json_bytes:.3f}x JSON bytes")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


VOCAB_SIZE = 5000
SOURCES = ["chan_archive", "imagecreator_scrapes", "reddit_rdalle2", "laion_share_dalle3",
           "midjourney_share", "twitter", "stable_diffusion_share"]
SIZES = [(1024, 1024), (1792, 1024), (1024, 1792), (512, 512), (896, 1152), (640, 480), (1456, 816),
         (2048, 2048)]


def vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """Words and CUMULATIVE Zipf weights (random.choices would re-add 5,000 weights per call)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["a", "the", "of", "with", "in", "and"]  # the function words lead the Zipf ranks
    while len(words) < VOCAB_SIZE:
        words.append("".join(rng.choice(letters) for _ in range(rng.randint(3, 10))))
    for rank, word in ((40, "city"), (150, "cat"), (300, "dragon"), (400, "neon"), (600, "castle")):
        words[rank] = word  # the benchmark's query words, at realistic frequencies
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf: "a", "the" are everywhere
    return words, list(itertools.accumulate(weights))


def synthetic_rows(n: int, dataset: str, seed: int = 0) -> Iterator[tuple]:
    """(dataset, key, image_ext, json_ext, width, height, size_from, status, error, meta) rows."""
    rng = random.Random(seed)
    words, weights = vocabulary(rng)

    def text(count: int) -> str:
        return " ".join(rng.choices(words, cum_weights=weights, k=count)).capitalize() + "."

    for i in range(n):
        key = f"{i:08d}_{rng.getrandbits(32):08x}"
        ext = rng.choices(["png", "jpg", "jpeg"], weights=[70, 25, 5])[0]
        width, height = rng.choices(SIZES, weights=[55, 14, 14, 5, 4, 3, 3, 2])[0]
        twin = i - 1 if i and rng.random() < 0.01 else i  # ~1% duplicates of the previous sample
        file_hash = hashlib.md5(str(twin).encode()).hexdigest()
        problem = rng.random()
        if problem < 0.01:
            yield (dataset, key, ext, "json", None, None, None, "bad_json",
                   f"{key}.json: not valid JSON; re-extract or delete it", None)
            continue
        if problem < 0.02:
            yield (dataset, key, None, "json", width, height, "json", "missing_image",
                   f"{key}.json has no image; restore it or delete the JSON", None)
            continue
        meta = {
            "image_name": f"{key}.{ext}", "md5_pil_hash": hashlib.md5(file_hash.encode()).hexdigest(),
            "md5_file_hash": file_hash, "sha512_hash": hashlib.sha512(key.encode()).hexdigest(),
            "short_caption": text(rng.randint(12, 30)), "long_caption": text(rng.randint(60, 160)),
            "resolution": f"{width}x{height}", "url": f"https://example.invalid/{file_hash[:12]}.{ext}",
            "width": width, "height": height, "source": rng.choice(SOURCES),
            "original_prompt": text(20) if rng.random() < 0.1 else None,
        }
        yield (dataset, key, ext, "json", width, height, "json", "ok", None,
               orjson.dumps(meta).decode())


def build_1m(db: Path, n: int) -> tuple[float, float, int]:
    conn = store.connect(db)
    json_bytes = 0
    start = time.perf_counter()
    with store.transaction(conn):
        conn.execute("INSERT INTO datasets (id, root, created_ns, data_version) VALUES ('big', ?, 0, 1)",
                     (str(db.parent / "big"),))
    batch: list[tuple] = []
    for row in synthetic_rows(n, "big"):
        json_bytes += len(row[-1] or "")
        batch.append(row)
        if len(batch) == 20_000:
            _insert(conn, batch)
            batch.clear()
    _insert(conn, batch)
    sync_start = time.perf_counter()
    sync_search_index(conn)  # what `index` does at the end of a run
    sync_seconds = time.perf_counter() - sync_start
    with store.transaction(conn):
        conn.execute("INSERT INTO runs (dataset, command, started_at, finished_at, status, added)"
                     " VALUES ('big', 'index', ?, ?, 'done', ?)", (store.now_iso(), store.now_iso(), n))
        conn.execute("INSERT INTO exports (dataset, kind, path, options, data_version, rows, exported_at)"
                     " VALUES ('big', 'parquet', '/tmp/x.parquet', '{}', 0, ?, ?)", (n, store.now_iso()))
    conn.close()
    return time.perf_counter() - start, sync_seconds, json_bytes


def _insert(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    with store.transaction(conn):
        conn.executemany(
            "INSERT INTO samples (dataset, key, image_ext, json_ext, width, height, size_from, status,"
            " error, meta, data_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)", rows)


def best_of(repeats: int, func, *args, **kwargs) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def full_scan(db: Path, needle: str) -> int:
    conn = store.connect(db, readonly=True)
    try:
        return conn.execute("SELECT count(*) FROM samples WHERE meta LIKE ?", (f"%{needle}%",)).fetchone()[0]
    finally:
        conn.close()


def one_million(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_stats_1m_"))
    try:
        db = tmp / "big.sqlite"
        seconds, sync_seconds, json_bytes = build_1m(db, n)
        db_bytes = index.database_bytes(db)
        print(f"\n{n:,} synthesised samples inserted through the schema (triggers on) in {seconds:.1f} s"
              f" ({n / seconds:,.0f} rows/s; FTS sync {sync_seconds:.1f} s of it);"
              f" db {db_bytes / 2**20:.0f} MiB"
              f" = {db_bytes / json_bytes:.3f}x the meta JSON bytes")
        scan_s, _ = best_of(2, full_scan, db, "dragon castle")
        print(f"  baseline: full scan `meta LIKE '%dragon castle%'`  {scan_s:6.2f} s")
        stats_s, figures = best_of(2, stats.dataset_stats, db, None)
        print(f"  stats (all figures)      {stats_s:6.2f} s  {scan_s / stats_s:6.1f}x faster than the scan"
              f"  target < 2 s: {'ok' if stats_s < 2 else 'MISSED'}")
        for text in ("dragon castle", '"neon city"', "cat", "the"):
            search_s, hits = best_of(2, search.search, db, text, limit=20)
            matched = search.count_matches(db, text)
            print(f"  search {text!r:<16} {search_s:6.3f} s  {scan_s / search_s:7.1f}x faster than the scan"
                  f"  ({matched:,} matches, top {len(hits)})"
                  f"  target < 2 s: {'ok' if search_s < 2 else 'MISSED'}")
        print(f"  (stats saw {figures['samples']:,} samples, {figures['duplicates']['file_hash']['extra']:,}"
              " extra copies by file hash)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index-n", type=int, default=30_000)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--skip-index-cost", action="store_true")
    parser.add_argument("--skip-1m", action="store_true")
    args = parser.parse_args()
    if not args.skip_index_cost:
        index_cost(args.index_n)
    if not args.skip_1m:
        one_million(args.n)


if __name__ == "__main__":
    main()
