#!/usr/bin/env python3
"""Benchmark the exports against the seed recipe, same run, same rows; prints ratios.

1. N samples (default 100k) from make_sample.make_dataset in a temp folder, indexed with index_root.
   - seed compile.py (glob + json.load + pandas to_parquet)  vs  `export parquet`, then a no-change rerun.
   - seed extract-captions.py (json.load + write every .txt)  vs  the first `export captions`, then a
     no-change rerun of each.
2. BIG rows (default 1M) synthesised straight into a database (writing 1M sample files takes too
   long here): the seed's DataFrame + to_parquet step fed from the same rows vs `export parquet`.
Each timed step runs in its own subprocess, so its peak RSS is its own.

    python scripts/bench_export.py [--n 100000] [--big 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The seed's compile.py, pointed at ROOT; its json.load would stop at the first truncated JSON,
# so bad files are skipped as the seed intends for samples without width.
SEED_COMPILE = """
import glob, json, os, sys
import pandas as pd
root, out = sys.argv[1], sys.argv[2]
data = []
for file_path in glob.glob(os.path.join(root, '*.json')):
    with open(file_path, 'r') as file:
        try:
            content = json.load(file)
        except ValueError:
            continue
        if "width" not in content:
            continue
        data.append({'width': int(content['width']), 'height': int(content['height']),
                     'caption': content['short_caption'], 'filename': content['image_name']})
df = pd.DataFrame(data, columns=['width', 'height', 'caption', 'filename'])
df.to_parquet(out, index=False)
"""

# The seed's extract-captions.py; the only change: names with a '/' (the hostile image_name fault)
# are skipped, because the seed would write them outside the dataset.
SEED_CAPTIONS = """
import glob, json, os, sys
root = sys.argv[1]
for file_path in glob.glob(os.path.join(root, '*.json')):
    with open(file_path, 'r') as file:
        try:
            content = json.load(file)
        except ValueError:
            continue
        if "width" not in content or "/" in content['image_name']:
            continue
        text_path = os.path.join(root, os.path.splitext(content['image_name'])[0] + ".txt")
        with open(text_path, 'w') as text_file:
            text_file.write(content['short_caption'])
"""

# The seed's DataFrame + to_parquet step, fed from the same rows as `export parquet` (BIG case).
SEED_FROM_DB = """
import json, sqlite3, sys
import pandas as pd
db, out = sys.argv[1], sys.argv[2]
data = []
for (meta,) in sqlite3.connect(db).execute("SELECT meta FROM samples ORDER BY key"):
    content = json.loads(meta)
    data.append({'width': int(content['width']), 'height': int(content['height']),
                 'caption': content['short_caption'], 'filename': content['image_name']})
