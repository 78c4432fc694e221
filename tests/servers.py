"""Real servers the remote tests start on loopback: moto's S3 server, and an HTTP server with Range
support whose faults a test sets (a 503 burst, a connection reset mid-body, a truncated body)."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Faults:
    """What the HTTP server does wrong next: each count is used up one request at a time."""

    unavailable: int = 0  # answer 503 to this many requests
    resets: int = 0  # send half a body and close the connection, this many times
    truncate_to: dict[str, int] = field(default_factory=dict)  # serve only the first N bytes of a file
    requests: list[str] = field(default_factory=list)  # "METHOD /path range" of every request


@contextmanager
def range_server(folder: Path) -> Iterator[tuple[str, Faults]]:
    """Serve folder on 127.0.0.1 with HEAD, GET and single-range GET (206), ETag and
    Last-Modified; yields (base URL, faults)."""
    faults = Faults()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            faults.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}")
            if faults.unavailable:
                faults.unavailable -= 1
                self._reply(503, b"busy")
                return
            path = folder / self.path.lstrip("/").split("?", 1)[0]
            if not path.is_file():
                self._reply(404, b"not found")
                return
            data = path.read_bytes()
            if path.name in faults.truncate_to:
                data = data[: faults.truncate_to[path.name]]
            status, part = 200, data
            wanted = self.headers.get("Range")
            if wanted and body:
                start, _, stop = wanted.removeprefix("bytes=").partition("-")
                first, last = int(start), min(int(stop), len(data) - 1)
                if first >= len(data):
                    self._reply(416, b"")
                    return
                status, part = 206, data[first:last + 1]
            self.send_response(status)
            self.send_header("Content-Length", str(len(part) if body else len(data)))
            self.send_header("ETag", '"' + hashlib.md5(data).hexdigest() + '"')
            self.send_header("Last-Modified", email.utils.formatdate(path.stat().st_mtime, usegmt=True))
            self.end_headers()
            if not body:
                return
            if faults.resets and len(part) > 1:
                faults.resets -= 1
                self.wfile.write(part[: len(part) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(part)

        def _reply(self, status: int, text: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(text)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
