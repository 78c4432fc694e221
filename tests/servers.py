"""Real servers the remote tests start on loopback: moto's S3 server, and an HTTP server with Range
support whose faults a test sets (a 503 burst, a connection reset mid-body, a truncated body)."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import json
import ssl
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
def hub_server(repo: str, folder: Path, *, tls: tuple[Path, Path] | None = None,
               port: int = 0) -> Iterator[tuple[str, list[str]]]:
    """A stand-in for the Hub endpoints a dataset repo is listed and read through, serving folder's
    files as the repo's (revision `main` only); yields (endpoint URL, the requests seen).

    huggingface_hub's HfFileSystem (as its source and a run against it show) calls the repo's info
    (`GET /api/datasets/REPO[/revision/REV]`), its tree (`GET /api/datasets/REPO/tree/REV/PATH?
    recursive=true`, one page) and reads file bytes by range (`GET /datasets/REPO/resolve/REV/PATH`).
    webshart 0.6.0 also needs the info's `siblings` (`rfilename`, `size`: its shard discovery), a
    `HEAD` of each resolve URL (its Xet probe: no `x-xet-hash` header means plain range reads) and a
    whole-file `GET` without Range (its shard cache downloads a shard whole). With `tls` (a cert
    and key file) the server speaks HTTPS, so it can stand in for https://huggingface.co itself."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            seen.append(f"{self.command} {self.path} {self.headers.get('Range', '')}")
            path = self.path.split("?", 1)[0]
            api = f"/api/datasets/{repo}"
            if path == api or path.startswith(f"{api}/revision/"):
                self._json({"id": repo, "sha": "0" * 40, "siblings": _siblings(folder)})
            elif path.startswith(f"{api}/tree/"):
                under = path.removeprefix(f"{api}/tree/").partition("/")[2]
                self._json(_tree(folder, under))
            elif path.startswith(f"/datasets/{repo}/resolve/"):
                self._file(folder / path.removeprefix(f"/datasets/{repo}/resolve/").partition("/")[2])
            else:
                self._reply(404, b"{}")

        def _json(self, value: object) -> None:
            self._reply(200, json.dumps(value).encode(), [("Content-Type", "application/json")])

        def _file(self, file: Path) -> None:
            if not file.is_file():
                self._reply(404, b"{}")
                return
            data = file.read_bytes()
            wanted = self.headers.get("Range")
            if not wanted:
                self._reply(200, data)
                return
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, stop = int(first), min(int(last or len(data) - 1), len(data) - 1)
            self._reply(206, data[start:stop + 1], [("Content-Range", f"bytes {start}-{stop}/{len(data)}")])

        def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _siblings(folder: Path) -> list[dict]:
    """The repo info's file list, as the Hub gives it (every file, paths from the repo's root)."""
    return [{"rfilename": file.relative_to(folder).as_posix(), "size": file.stat().st_size}
            for file in sorted(folder.rglob("*")) if file.is_file()]


def _tree(folder: Path, under: str) -> list[dict]:
    """The Hub's tree entries for the files below `under`, with their blob and LFS ids."""
    entries = []
    for file in sorted((folder / under).rglob("*")):
        rel = file.relative_to(folder).as_posix()
        if file.is_dir():
            entries.append({"type": "directory", "oid": "d" * 40, "size": 0, "path": rel})
            continue
        data = file.read_bytes()
        lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data),
                        "path": rel, "lfs": lfs})
    return entries


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
