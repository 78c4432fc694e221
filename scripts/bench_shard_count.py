#!/usr/bin/env python3
"""Every cost grows with samples, not samples x shards: the same samples in few and in many shards.

    python scripts/bench_shard_count.py [--samples 50000] [--few 10] [--many 2000]

Writes the samples into `--few` and into `--many` uncompressed shards (in a temporary folder),
indexes each set in place and times `export webshart` on both, then prints the times and the ratio
many/few (target: within 1.5x). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_small_shards

from indexer.export.webshart import export_webshart
from indexer.ingest.index import index_root


def timed_export(folder: Path, db: Path) -> tuple[float, float, int]:
    started = time.perf_counter()
    index_root(db, folder)
    indexed = time.perf_counter() - started
    started = time.perf_counter()
    summary = export_webshart(db)
    return indexed, time.perf_counter() - started, summary["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--few", type=int, default=10)
    parser.add_argument("--many", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as scratch:
        results = {}
        for shards in (args.few, args.many):
            folder = Path(scratch) / f"shards-{shards}"
            write_small_shards(folder, args.samples, shards)
            results[shards] = timed_export(folder, Path(scratch) / f"{shards}.sqlite")
            indexed, exported, rows = results[shards]
            print(f"{args.samples:,} samples in {shards:>5,} shards: index {indexed:6.2f} s,"
                  f" export webshart {exported:6.2f} s ({rows:,} rows)")
        ratio = results[args.many][1] / results[args.few][1]
        print(f"export webshart, {args.many:,} vs {args.few:,} shards: {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
