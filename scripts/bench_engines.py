#!/usr/bin/env python3
"""`--engine local` against `--engine ray` on this machine: what Ray costs where it cannot help.

    python scripts/bench_engines.py [--n 100000] [--shards 100]

Generates N loose pairs and the same number of pairs in --shards shards (in a temporary folder),
then times a first `indexer index` of each with the local engine and with a local Ray instance
(started once, before the timings, on 127.0.0.1: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), checks the
databases hold the same rows, and prints the ratios ray/local. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_small_shards
from make_sample import make_dataset

ROWS = "SELECT key, status, width, height, meta, shard, json_offset FROM samples ORDER BY key"


def rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(ROWS).fetchall()
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=100)
    args = parser.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    from indexer.ingest.index import index_root

    with tempfile.TemporaryDirectory(prefix="bench-engines-") as scratch:
        loose, tars = Path(scratch) / "loose", Path(scratch) / "tars"
        make_dataset(loose, args.n, faults=0.0, seed=3)
        write_small_shards(tars, args.n, args.shards)
        started = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        nodes = [node["NodeManagerAddress"] for node in ray.nodes()]
        print(f"Ray started in {time.perf_counter() - started:.1f} s on {nodes}")
        for name, root in ((f"{args.n:,} loose pairs", loose),
                           (f"{args.n:,} pairs in {args.shards} shards", tars)):
            times = {}
            for engine in ("local", "ray"):
                db = Path(scratch) / f"{root.name}-{engine}.sqlite"
                started = time.perf_counter()
                summary = index_root(db, root, engine=engine)
                times[engine] = time.perf_counter() - started
                print(f"{name}, --engine {engine}: {times[engine]:6.2f} s"
                      f" (writer busy {summary['writer_busy']:.0%})")
            same = rows(Path(scratch) / f"{root.name}-local.sqlite") == rows(
                Path(scratch) / f"{root.name}-ray.sqlite")
            print(f"  ray / local: {times['ray'] / times['local']:.2f}x; same rows: {same}")
        ray.shutdown()


if __name__ == "__main__":
    main()
