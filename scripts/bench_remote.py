#!/usr/bin/env python3
"""Index shards in a bucket in place, against downloading them whole and indexing the copy.

    python scripts/bench_remote.py [--shards 20] [--samples 250] [--image-kb 300] [--rtt-ms 20]

Starts moto's S3 server on 127.0.0.1 behind a TCP proxy (also on 127.0.0.1) that delays every
chunk by half the round trip each way, uploads DALLE-3-shaped shards (a ~1.5 KB JSON and an image
of --image-kb per sample), then measures: `indexer index s3://...` (wall time, range requests and
bytes a sample), a no-change rerun (object reads), and the baseline: every shard downloaded whole
through the same proxy, then `indexer index` of the local copy. Prints ratios. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample import png_bytes

os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--samples", type=int, default=250)
    parser.add_argument("--image-kb", type=int, default=300)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    args = parser.parse_args()
    # moto in a process of its own: in this one its request handling would share the GIL with the
    # readers it serves
    host, port = "127.0.0.1", free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(host, port)
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bench")
    rng = random.Random(7)
    total = 0
    for number in range(args.shards):
        data = shard_bytes(number, args.samples, args.image_kb, rng)
        total += len(data)
        fs.pipe(f"bench/data/{number:04d}.tar", data)
    samples = args.shards * args.samples
    print(f"{args.shards} shards x {args.samples} samples, {total / 1e6:,.0f} MB in moto on 127.0.0.1,"
          f" +{args.rtt_ms:g} ms round trip through a proxy")
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{delayed_proxy((host, port), args.rtt_ms / 2000)}"
    from indexer.ingest.index import index_root

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as scratch:
        db = Path(scratch) / "remote.sqlite"
        started = time.perf_counter()
        summary = index_root(db, "s3://bench/data")
        in_place = time.perf_counter() - started
        requests, fetched = summary["shards"]["requests"], summary["shards"]["fetched_bytes"]
        print(f"in place: {in_place:6.2f} s, {requests / samples:.2f} requests and"
              f" {fetched / samples / 1024:.2f} KB a sample ({fetched / 1e6:.1f} MB fetched,"
              f" {fetched / total:.2%} of the shards)")
        started = time.perf_counter()
        again = index_root(db, "s3://bench/data")
        print(f"no-change rerun: {time.perf_counter() - started:6.2f} s,"
              f" {again['shards']['requests']} object reads, {again['files_read']} files read")
        started = time.perf_counter()
        local = Path(scratch) / "copy"
        local.mkdir()
        remote_fs = s3fs.S3FileSystem(skip_instance_cache=True)
        remote_fs.get("bench/data/", str(local), recursive=True)
        downloaded = time.perf_counter() - started
        index_root(Path(scratch) / "local.sqlite", local)
        whole = time.perf_counter() - started
        print(f"download whole + index the copy: {whole:6.2f} s ({downloaded:.2f} s downloading"
              f" {total / 1e6:,.0f} MB)")
        print(f"ratio: in place is {whole / in_place:.1f}x faster and fetches {total / max(fetched, 1):.0f}x"
              " fewer bytes (targets: <= 3 KB and <= 1.2 requests a sample; 0 object reads on a rerun)")
    server.terminate()
    server.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(host: str, port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"moto's server did not start on {host}:{port}")


if __name__ == "__main__":
    main()
