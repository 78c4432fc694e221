#!/usr/bin/env python3
"""Build tests/fixtures/schema_vN.tar.gz: a database written by a released indexer, with its samples.

tests/test_schema_upgrade.py opens every such fixture with the current code and checks that the
upgrade re-reads no file and keeps every sample. A fixture must be written by the released code it
stands for, so build it from that release's tree (the tree only has to hold `indexer/` and
`schema/`; this script need not exist there):

    mkdir /tmp/indexer-v6 && git archive 514e30a indexer schema | tar -x -C /tmp/indexer-v6
    .venv/bin/python scripts/make_schema_fixture.py /tmp/indexer-v6 tests/fixtures/schema_v6.tar.gz \
        --commit 514e30a                            # the last commit with schema version 6

The archive holds `index.sqlite`, `data/` (the sample files, mtimes as recorded) and
`fixture.json` (schema version, commit, sample count). The samples come from this file's own
generator with fixed content, not from scripts/make_sample.py, so changing that script never
changes what a fixture holds. They include the faults the index records: truncated, empty,
non-object and non-UTF-8 JSON, missing and string sizes, a JSON without image, an image without
JSON, an unreadable image header, a hostile `image_name`, two images for one key.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

DATASET = "fixture"
BASE_MTIME_NS = 1_700_000_000 * 10**9  # whole seconds, so a tar keeps them exactly
RACY_WAIT_S = 3.5  # files younger than 3 s at scan time are marked racy and re-read: wait them out

INDEX_TWICE = r"""
import json, sys
import indexer
from indexer.index import index_root
db, root, tree = sys.argv[1:4]
assert indexer.__file__.startswith(tree), f"imported {indexer.__file__}, not the tree's code"
first = index_root(db, root, dataset_id="fixture", workers=1)
second = index_root(db, root, workers=1)
print(json.dumps({"first": first, "second": second}))
"""


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = (b"\x00" + b"\x80" * width) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = (b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
            + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01")
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def webp(width: int, height: int) -> bytes:
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (
        (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))
    return b"RIFF" + struct.pack("<I", len(body)) + body


IMAGES = {"png": png, "PNG": png, "jpg": jpeg, "jpeg": jpeg, "webp": webp}
WORDS = ["red", "dragon", "stone", "castle", "neon", "city", "café", "jardín", "東京", "tiny", "robot",
         "golden", "light", "ocean"]


def record(i: int, key: str, ext: str, size: tuple[int, int]) -> dict:
    words = [WORDS[(i * 7 + j) % len(WORDS)] for j in range(6 + i % 5)]
    return {
        "image_name": f"{key.rsplit('/', 1)[-1]}.{ext}",
        "md5_file_hash": f"{i % 25:032x}",  # samples 0 and 25 share one: a duplicate group
        "md5_pil_hash": f"{i % 25 + 100:032x}",
        "short_caption": " ".join(words).capitalize() + ".",
        "long_caption": " ".join(words * 3) + ".",
        "width": size[0],
        "height": size[1],
        "source": ["twitter", "reddit_rdalle2", "laion_share_dalle3"][i % 3],
    }


def samples() -> dict[str, bytes]:
    """Relative path -> content: 26 clean pairs and one of each fault."""
    files: dict[str, bytes] = {}
    exts = ["png", "jpg", "jpeg", "webp", "PNG"]
    for i in range(26):
        key = f"{'sub/' if i % 4 == 0 else ''}{i:04d}_clean"
        ext = exts[i % len(exts)]
        size = (1024 + 64 * (i % 3), 1024 - 64 * (i % 2))
        files[f"{key}.json"] = json.dumps(record(i, key, ext, size), ensure_ascii=False).encode()
        files[f"{key}.{ext}"] = IMAGES[ext](24, 16)  # small pixels; the JSON's size is used
    faults = {
        "f_no_size": lambda r: {k: v for k, v in r.items() if k not in ("width", "height")},
        "f_string_size": lambda r: {**r, "width": "1024", "height": "768"},
        "f_hostile_name": lambda r: {**r, "image_name": "../../../../tmp/pwned.png"},
        "f_name_mismatch": lambda r: {**r, "image_name": "other.webp"},
    }
    for n, (key, change) in enumerate(faults.items(), start=100):
        files[f"{key}.json"] = json.dumps(change(record(n, key, "png", (640, 480)))).encode()
        files[f"{key}.png"] = png(32, 20)
    base = json.dumps(record(200, "x", "png", (512, 512))).encode()
    files["f_truncated.json"], files["f_truncated.png"] = base[: len(base) // 2], png(8, 8)
    files["f_empty.json"], files["f_empty.png"] = b"", png(8, 8)
    files["f_list.json"], files["f_list.png"] = b"[1, 2]", png(8, 8)
    files["f_latin1.json"] = '{"short_caption": "caf\xe9"}'.encode("latin-1")  # not UTF-8
    files["f_latin1.png"] = png(8, 8)
    files["f_no_image.json"] = json.dumps(record(201, "f_no_image", "png", (512, 512))).encode()
    files["sub/f_no_json.jpg"] = jpeg(300, 200)
    bad = record(202, "f_bad_header", "png", (1, 1))
    del bad["width"], bad["height"]
    files["f_bad_header.json"], files["f_bad_header.png"] = json.dumps(bad).encode(), b"\x89PNG broken"
    files["f_two_images.json"] = json.dumps(record(203, "f_two_images", "png", (800, 600))).encode()
    files["f_two_images.png"], files["f_two_images.jpg"] = png(8, 8), jpeg(8, 8)
    files["notes.txt"] = b"not a sample file: ignored"
    return files


def write_samples(root: Path) -> None:
    for n, (rel, content) in enumerate(sorted(samples().items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        mtime = BASE_MTIME_NS + n * 10**9
        os.utime(path, ns=(mtime, mtime))


def index_with_tree(tree: Path, db: Path, root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", INDEX_TWICE, str(db), str(root), str(tree)],
                         env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def check(db: Path, runs: dict) -> dict:
    """The fixture is only useful if the release itself found it stable: say so or stop."""
    second = runs["second"]
    if second["files_read"] or second["added"] or second["changed"] or second["removed"]:
        raise SystemExit(f"the second run of the tree's code was not a no-op: {second}")
    conn = sqlite3.connect(db)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        racy = conn.execute("SELECT count(*) FROM files WHERE racy").fetchone()[0]
        statuses = dict(conn.execute("SELECT status, count(*) FROM samples GROUP BY status").fetchall())
    finally:
        conn.close()
    if racy:
        raise SystemExit(f"{racy} file records are racy; rerun (files must be {RACY_WAIT_S} s old)")
    return {"schema_version": version, "samples": sum(statuses.values()), "statuses": statuses}


def git_commit(tree: Path) -> str | None:
    result = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def write_archive(out: Path, work: Path, manifest: dict) -> None:
    """tar.gz with sorted members and no build-time stamps beyond the database's own."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("fixture.json")
        data = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
        info.size, info.mtime = len(data), BASE_MTIME_NS // 10**9
        tar.addfile(info, io.BytesIO(data))
        tar.add(work / "index.sqlite", "index.sqlite")
        for path in sorted((work / "data").rglob("*")):
            tar.add(path, str(path.relative_to(work)), recursive=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", type=Path, help="checkout of the release (holds indexer/ and schema/)")
    parser.add_argument("out", type=Path, help="e.g. tests/fixtures/schema_v6.tar.gz")
    parser.add_argument("--commit", help="the release's commit, recorded in fixture.json "
                        "(default: HEAD of the tree when it is a git checkout)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    if not (tree / "indexer").is_dir() or not (tree / "schema").is_dir():
        raise SystemExit(f"{tree} holds no indexer/ and schema/: pass a checkout of the release")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_samples(work / "data")
        time.sleep(RACY_WAIT_S)
        runs = index_with_tree(tree, work / "index.sqlite", work / "data")
        manifest = {**check(work / "index.sqlite", runs), "dataset": DATASET,
                    "commit": args.commit or git_commit(tree), "made_by": "scripts/make_schema_fixture.py"}
        write_archive(args.out, work, manifest)
    print(f"wrote {args.out}: {manifest}")


if __name__ == "__main__":
    main()
