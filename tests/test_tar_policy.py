"""One refusal policy: members read in place and members `extract` writes are refused alike, for
the same reasons in the same words; `extract` refuses only what it would make a path of on top."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
from pathlib import Path

from indexer.extract import extract_shards
from indexer.ingest import tar_policy
from indexer.ingest.index import index_root


def hostile_tar(path: Path, gen, compression: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    png = gen.png_bytes(8, 8)
    with tarfile.open(path, f"w:{compression}" if compression else "w", format=tarfile.GNU_FORMAT) as tar:
        def add(name: str, data: bytes = b"{}", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("ok.json", json.dumps({"width": 8, "height": 8}).encode())
        add("ok.png", png)
        add("../up.json")
        add("/abs.json")
        add("sym.png", kind=tarfile.SYMTYPE, link="ok.png")
        add("hard.png", kind=tarfile.LNKTYPE, link="ok.png")
        add("fifo", kind=tarfile.FIFOTYPE)
        add("dev", kind=tarfile.CHRTYPE)
        add("back\\slash.json")
        add("C:drive.json")
    return path


def test_in_place_and_extract_refuse_the_same_members_for_the_same_reasons(tmp_path: Path, gen) -> None:
    shard = hostile_tar(tmp_path / "in" / "s.tar", gen)
    index_root(tmp_path / "p.sqlite", shard.parent, workers=1)
    conn = sqlite3.connect(tmp_path / "p.sqlite")
    [(refusals,)] = conn.execute("SELECT refusals FROM tar_shards").fetchall()
    indexed = {tuple(pair) for pair in json.loads(refusals)}
    conn.close()
    for compression in ("", "gz"):  # the one-pass reader, and tarfile for compressed shards
        source = shard if not compression else hostile_tar(tmp_path / "in" / "s.tar.gz", gen, "gz")
        summary = extract_shards(tmp_path / f"x{compression}.sqlite", [source],
                                 tmp_path / f"out{compression}", workers=1)
        extracted = {(r["member"], r["reason"]) for r in summary["refusals"]}
        assert indexed <= extracted, compression
        assert extracted - indexed == {("back\\slash.json", tar_policy.BACKSLASH),
                                       ("C:drive.json", tar_policy.DRIVE)}, compression
    assert {member for member, _reason in indexed} == {"../up.json", "/abs.json", "sym.png", "hard.png",
                                                       "fifo", "dev"}
