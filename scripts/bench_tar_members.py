#!/usr/bin/env python3
"""Benchmark `indexer.ingest.tar_members.iter_members` against `tarfile` iteration on two kinds of shard.

Builds, in a temp folder:
  tiny:  TINY webdataset pairs (`.json` ~150 B + `.png` ~600 B): per-member overhead dominates
  large: LARGE pairs (`.json` + a ~300 KB `.jpg`): skipping data dominates
each twice: integer mtimes (one ustar header a member) and float mtimes (tarfile's PAX format then
writes a pax header before every member, as writers that stamp `time.time()` do).
Both readers read every JSON whole and skip image data (tarfile: `extractfile(...).read()` of the
JSONs while iterating; iter_members: `want_data` -1 for JSON, 0 otherwise); a third row reads the
first 64 KiB of each image as well. Best of ROUNDS from a warm page cache. "read/member" is the
bytes the process asked the kernel for (/proc/self/io rchar), per member.

    python scripts/bench_tar_members.py [--tiny 10000] [--large 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from indexer.ingest.tar_members import iter_members

IMAGE_HEAD = 64 << 10


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def build(path: Path, pairs: int, image_size: int, float_mtime: bool) -> Path:
    caption = b'{"short_caption": "a photo of a cat on a mat", "width": 1024, "height": 768, "source": "x"}'
    with tarfile.open(path, "w") as tar:
        for key in range(pairs):
            for ext, data in ((".json", caption), (".png" if image_size < 4096 else ".jpg",
                                                   bytes([key % 251]) * image_size)):
                info = tarfile.TarInfo(f"{key:08d}{ext}")
                info.size = len(data)
                info.mtime = 1_700_000_000.5 + key if float_mtime else 1_700_000_000 + key
                tar.addfile(info, io.BytesIO(data))
    return path


def with_tarfile(path: Path) -> int:
    count = 0
    with tarfile.open(path) as tar:
        for info in tar:
            if info.name.endswith(".json"):
                tar.extractfile(info).read()  # type: ignore[union-attr]
            count += 1
    return count


def with_iter_members(path: Path, image_head: int = 0) -> int:
    def want(name: str) -> int:
        return -1 if name.endswith(".json") else image_head

    return sum(1 for _ in iter_members(path, want_data=want))


def measure(reader: Callable[[Path], int], path: Path, rounds: int) -> tuple[float, int, int]:
    """(best seconds, members, bytes read in the best round)."""
    best = (float("inf"), 0, 0)
    for _ in range(rounds):
        before, started = rchar(), time.perf_counter()
        members = reader(path)
        seconds, read = time.perf_counter() - started, rchar() - before
        best = min(best, (seconds, members, read))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=int, default=10_000, help="pairs in the tiny-member shard")
    parser.add_argument("--large", type=int, default=200, help="pairs in the large-image shard")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    readers: list[tuple[str, Callable[[Path], int]]] = [
        ("tarfile", with_tarfile),
        ("iter_members", with_iter_members),
        ("iter_members +64KiB heads", lambda path: with_iter_members(path, IMAGE_HEAD)),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-tar-members-") as work:
        shards = []
        for label, pairs, image_size in (("tiny", args.tiny, 600), ("large", args.large, 300_000)):
            for float_mtime in (False, True):
                name = f"{label}{'-pax' if float_mtime else ''}"
                shards.append((name, build(Path(work) / f"{name}.tar", pairs, image_size, float_mtime)))
        print(f"{'shard':<11} {'reader':<26} {'members':>8} {'members/s':>10} {'MB/s':>8} "
              f"{'us/member':>9} {'read/member':>12}")
        for name, path in shards:
            size = path.stat().st_size
            for label, reader in readers:
                seconds, members, read = measure(reader, path, args.rounds)
                print(f"{name:<11} {label:<26} {members:>8} {members / seconds:>10,.0f} "
                      f"{size / seconds / 1e6:>8,.0f} {seconds / members * 1e6:>9.1f} "
                      f"{read / members:>12,.0f}")
            print(f"{'':<11} ({size / 1e6:.1f} MB, {size / members:,.0f} bytes a member)")


if __name__ == "__main__":
    main()
