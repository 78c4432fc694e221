"""Tar shards indexed in place: the same samples as the extracted files, reruns that read only
what changed, duplicates and unsafe members reported, and offsets that point at the members' bytes."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path

import pytest
from helpers_index import sample_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.export.jsonl import export_jsonl
from indexer.ingest.index import index_root
from indexer.ingest.pipeline import json_bytes

CONTENT = "key, image_ext, json_ext, width, height, size_from, status, error, warning, meta"


pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled


def rows(db: Path) -> list[tuple]:
    return sample_rows(db, tuple(CONTENT.split(", ")), order="key")


def test_shards_in_place_hold_exactly_what_extracting_them_gives(tmp_path, gen, sample_files):
    loose = tmp_path / "loose"
    gen.make_dataset(loose, 120, faults=0.2, seed=11, subfolders=3)
    files = sorted(p for p in loose.rglob("*") if p.is_file())
    shards = tmp_path / "shards"
    for number, start in enumerate(range(0, len(files), 90)):
        sample_files.shard(shards / f"data-{number:06d}.tar",
                           {p.relative_to(loose).as_posix(): p.read_bytes() for p in files[start:start + 90]})
    in_place = index_root(tmp_path / "shards.sqlite", shards, workers=2)
    extracted = index_root(tmp_path / "loose.sqlite", loose, workers=1)
    assert in_place["samples"] == extracted["samples"] == 120
    # a pair split over two shards is still one sample, as after `tar xf` of both
    assert rows(tmp_path / "shards.sqlite") == rows(tmp_path / "loose.sqlite")
    assert in_place["problems"] == extracted["problems"]
    assert in_place["shards"]["read"] == len(list(shards.iterdir())) and not in_place["shards"]["errors"]


def test_bytes_read_counts_what_the_kernel_returned_and_bytes_used_what_samples_took(tmp_path, sample_files,
                                                                                    monkeypatch):
    """Every os.pread of the run is counted in bytes_read, read-ahead included (a read after each
    jump over image data is JUMP_READ whether or not the next member needs it all); bytes_used is
    the headers, JSON and image heads the samples were made of."""
    import os

    from indexer.ingest.tar_members import BLOCK, JUMP_READ

    members: dict[str, bytes] = {}
    for i in range(20):
        members.update(sample_files.members(f"k{i:02d}"))
        members[f"k{i:02d}.png"] += bytes(64 << 10)  # 64 KiB of image data to jump over
    members.update(sample_files.members("unsized", record={"short_caption": "size from the header"}))
    sample_files.shard(tmp_path / "shards" / "a.tar", members)
    returned = []
    real_pread = os.pread

    def counting_pread(fd: int, count: int, offset: int) -> bytes:
        data = real_pread(fd, count, offset)
        returned.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting_pread)
    shards = index_root(tmp_path / "db.sqlite", tmp_path / "shards", workers=1)["shards"]
    json_size = sum(len(data) for name, data in members.items() if name.endswith(".json"))
    used = BLOCK * len(members) + json_size  # one header block a member, and the JSON
    head = len(members["unsized.png"])  # read by offset for its size
    assert shards["bytes_read"] == sum(returned) and shards["bytes_used"] == used + head
    assert shards["bytes_read"] >= 20 * JUMP_READ > 2 * shards["bytes_used"]


def test_offsets_point_at_the_members_bytes_and_the_header_size_is_read_by_offset(tmp_path, sample_files):
    members = {**sample_files.members("sized"),
               **sample_files.members("unsized", size=(800, 600), record={"short_caption": "x"})}
    shard = tmp_path / "shards" / "a.tar"
    sample_files.shard(shard, members)
    index_root(tmp_path / "db.sqlite", shard.parent, workers=1)
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    found = conn.execute("SELECT key, image_ext, image_offset, image_size, json_ext, json_offset, json_size,"
                         " width, height, size_from, shard FROM samples ORDER BY key").fetchall()
    data = shard.read_bytes()
    for key, image_ext, image_offset, image_size, json_ext, json_offset, json_size, *_rest, where in found:
        assert where == "a.tar"
        assert data[image_offset : image_offset + image_size] == members[f"{key}.{image_ext}"]
        assert data[json_offset : json_offset + json_size] == members[f"{key}.{json_ext}"]
    assert [row[7:10] for row in found] == [(1024, 768, "json"), (800, 600, "image")]


def test_reruns_read_only_new_changed_and_removed_shards(tmp_path, sample_files):
    shards = tmp_path / "shards"
    sample_files.shard(shards / "a.tar", {**sample_files.members("a1"), **sample_files.members("a2")})
    sample_files.shard(shards / "b.tar", sample_files.members("b1"))
    db = tmp_path / "db.sqlite"
    first = index_root(db, shards, workers=1)
    assert (first["added"], first["shards"]["read"]) == (3, 2)
    again = index_root(db, shards, workers=1)
    assert (again["added"], again["changed"], again["files_read"], again["shards"]["read"]) == (0, 0, 0, 0)
    sample_files.shard(shards / "a.tar", sample_files.members("a1", size=(1024, 1024)))  # a1 changed, a2 gone
    sample_files.shard(shards / "c.tar", sample_files.members("c1"))
    (shards / "b.tar").unlink()
    changed = index_root(db, shards, workers=2)
    assert (changed["added"], changed["changed"], changed["removed"]) == (1, 1, 2)
    assert changed["shards"]["read"] == 2 and changed["shards"]["removed"] == 1
    assert [row[0] for row in rows(db)] == ["a1", "c1"]
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT path FROM tar_shards ORDER BY path")] == ["a.tar", "c.tar"]


def test_a_key_in_two_shards_is_reported_and_survives_its_owner(tmp_path, sample_files):
    shards = tmp_path / "shards"
    sample_files.shard(shards / "a.tar", sample_files.members("same", size=(100, 100)))
    sample_files.shard(shards / "b.tar", sample_files.members("same", size=(200, 200)))
    db = tmp_path / "db.sqlite"
    summary = index_root(db, shards, workers=1)
    assert summary["samples"] == 1 and summary["shards"]["duplicates_count"] == 1
    assert "a.tar" in summary["shards"]["duplicates"][0] and "b.tar" in summary["shards"]["duplicates"][0]
    assert rows(db)[0][3:5] == (100, 100)  # the first shard (in path order) owns it
    (shards / "a.tar").unlink()
    after = index_root(db, shards, workers=1)
    assert after["samples"] == 1 and rows(db)[0][3:5] == (200, 200)  # b.tar's copy took over


def test_unsafe_members_are_refused_and_never_indexed(tmp_path, sample_files):
    members = {**sample_files.members("fine"), "../escape.json": b"{}", "/abs.json": b"{}"}
    sample_files.shard(tmp_path / "shards" / "a.tar", [
        *members.items(), sample_files.special("evil.json", tarfile.SYMTYPE, "/etc/passwd"),
        sample_files.special("pipe.png", tarfile.FIFOTYPE)])
    summary = index_root(tmp_path / "db.sqlite", tmp_path / "shards", workers=1)
    assert [row[0] for row in rows(tmp_path / "db.sqlite")] == ["fine"]
    assert summary["shards"]["refused"] == 4
    refusals = json.loads(sqlite3.connect(tmp_path / "db.sqlite").execute(
        "SELECT refusals FROM tar_shards").fetchone()[0])
    assert {name for name, _reason in refusals} == {"evil.json", "pipe.png", "../escape.json", "/abs.json"}


def test_file_exports_leave_shard_samples_out(tmp_path, sample_files):
    sample_files.shard(tmp_path / "shards" / "a.tar", sample_files.members("inside"))
    index_root(tmp_path / "db.sqlite", tmp_path / "shards", workers=1)
    summary = export_jsonl(tmp_path / "db.sqlite", tmp_path / "m.jsonl")
    assert summary["rows"] == 0 and summary["excluded"] == {"in_tar_shard": 1}


SHARD_OPS = st.lists(st.tuples(st.sampled_from(["write", "remove"]), st.sampled_from(["a", "b", "c"]),
                               st.lists(st.sampled_from(["k1", "k2", "k3", "k4"]), max_size=3),
                               st.integers(1, 3)), min_size=1, max_size=4)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SHARD_OPS, min_size=1, max_size=3))
def test_incremental_index_of_shards_equals_a_fresh_one(sample_files, rounds):
    work = Path(tempfile.mkdtemp())
    try:
        shards = work / "shards"
        shards.mkdir()
        for ops in rounds:
            for op, name, keys, scale in ops:
                path = shards / f"{name}.tar"
                if op == "remove":
                    path.unlink(missing_ok=True)
                    continue
                members: dict[str, bytes] = {}
                for key in keys:
                    members.update(sample_files.members(key, size=(64 * scale, 48 * scale)))
                sample_files.shard(path, members)
            kept = index_root(work / "incremental.sqlite", shards, workers=1)["json_bytes"]
            fresh = work / "fresh.sqlite"
            index_root(fresh, shards, workers=1)
            assert rows(work / "incremental.sqlite") == rows(fresh)
            with sqlite3.connect(work / "incremental.sqlite") as conn:  # the kept figure against a sum
                assert kept == json_bytes(conn, conn.execute("SELECT id FROM datasets").fetchone()[0])
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{fresh}{suffix}").unlink(missing_ok=True)
    finally:
        shutil.rmtree(work)


def test_the_first_shard_in_path_order_owns_a_key_whatever_the_order_they_arrived(tmp_path, sample_files):
    shards = tmp_path / "shards"
    sample_files.shard(shards / "b.tar", sample_files.members("same", size=(200, 200)))
    db = tmp_path / "db.sqlite"
    index_root(db, shards, workers=1)
    sample_files.shard(shards / "a.tar", sample_files.members("same", size=(100, 100)))
    index_root(db, shards, workers=1)
    assert rows(db)[0][3:5] == (100, 100)
    (shards / "a.tar").unlink()
    index_root(db, shards, workers=1)
    assert rows(db)[0][3:5] == (200, 200)


def test_loose_files_own_a_key_before_any_shard(tmp_path, sample_files):
    root = tmp_path / "data"
    sample_files.shard(root / "a.tar", sample_files.members("same", size=(100, 100)))
    db = tmp_path / "db.sqlite"
    index_root(db, root, workers=1)
    for name, data in sample_files.members("same", size=(300, 300)).items():
        (root / name).write_bytes(data)
    index_root(db, root, workers=1)
    assert rows(db)[0][3:5] == (300, 300)
    for name in sample_files.members("same"):
        (root / name).unlink()
    index_root(db, root, workers=1)
    assert rows(db)[0][3:5] == (100, 100)


def webshart_index(path: Path) -> dict:
    """Parse an index the way webshart 0.6.0 requires it (checked by scripts/check_webshart.py)."""
    index = json.loads(path.read_text())
    assert isinstance(index["filesize"], int) and isinstance(index["files"], dict)
    for entry in index["files"].values():
        assert all(type(entry[name]) is int and entry[name] >= 0
                   for name in ("offset", "length", "width", "height"))
    return index


def test_webshart_indexes_hold_offsets_sizes_and_captions(tmp_path, gen, sample_files, cli):
    from indexer.export.webshart import export_webshart

    shards = tmp_path / "shards"
    long_record = {"width": 1024, "height": 768, "short_caption": "caption of a2", "long_caption": "long a2"}
    members = {**sample_files.members("a1"), **sample_files.members("a2", record=long_record),
               "a3.json": json.dumps({"short_caption": " several ", "long_caption": "long",
                                      "width": 10, "height": 20}).encode(), "a3.jpg": gen.jpeg_bytes(10, 20)}
    sample_files.shard(shards / "part" / "a.tar", members)
    db = tmp_path / "db.sqlite"
    index_root(db, shards, workers=1)
    first = export_webshart(db)
    assert (first["rows"], first["written"], first["shards"]) == (3, 1, 1)
    index = webshart_index(shards / "part" / "a.json")
    assert index["filesize"] == (shards / "part" / "a.tar").stat().st_size
    data = (shards / "part" / "a.tar").read_bytes()
    for name, entry in index["files"].items():
        assert data[entry["offset"] : entry["offset"] + entry["length"]] == members[name]
    assert index["files"]["a2.png"]["width"] == 1024
    assert index["files"]["a1.png"]["captions"] == "caption of a1"
    assert export_webshart(db)["up_to_date"]  # same bytes: nothing written
    # every caption as a list, and a --where that filters the training set without touching the tar
    export_webshart(db, captions=("short_caption", "long_caption"), caption_mode="all", where="width > 100")
    index = webshart_index(shards / "part" / "a.json")
    assert set(index["files"]) == {"a1.png", "a2.png"}
    assert index["files"]["a1.png"]["captions"] == ["caption of a1"]
    assert index["files"]["a2.png"]["captions"] == ["caption of a2", "long a2"]
    again = index_root(db, shards, workers=1)  # the index beside the shard is not a sample
    assert again["samples"] == 3 and again["files_read"] == 0
    metadata = tmp_path / "meta"
    metadata.mkdir()
    result = cli("export", "webshart", "--db", db, "--metadata", metadata, "--json")
    assert result.exit_code == 0, result.stderr
    assert webshart_index(metadata / "part" / "a.json")["files"].keys() == {"a1.png", "a2.png", "a3.jpg"}
    config = cli("export", "config", tmp_path / "multidatabackend.json", "--db", db, "--backend", "webshart")
    assert config.exit_code == 0, config.stderr
    entry = json.loads((tmp_path / "multidatabackend.json").read_text())[0]
    assert entry["type"] == "webshart" and entry["source"] == str(shards.resolve())
    assert entry["metadata"] == str(metadata) and entry["metadata_backend"] == entry["caption_strategy"]
    assert entry["webshart"]["cache_dir"].startswith(str(tmp_path))


def test_webshart_refuses_a_shard_changed_since_it_was_indexed(tmp_path, sample_files):
    from indexer.errors import IndexerError
    from indexer.export.webshart import export_webshart

    sample_files.shard(tmp_path / "shards" / "a.tar", sample_files.members("a1"))
    db = tmp_path / "db.sqlite"
    index_root(db, tmp_path / "shards", workers=1)
    moved = {**sample_files.members("zz"), **sample_files.members("a1")}  # a1's offsets moved
    sample_files.shard(tmp_path / "shards" / "a.tar", moved)
    with pytest.raises(IndexerError, match="changed since it was indexed"):
        export_webshart(db)
    assert not (tmp_path / "shards" / "a.json").exists()


def test_export_webshart_prints_what_it_wrote_and_what_the_where_left_out(tmp_path, sample_files, cli):
    sample_files.shard(tmp_path / "shards" / "a.tar",
                       {**sample_files.members("a1"), **sample_files.members("a2")})
    db = tmp_path / "db.sqlite"
    index_root(db, tmp_path / "shards", workers=1)
    result = cli("export", "webshart", "--db", db, "--where", "key = 'a1'")
    assert result.exit_code == 0, result.stderr
    head, excluded = result.stdout.splitlines()
    assert head == (f"webshart indexes under {(tmp_path / 'shards').resolve()}: 1 samples in 1 shards;"
                    " written 1, unchanged 0")
    assert excluded == "  excluded: where 1"


def test_index_prints_the_shards_it_read_and_the_members_it_refused(tmp_path, sample_files, cli):
    link = sample_files.special("evil.png", tarfile.SYMTYPE, "/etc/passwd")
    sample_files.shard(tmp_path / "shards" / "a.tar", [*sample_files.members("a1").items(), link])
    result = cli("index", tmp_path / "shards", "--db", tmp_path / "db.sqlite", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("  tar shards 1: read 1 (3 members, ") and line.endswith("removed 0")
               for line in lines), lines
    assert ("  warning: refused 1 unsafe tar members (links, devices, escaping names): see the tar_shards"
            " table") in lines
