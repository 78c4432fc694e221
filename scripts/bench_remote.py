#!/usr/bin/env python3
"""Index shards behind a slow link in place: one shard alone, all of them, with webshart indexes
beside them, against downloading them whole and indexing the copy.

    python scripts/bench_remote.py [--shards 20] [--samples 200] [--image-kb 300] [--rtt-ms 20]
                                   [--mbps 100] [--workers N]

Serves DALLE-3-shaped shards (a ~1.3 KB JSON and an image of --image-kb per sample) over HTTP with
Range support from a process of its own on 127.0.0.1 that models the link: each reply leaves one
round trip after its request arrived, at --mbps MB/s per connection (so the server is not what is
measured: it answers from one asyncio loop, without sharing the indexer's GIL). Then measures
`indexer index --shard-list`: one shard alone (the bound a run of concurrent shards can reach),
all the shards (wall time, range requests and bytes a sample), a no-change rerun (object reads),
the same shards with the webshart indexes `export webshart` writes beside them (listed in the
shard list too; the rows must be identical), and the baseline: every shard downloaded whole
through the same link (8 at once) and the copy indexed. Prints ratios. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import email.utils
import io
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample import png_bytes

DOWNLOADS_AT_ONCE = 8  # huggingface-cli's default max_workers
CHUNK = 1 << 20
RUN_SPECIFIC = {"samples": {"id", "data_version"}, "tar_shards": {"indexed_at", "requests", "bytes_read"}}


def shard_bytes(number: int, samples: int, image_kb: int, rng: random.Random) -> bytes:
    head = png_bytes(1024, 1024)
    image = head + rng.randbytes(max(0, image_kb * 1024 - len(head)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(samples):
            key = f"{number:04d}{i:05d}"
            sidecar = json.dumps({"image_name": f"{key}.png", "width": 1024, "height": 1024,
                                  "source": "bench", "short_caption": "a caption " * 8,
                                  "long_caption": "a longer caption " * 60,
                                  "md5_file_hash": "0" * 32}).encode()
            for name, data in ((f"{key}.json", sidecar), (f"{key}.png", image)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- the remote side: a link model in a process of its own ----------------------------------------


def serve(folder: Path, rtt_s: float, bytes_per_s: float) -> None:
    """HTTP/1.1 HEAD and GET (one range or whole) of folder's files on 127.0.0.1, each reply
    starting rtt_s after its request arrived and paced at bytes_per_s a connection. Prints the
    port, then serves until stdin closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        try:
            while True:
                request = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                due = loop.time() + rtt_s
                method, target, _ = request[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":")
                                                                         for line in request[1:] if line)}
                head, path, first, last = reply(folder, method, target.split("?", 1)[0], headers)
                for at in range(first, last + 1, CHUNK) if path else ():
                    data = os.pread(path_fd(path), min(CHUNK, last + 1 - at), at)
                    due += len(data) / bytes_per_s
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    writer.write(head + data)
                    head = b""
                    await writer.drain()
                if head:
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    writer.write(head)
                    await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        writer.close()

    fds: dict[Path, int] = {}

    def path_fd(path: Path) -> int:
        if path not in fds:
            fds[path] = os.open(path, os.O_RDONLY)
        return fds[path]

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
        await server.serve_forever()

    asyncio.run(main())


def reply(folder: Path, method: str, target: str,
          headers: dict[str, str]) -> tuple[bytes, Path | None, int, int]:
    """(status line and headers, the file whose bytes first..last follow, or None)."""
    path = folder / target.lstrip("/")
    if ".." in target or not path.is_file():
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", None, 0, -1
    st = path.stat()
    first, last, status = 0, st.st_size - 1, "200 OK"
    if method == "GET" and headers.get("range", "").startswith("bytes="):
        start, _, stop = headers["range"].removeprefix("bytes=").partition("-")
        first, last, status = int(start), min(int(stop or last), last), "206 Partial Content"
    length = st.st_size if method == "HEAD" else last - first + 1
    head = (f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\n"
            f"ETag: \"{st.st_size:x}-{st.st_mtime_ns:x}\"\r\n"
            f"Last-Modified: {email.utils.formatdate(st.st_mtime, usegmt=True)}\r\n\r\n").encode()
    return head, (path if method == "GET" else None), first, last


def start_link(folder: Path, rtt_ms: float, mbps: float) -> tuple[subprocess.Popen, int]:
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(folder), "--rtt-ms", str(rtt_ms),
                              "--mbps", str(mbps)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return child, int(child.stdout.readline())


# --- the measurements -----------------------------------------------------------------------------


def table_rows(db: Path, table: str) -> list[tuple]:
    """Every row of the table, without the columns that differ from run to run."""
    conn = sqlite3.connect(db)
    try:
        columns = [name for (name,) in conn.execute(f"SELECT name FROM pragma_table_xinfo('{table}')")
                   if name not in RUN_SPECIFIC[table]]
        return conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY 1, 2, 3").fetchall()
    finally:
        conn.close()


