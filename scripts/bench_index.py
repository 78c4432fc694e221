#!/usr/bin/env python3
"""Benchmark `indexer index` against the seed recipe's compile.py on the same generated files.

    python scripts/bench_index.py [--n 100000] [--workers N] [--keep DIR]

Prints wall time and peak RSS of: the seed's compile.py (baseline), the stat floor (`find -printf`),
the first `indexer index`, a rerun with nothing changed, and a rerun after modifying 1% of JSON files,
deleting 0.5% of samples and adding 1%; then the ratios against the targets and the database size
against the JSON bytes. Data is generated into a temporary folder (no faults, so the seed can run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import measure, row
from make_sample import make_dataset

HERE = Path(__file__).resolve().parent
FLOOR_TOOL = HERE.parent.parent / "shared" / "tools" / "floor.py"  # the team's shared floor script


def mutate(root: Path, fraction_modify: float, fraction_delete: float, fraction_add: float, n: int) -> None:
    rng = random.Random(42)
    jsons = sorted(root.glob("*.json"))
    for path in rng.sample(jsons, int(len(jsons) * fraction_modify)):
        record = json.loads(path.read_text())
        record["short_caption"] = "edited: " + record["short_caption"]
        path.write_text(json.dumps(record))
    for path in rng.sample(jsons, int(len(jsons) * fraction_delete)):
        for extension in (".json", ".png", ".jpg", ".jpeg", ".webp"):  # not glob: O(folder) each
            path.with_suffix(extension).unlink(missing_ok=True)
    make_dataset(root, int(n * fraction_add), faults=0.0, seed=99, start=n + 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", help="generate into (or reuse) this folder instead of a temp one")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-index-"))
    root = work / "data"
    try:
        if not root.exists():
            start = time.perf_counter()
            make_dataset(root, args.n, faults=0.0, seed=1)
            print(f"generated {args.n:,} pairs in {time.perf_counter() - start:.1f} s into {root}")
        db = work / "bench.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        indexer = [sys.executable, "-m", "indexer", "index", str(root), "--db", str(db), "--json",
                   "--workers", str(args.workers)]
        measure("warm", ["find", str(root), "-printf", "%s %T@ %C@ %i %p\n"])  # warm the cache
        floor = measure("find", ["find", str(root), "-printf", "%s %T@ %C@ %i %p\n"])
        read_floor = None
        if FLOOR_TOOL.exists():  # read + parse every JSON, stat every image, write nothing
            floors = json.loads(measure("floor", [sys.executable, str(FLOOR_TOOL), str(root), "--workers",
                                                  str(args.workers)]).output)
            read_floor = floors["read_floor_s"]
        base = measure("seed", [sys.executable, str(HERE / "seed_compile.py"), str(root),
                                str(work / "seed.parquet")])
        time.sleep(3.1)  # let the newest files leave the racy window, as on a real dataset
        first = measure("first", indexer)
        stats_first = measure("stats", [sys.executable, "-m", "indexer", "stats", "--db", str(db), "--json"])
        stats_again = measure("stats", [sys.executable, "-m", "indexer", "stats", "--db", str(db), "--json"])
        search_again = measure("search", [sys.executable, "-m", "indexer", "search", "castle", "dragon",
                                          "--db", str(db), "--json"])
        again = measure("nochange", indexer)
        mutate(root, 0.01, 0.005, 0.01, args.n)
        changed = measure("changed", indexer)
        summary = json.loads(changed.output)
        first_summary = json.loads(first.output)
        print(f"\nindexer index, {args.n:,} pairs, {args.workers} workers, {os.cpu_count()} cores")
        print(f"{'step':<34} {'wall':>10} {'peak RSS':>11}  vs seed compile.py")
        print(row("seed compile.py (baseline)", base))
        print(row("stat floor: find -printf", floor, base))
        floor_note = ""
        if read_floor:
            floor_note = f"{first.seconds / read_floor:.2f}x the read floor ({read_floor:.2f} s)"
        print(row("index, first run", first, base, floor_note))
        derived = first_summary.get("derived") or {}
        print(f"  that run: {first_summary['readers']} readers, writer busy "
              f"{100 * first_summary['writer_busy']:.0f}% of its wall time, "
              f"{derived.get('seconds', 0):.2f} s of it building the stats indexes and search index")
        print(row("stats, first after the index", stats_first, base))
        print(row("stats, afterwards", stats_again, base))
        print(row("search castle dragon, afterwards", search_again, base))
        print(row("index, rerun, nothing changed", again, base,
                  f"{again.seconds / floor.seconds:.2f}x the stat floor"))
        print(row("index, rerun after 1%/0.5%/1%", changed, base,
                  f"{changed.seconds / again.seconds:.2f}x the no-change rerun"))
        print(f"  that run: added {summary['added']}, changed {summary['changed']}, "
              f"removed {summary['removed']}, files read {summary['files_read']}")
        db_ratio = first_summary["db_bytes"] / first_summary["json_bytes"]
        print(f"database {first_summary['db_bytes'] / 2**20:.1f} MiB = {db_ratio:.2f}x the JSON bytes "
              f"({first_summary['json_bytes'] / 2**20:.1f} MiB)")
        checks = [
            ("first run >= 2x faster than baseline", base.seconds / first.seconds >= 2),
            ("first run <= 2x read floor", bool(read_floor) and first.seconds <= 2 * read_floor),
            ("stats and search < 2 s after an index", max(stats_again.seconds, search_again.seconds) < 2),
            ("no-change rerun >= 6x faster than baseline", base.seconds / again.seconds >= 6),
            ("no-change rerun <= 1.5x stat floor", again.seconds <= 1.5 * floor.seconds),
            ("1% rerun <= 1.3x no-change rerun", changed.seconds <= 1.3 * again.seconds),
            ("peak RSS <= 300 MB", max(first.peak_rss_mb, again.peak_rss_mb, changed.peak_rss_mb) <= 300),
            ("database <= 1.5x JSON bytes", db_ratio <= 1.5),
        ]
        print("targets: " + "; ".join(f"{name}: {'PASS' if ok else 'MISS'}" for name, ok in checks))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