df = pd.DataFrame(data, columns=['width', 'height', 'caption', 'filename'])
df.to_parquet(out, index=False)
"""

EXPORT_PARQUET = """
import sys
from indexer.export.parquet import export_parquet
summary = export_parquet(sys.argv[1], sys.argv[2])
print("rows", summary["rows"], "up_to_date", summary["up_to_date"], file=sys.stderr)
"""

EXPORT_CAPTIONS = """
import sys
from indexer.export.captions import export_captions
s = export_captions(sys.argv[1])
print("written", s["written"], "unchanged", s["unchanged"], "adopted", s["adopted"], file=sys.stderr)
"""

# Peak RSS is VmHWM (per address space, so fresh after exec); ru_maxrss would keep the parent's.
TIMED = """
import sys, time
code = sys.argv[1]
sys.argv = ["step", *sys.argv[2:]]
started = time.perf_counter()
exec(compile(code, "step", "exec"), {"__name__": "__main__"})
seconds = time.perf_counter() - started
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(f"{seconds:.3f} {hwm}")
"""


def timed(code: str, *args: str) -> tuple[float, int, str]:
    """Run code in a fresh interpreter: (seconds after imports-at-start, peak RSS MiB, its stderr)."""
    result = subprocess.run([sys.executable, "-c", TIMED, code, *args], capture_output=True, text=True,
                            check=True)
    seconds, rss_kib = result.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(rss_kib) // 1024, result.stderr.strip()


def line(label: str, seconds: float, rss: int, note: str = "", base: float | None = None) -> None:
    ratio = f"  {base / seconds:6.2f}x vs seed" if base else ""
    print(f"  {label:<44} {seconds:8.2f} s  {rss:5d} MiB{ratio}  {note}")


def bench_files(work: Path, n: int) -> None:
    sys.path.insert(0, str(HERE))
    from make_sample import make_dataset

    from indexer.ingest.index import index_root

    root, db = work / "data", work / "index.sqlite"
    started = time.perf_counter()
    make_dataset(root, n, faults=0.03, seed=1)
    summary = index_root(db, root)
    print(f"{n:,} samples generated and indexed in {time.perf_counter() - started:.1f} s "
          f"({summary['samples']:,} samples, problems {summary['problems']})")
    print("parquet:")
    compare_parquet("seed compile.py (pandas to_parquet)", SEED_COMPILE,
                    [str(root), str(work / "seed.parquet")], db, work / "ours.parquet")
    print("captions:")
    seed_s, seed_rss, _ = timed(SEED_CAPTIONS, str(root))
    line("seed extract-captions.py (first run)", seed_s, seed_rss)
    rerun_s, rerun_rss, _ = timed(SEED_CAPTIONS, str(root))
    line("seed extract-captions.py (rerun: rewrites all)", rerun_s, rerun_rss)
    for txt in root.glob("*.txt"):
        txt.unlink()
    ours_s, ours_rss, note = timed(EXPORT_CAPTIONS, str(db))
    line("export captions (first run)", ours_s, ours_rss, note, seed_s)
    again_s, again_rss, note = timed(EXPORT_CAPTIONS, str(db))
    line("export captions, no-change rerun", again_s, again_rss, note, rerun_s)


def synthesise_db(db: Path, rows: int) -> None:
    """Rows as `index` would store them, without writing the sample files."""
    sys.path.insert(0, str(HERE))
    from make_sample import SIZE_WEIGHTS, SIZES, sample_json

    from indexer import store

    rng = random.Random(7)
    conn = store.connect(db)
    with store.transaction(conn):
        conn.execute("INSERT INTO datasets (id, root, created_ns, data_version) VALUES ('big', ?, 0, 1)",
                     (str(db.parent / "data"),))
    batch = []
    for number in range(rows):
        key = f"{number:08d}_{rng.getrandbits(32):08x}"
        size = rng.choices(SIZES, weights=SIZE_WEIGHTS)[0]
        meta = json.dumps(sample_json(rng, key, "png", size), ensure_ascii=False, separators=(",", ":"))
        batch.append(("big", key, "png", "json", size[0], size[1], "json", "ok", meta, 1))
        if len(batch) == 50_000:
            _insert(conn, batch)
            batch = []
    _insert(conn, batch)
    conn.close()


def _insert(conn, batch: list[tuple]) -> None:
    from indexer import store

    with store.transaction(conn):
        conn.executemany(
            "INSERT INTO samples (dataset, key, image_ext, json_ext, width, height, size_from, status, meta,"
            " data_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)


def bench_big(work: Path, rows: int) -> None:
    db = work / "big.sqlite"
    started = time.perf_counter()
    synthesise_db(db, rows)
    print(f"{rows:,} rows synthesised into a database in {time.perf_counter() - started:.1f} s "
          "(no sample files: generating them would take too long here)")
    print("parquet:")
    compare_parquet("seed DataFrame + to_parquet (same rows)", SEED_FROM_DB,
                    [str(db), str(work / "big-seed.parquet")], db, work / "big.parquet")


def compare_parquet(seed_label: str, seed_script, seed_args: list[str], db: Path, out: Path) -> None:
    """The seed's Parquet step, then `export parquet` twice (first run, no-change rerun)."""
    seed_s, seed_rss, _ = timed(seed_script, *seed_args)
    line(seed_label, seed_s, seed_rss)
    for label in ("export parquet", "export parquet, no-change rerun"):
        ours_s, ours_rss, note = timed(EXPORT_PARQUET, str(db), str(out))
        line(label, ours_s, ours_rss, note, seed_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="sample files to generate")
    parser.add_argument("--big", type=int, default=1_000_000, help="rows for the big parquet case (0: skip)")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, work folder {work}")
    try:
        if args.n:
            bench_files(work, args.n)
        if args.big:
            bench_big(work, args.big)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