def timed_index(db: Path, urls: list[str], list_file: Path, workers: int | None) -> tuple[float, dict]:
    """Wall time and summary of one `indexer index --shard-list`, with the CPU time this process
    spent in it (summary["cpu_s"]: the indexer's, the link being another process)."""
    from indexer.ingest.index import index_root

    list_file.write_text("".join(f"{url}\n" for url in urls))
    started, cpu = time.perf_counter(), time.process_time()
    summary = index_root(db, "", shard_list=list_file, workers=workers)
    summary["cpu_s"] = time.process_time() - cpu
    return time.perf_counter() - started, summary


def per_sample(summary: dict, samples: int) -> str:
    shards = summary["shards"]
    return (f"{shards['requests'] / samples:.2f} requests and"
            f" {shards['fetched_bytes'] / samples / 1024:.2f} KB a sample, indexer CPU"
            f" {summary['cpu_s'] / samples * 1e6:.0f} us a sample")


def download_and_index(base: str, names: list[str], folder: Path, db: Path) -> tuple[float, float]:
    from indexer.ingest.index import index_root

    folder.mkdir()
    started = time.perf_counter()

    def download(name: str) -> None:
        with urllib.request.urlopen(f"{base}/{name}") as response:
            (folder / name).write_bytes(response.read())

    with cf.ThreadPoolExecutor(DOWNLOADS_AT_ONCE) as pool:
        list(pool.map(download, names))
    downloaded = time.perf_counter() - started
    index_root(db, folder)
    return time.perf_counter() - started, downloaded


def write_indexes(served: Path, db: Path) -> None:
    """The webshart index of each shard beside it, as `export webshart` writes them."""
    from indexer.export.webshart import export_webshart
    from indexer.ingest.index import index_root

    index_root(db, served)
    export_webshart(db)


def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as scratch_name:
        scratch = Path(scratch_name)
        served = scratch / "served"
        served.mkdir()
        rng = random.Random(7)
        total = 0
        names = [f"{number:04d}.tar" for number in range(args.shards)]
        for number, name in enumerate(names):
            data = shard_bytes(number, args.samples, args.image_kb, rng)
            total += len(data)
            (served / name).write_bytes(data)
        child, port = start_link(served, args.rtt_ms, args.mbps)
        try:
            measure(args, scratch, served, names, total, f"http://127.0.0.1:{port}")
        finally:
            child.stdin.close()
            child.wait(timeout=10)


def measure(args: argparse.Namespace, scratch: Path, served: Path, names: list[str], total: int,
            base: str) -> None:
    samples = args.shards * args.samples
    urls = [f"{base}/{name}" for name in names]
    print(f"{args.shards} shards x {args.samples} samples, {total / 1e6:,.0f} MB served on 127.0.0.1,"
          f" +{args.rtt_ms:g} ms round trip, {args.mbps:g} MB/s a connection")
    one, _ = timed_index(scratch / "one.sqlite", urls[:1], scratch / "one.txt", args.workers)
    plain, summary = timed_index(scratch / "plain.sqlite", urls, scratch / "plain.txt", args.workers)
    print(f"one shard's walk alone: {one:6.2f} s; all {args.shards} shards: {plain:6.2f} s"
          f" ({plain / one:.2f}x the one-shard bound)")
    print(f"without index: {plain:6.2f} s, {per_sample(summary, samples)}"
          f" ({summary['shards']['fetched_bytes'] / total:.2%} of the shards)")
    from indexer.ingest.index import index_root

    started = time.perf_counter()
    again = index_root(scratch / "plain.sqlite", "", shard_list=scratch / "plain.txt", workers=args.workers)
    print(f"no-change rerun: {time.perf_counter() - started:6.2f} s, {again['shards']['requests']} object"
          f" reads, {again['files_read']} files read")
    write_indexes(served, scratch / "served.sqlite")
    indexes = [f"{base}/{name[:-4]}.json" for name in names]
    indexed, with_index = timed_index(scratch / "indexed.sqlite", urls + indexes, scratch / "indexed.txt",
                                      args.workers)
    same = all(table_rows(scratch / "indexed.sqlite", table) == table_rows(scratch / "plain.sqlite", table)
               for table in RUN_SPECIFIC)
    print(f"with webshart indexes: {indexed:6.2f} s, {per_sample(with_index, samples)} (the indexes"
          f" included); {plain / indexed:.1f}x faster than without (target >= 5x); rows identical: {same}")
    whole, downloaded = download_and_index(base, names, scratch / "copy", scratch / "local.sqlite")
    print(f"download whole ({DOWNLOADS_AT_ONCE} at once) + index the copy: {whole:6.2f} s ({downloaded:.2f} s"
          f" downloading {total / 1e6:,.0f} MB)")
    print(f"ratios: in place {whole / plain:.1f}x, with indexes {whole / indexed:.1f}x faster than"
          f" downloading; {total / max(summary['shards']['fetched_bytes'], 1):.0f}x fewer bytes (targets:"
          " <= 3 KB and <= 1.2 requests a sample; 0 object reads on a rerun)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--image-kb", type=int, default=300)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--mbps", type=float, default=100.0, help="MB/s a connection")
    parser.add_argument("--workers", type=int, default=None,
                        help="objects read at once (default: indexer's own)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the link model's own process
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.rtt_ms / 1000, args.mbps * 1e6)
    else:
        bench(args)


if __name__ == "__main__":
    main()
