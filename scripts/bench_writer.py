#!/usr/bin/env python3
"""The single writer alone: rows a second it records into a fresh database, readers elsewhere.

    python scripts/bench_writer.py [--n 500000] [--batch 4096]

Builds scratch databases of DALLE-3-sized sample rows first (what readers send: the JSON as
`meta`, ~1.5 KB), then times only the writer copying them into a fresh database through the
recorder (one INSERT ... SELECT a batch, as a first run does), up to the load's end, where a
first load waits for the disk (bulk.unsynced_load). Prints samples a second against the target
(150,000/s). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from indexer import store
from indexer.ingest.bulk import unsynced_load, write_scratch
from indexer.ingest.derived import defer_derived
from indexer.ingest.recorder import Recorder, ScratchBatch

TARGET = 150_000


def rows(start: int, count: int) -> list[tuple]:
    """CompactResults of `count` DALLE-3-like samples (json + png, size from the JSON)."""
    found = []
    for i in range(start, start + count):
        meta = json.dumps({"image_name": f"{i:08d}.png", "width": 1024, "height": 1024, "source": "bench",
                           "short_caption": "a caption " * 12, "long_caption": "a longer caption " * 60,
                           "md5_file_hash": f"{i:032x}", "md5_pil_hash": f"{i:032x}"}, separators=(",", ":"))
        content = ("png", "json", 1024, 1024, "json", "ok", None, None, meta)
        stats = (len(meta), i * 7919 & 0x7FFF_FFFF, 1_500_000, 1_700_000_000_000_000_000,
                 i * 104729 & 0x7FFF_FFFF, None, None, None, None)
        found.append((f"{i:08d}", content, stats, 1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as scratch:
        batches = []
        for number, start in enumerate(range(0, args.n, args.batch)):
            path = str(Path(scratch) / f"task-{number:07d}.sqlite")
            count = min(args.batch, args.n - start)
            written, json_bytes = write_scratch(path, rows(start, count))
            batches.append(ScratchBatch(path, count, written, count, json_bytes))
        db = Path(scratch) / "index.sqlite"
        conn = store.connect(db)
        dataset = store.ensure_dataset(conn, "bench", Path(scratch) / "data")
        defer_derived(conn)  # as a first run does
        recorder = Recorder(conn, dataset)
        started, cpu = time.perf_counter(), time.process_time()
        with unsynced_load(conn):  # as bulk.bulk_load does; its end waits for the disk, and is timed
            for batch in batches:
                recorder.record_scratch(batch, fresh=True)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        conn.close()
        rate = args.n / seconds
        print(f"writer alone: {args.n:,} samples in {seconds:.2f} s = {rate:,.0f} samples/s"
              f" ({rate / TARGET:.2f}x the {TARGET:,}/s target); database {db.stat().st_size / 1e6:,.0f} MB;"
              f" writer CPU {cpu:.2f} s (on a busy machine the wall time waits for it)")
    sys.exit(0)


if __name__ == "__main__":
    main()
