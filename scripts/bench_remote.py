#!/usr/bin/env python3
"""Index shards in a bucket in place, against downloading them whole and indexing the copy.

    python scripts/bench_remote.py [--shards 20] [--samples 250] [--image-kb 300] [--rtt-ms 20]

Serves DALLE-3-shaped shards (a ~1.5 KB JSON and an image of --image-kb per sample) from an HTTP
server with Range support on 127.0.0.1, behind a TCP proxy (also on 127.0.0.1) that delays every
chunk by half the round trip each way, then measures: `indexer index --shard-list` (wall time,
range requests and bytes a sample), a no-change rerun (object reads), and the baseline: every
shard downloaded whole through the same proxy, then `indexer index` of the local copy. Prints
ratios. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import http.server
import io
import json
import os
import random
import socket
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample import png_bytes


def delayed_proxy(target: tuple[str, int], delay_s: float) -> int:
    """A TCP proxy on 127.0.0.1 that holds every chunk delay_s before passing it on; returns its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(1 << 16):
                time.sleep(delay_s)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            server = socket.create_connection(target)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


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


def range_server(folder: Path) -> int:
    """A threaded HTTP server on 127.0.0.1 that answers HEAD and single-range GETs with pread
    (moto keeps objects in memory and copies a whole object for every range read: with shards of
    tens of MB it, not the client, would be what is measured). Returns its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = folder / self.path.lstrip("/")
            st = path.stat()
            first, last, status = 0, st.st_size - 1, 200
            if self.command == "GET" and self.headers.get("Range"):
                start, _, stop = self.headers["Range"].removeprefix("bytes=").partition("-")
                first, last, status = int(start), min(int(stop), st.st_size - 1), 206
            self.send_response(status)
            length = st.st_size if self.command == "HEAD" else last - first + 1
            self.send_header("Content-Length", str(length))
            self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            self.end_headers()
            if self.command == "GET":
                with open(path, "rb") as handle:
                    self.wfile.write(os.pread(handle.fileno(), last - first + 1, first))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--samples", type=int, default=250)
    parser.add_argument("--image-kb", type=int, default=300)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=None,
                        help="objects read at once (default: indexer's own)")
    args = parser.parse_args()
    from indexer.ingest.index import index_root

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as scratch:
        served = Path(scratch) / "served"
        served.mkdir()
        rng = random.Random(7)
        total = 0
        for number in range(args.shards):
            data = shard_bytes(number, args.samples, args.image_kb, rng)
            total += len(data)
            (served / f"{number:04d}.tar").write_bytes(data)
        port = delayed_proxy(("127.0.0.1", range_server(served)), args.rtt_ms / 2000)
        urls = Path(scratch) / "urls.txt"
        urls.write_text("".join(f"http://127.0.0.1:{port}/{number:04d}.tar\n"
                                for number in range(args.shards)))
        samples = args.shards * args.samples
        print(f"{args.shards} shards x {args.samples} samples, {total / 1e6:,.0f} MB served on 127.0.0.1,"
              f" +{args.rtt_ms:g} ms round trip through a proxy")
        db = Path(scratch) / "remote.sqlite"
        started = time.perf_counter()
        summary = index_root(db, "", shard_list=urls, workers=args.workers)
        in_place = time.perf_counter() - started
        requests, fetched = summary["shards"]["requests"], summary["shards"]["fetched_bytes"]
        print(f"in place: {in_place:6.2f} s, {requests / samples:.2f} requests and"
              f" {fetched / samples / 1024:.2f} KB a sample ({fetched / 1e6:.1f} MB fetched,"
              f" {fetched / total:.2%} of the shards); one shard's walk alone:"
              f" {args.samples * args.rtt_ms / 1000:.1f} s of round trips")
        started = time.perf_counter()
        again = index_root(db, "", shard_list=urls, workers=args.workers)
        print(f"no-change rerun: {time.perf_counter() - started:6.2f} s,"
              f" {again['shards']['requests']} object reads, {again['files_read']} files read")
        started = time.perf_counter()
        local = Path(scratch) / "copy"
        local.mkdir()
        for number in range(args.shards):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{number:04d}.tar") as response:
                (local / f"{number:04d}.tar").write_bytes(response.read())
        downloaded = time.perf_counter() - started
        index_root(Path(scratch) / "local.sqlite", local)
        whole = time.perf_counter() - started
        print(f"download whole + index the copy: {whole:6.2f} s ({downloaded:.2f} s downloading"
              f" {total / 1e6:,.0f} MB)")
        print(f"ratio: in place is {whole / in_place:.1f}x faster and fetches {total / max(fetched, 1):.0f}x"
              " fewer bytes (targets: <= 3 KB and <= 1.2 requests a sample; 0 object reads on a rerun)")


if __name__ == "__main__":
    main()
