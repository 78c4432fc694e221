#!/usr/bin/env python3
"""Benchmark `indexer watch` against a one-shot `indexer index` of the same files.

Generates N pairs into a staging temp folder, runs `indexer index` on it (the baseline), then starts
`indexer watch` on an empty folder, copies the pairs in file by file, and measures the time until
the last sample is in the database. Both commands run as subprocesses, exactly as users run them.

    python scripts/bench_watch.py [--n 10000] [--settle 2] [--keep]

Target: the wait after the copy ends <= 1.5 x the one-shot index time + the settle time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_make_sample():
    spec = importlib.util.spec_from_file_location("make_sample", HERE / "make_sample.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def indexer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "indexer", *args]


def one_shot_index(stage: Path, db: Path) -> tuple[float, int]:
    started = time.monotonic()
    result = subprocess.run(indexer_command("index", str(stage), "--db", str(db), "--json"),
                            check=True, capture_output=True, text=True)
    return time.monotonic() - started, json.loads(result.stdout)["samples"]


class WatchProcess:
    """`indexer watch --json` in a subprocess; a thread follows its batch lines."""

    def __init__(self, root: Path, db: Path, settle: float) -> None:
        self.proc = subprocess.Popen(
            indexer_command("watch", str(root), "--db", str(db), "--json", "--settle", str(settle)),
            stdout=subprocess.PIPE, text=True,
        )
        self.samples = 0
        self.events: list[dict] = []
        self.caught_up = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            if "samples" in event:
                self.samples = event["samples"]
            if event.get("reason") == "catch-up":
                self.caught_up.set()

    def wait_for_samples(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.samples < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"watch saw {self.samples} of {count} samples before giving up")
            time.sleep(0.05)
        return time.monotonic()

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self.thread.join(5)
        return code


def copy_in(stage: Path, root: Path) -> float:
    """Copy every file, one by one, in the order a user's `cp -r` would (JSON and image apart)."""
    started = time.monotonic()
    for name in sorted(os.listdir(stage)):
        shutil.copyfile(stage / name, root / name)
    return time.monotonic() - started


def database_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="pairs to copy in")
    parser.add_argument("--settle", type=float, default=2.0, help="watch --settle SECONDS")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    temp = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    try:
        stage, watched = temp / "stage", temp / "watched"
        watched.mkdir()
        made = load_make_sample().make_dataset(stage, args.n)
        files = len(os.listdir(stage))
        print(f"{args.n:,} pairs ({files:,} files; faults: "
              + ", ".join(f"{k} {v}" for k, v in sorted(made.items()) if k != "clean") + ")")

        # twice, on fresh databases, keeping the faster: a busy machine must not flatter the watcher
        runs = [one_shot_index(stage, temp / f"baseline{i}.sqlite") for i in range(2)]
        index_seconds, expected = min(runs)
        print(f"one-shot `indexer index` of the staged files: {index_seconds:.2f} s"
              f" (best of {', '.join(f'{s:.2f}' for s, _ in runs)}; {expected:,} samples)")

        watcher = WatchProcess(watched, temp / "watch.sqlite", args.settle)
        if not watcher.caught_up.wait(60):
            raise SystemExit("watch did not finish its catch-up scan")
        started = time.monotonic()
        copy_seconds = copy_in(stage, watched)
        done = watcher.wait_for_samples(expected, timeout=600)
        total = done - started
        lag = total - copy_seconds
        code = watcher.stop()
        batches = sum(e.get("event") == "batch" for e in watcher.events)
        rescans = [e["reason"] for e in watcher.events if e.get("event") == "rescan"]
        stored = database_count(temp / "watch.sqlite")

        print(f"copy in, file by file: {copy_seconds:.2f} s")
        print(f"watch: last sample indexed {total:.2f} s after the copy began, {lag:.2f} s after it ended"
              f" ({batches} batches, scans: {', '.join(rescans)}; exit {code}; {stored:,} samples stored)")
        budget = index_seconds + args.settle
        print(f"ratio (wait after the copy) / (index + settle): {lag / budget:.2f}x"
              f"   target: <= 1.5 x index + settle = {1.5 * index_seconds + args.settle:.2f} s -> "
              + ("met" if lag <= 1.5 * index_seconds + args.settle else "NOT met"))
        print(f"ratio (copy + watch) / (copy + index + settle): "
              f"{total / (copy_seconds + budget):.2f}x")
    finally:
        if args.keep:
            print(f"kept {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
