"""A remote shard's walk: its first read after a jump sized by the shard's recent jumps, and the
ranges a webshart index beside it points at fetched ahead. Whatever the index (complete, partial,
stale, garbage, hostile, pointing at the wrong members), the rows are those of a walk without it;
with a complete one the walk makes no read of its own."""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
import tarfile
from pathlib import Path

import orjson
import pytest
from helpers_index import sample_rows
from servers import range_server, s3_server

from indexer.export.webshart import export_webshart
from indexer.ingest import remote, remote_walk
from indexer.ingest.index import index_root
from indexer.ingest.remote_walk import Prefetch, read_plan
from indexer.ingest.shards import HEAD_BYTES, _want
from indexer.ingest.tar_members import BLOCK, iter_members_in

pytestmark = pytest.mark.usefixtures("no_racy")
RUN_SPECIFIC = {"samples": {"id", "data_version"}, "tar_shards": {"indexed_at", "requests", "bytes_read"}}
PAD = bytes(12_000)
ROW = ("key", "image_ext", "json_ext", "width", "height", "size_from", "status", "warning", "meta", "shard",
       "json_offset", "image_offset")  # image data past the header: what a walk jumps over


def table(db: Path, name: str, also: frozenset[str] = frozenset()) -> list[tuple]:
    """Every row of the table, without the columns that differ from run to run (and `also`)."""
    conn = sqlite3.connect(db)
    try:
        columns = [c for (c,) in conn.execute(f"SELECT name FROM pragma_table_xinfo('{name}')")
                   if c not in RUN_SPECIFIC[name] | also]
        return conn.execute(f"SELECT {', '.join(columns)} FROM {name} ORDER BY 1, 2, 3").fetchall()
    finally:
        conn.close()


def sample(sample_files, key: str, caption_words: int, **fields) -> list[tuple[str, bytes]]:
    """A pair, JSON first, with a caption of some length and an image worth jumping over."""
    found = sample_files.members(key, size=(64, 48), image_data=sample_files.image("png", (64, 48)) + PAD,
                                 short_caption=" ".join(["word"] * caption_words), **fields)
    return list(found.items())


def shards_folder(folder: Path, sample_files) -> None:
    """Shards whose indexes the test then makes complete, partial, stale, garbage, hostile or wrong;
    the members a walk must get right are among them (folders, links, a .txt, bad JSON, a long
    name, a sample whose size must come from its image)."""
    clean = [m for i in range(6) for m in sample(sample_files, f"f{i}", 5 + 40 * i)]
    clean[4:4] = [sample_files.special("dir/", tarfile.DIRTYPE), ("f1.txt", b"a note"),
                  sample_files.special("link.png", tarfile.SYMTYPE, "f0.png")]
    clean += sample(sample_files, "f9", 3, width=None, height=None)  # its size: from the image's head
    sample_files.shard(folder / "full.tar", clean)
    odd = [m for i in range(5) for m in sample(sample_files, f"p{i}", 9 * i)]
    odd += [("p5.json", b'{"width": 5'), ("p5.png", sample_files.image() + PAD)]
    odd += sample(sample_files, "long/" + "n" * 120, 4)
    sample_files.shard(folder / "partial.tar", odd)
    for name in ("stale", "garbage", "hostile", "wrong"):
        sample_files.shard(folder / f"{name}.tar", [m for i in range(5)
                                                    for m in sample(sample_files, f"{name[0]}{i}", 7 * i)])


def make_indexes(folder: Path, tmp_path: Path, sample_files) -> None:
    """X.json beside each X.tar, each kind of index a walk may meet."""
    db = tmp_path / "served.sqlite"
    index_root(db, folder, workers=1)
    for kind, where in (("complete", None), ("partial", "key < 'p3'")):
        (tmp_path / kind).mkdir()
        export_webshart(db, metadata=tmp_path / kind, where=where)
    for name in ("full", "stale", "wrong"):
        shutil.copy(tmp_path / "complete" / f"{name}.json", folder / f"{name}.json")
    shutil.copy(tmp_path / "partial" / "partial.json", folder / "partial.json")
    # stale: the tar replaced after its index was written (longer JSONs, a pax header, one more sample)
    longer = [m for i in range(6) for m in sample(sample_files, f"sé{i}", 30 + i)]
    sample_files.shard(folder / "stale.tar", longer, tar_format=tarfile.PAX_FORMAT)
    (folder / "garbage.json").write_bytes(b"\x00{ not an index")
    hostile = {"files": {"h.json": {"offset": 512, "length": 1 << 40}, "v": [1, 2],
                         "x.json": {"offset": -512, "length": 4}, "y.json": {"offset": 1000, "length": 4},
                         "z.json": {"offset": True, "length": 4}, "w.json": {"offset": 1536, "length": "4"},
                         "s0.json": {"offset": 512, "length": 400_000}}}  # its data, far longer
    (folder / "hostile.json").write_bytes(orjson.dumps(hostile))
    wrong = orjson.loads((folder / "wrong.json").read_bytes())
    entries = list(wrong["files"].values())
    moved = [(e["offset"], e["json_offset"]) for e in entries[1:] + entries[:1]]
    for entry, (offset, json_offset) in zip(entries, moved, strict=True):  # each at another member
        entry.update(offset=offset, json_offset=json_offset + 1024, width=1, height=1)
    (folder / "wrong.json").write_bytes(orjson.dumps(wrong))


def gets(requests: list[str], name: str) -> list[tuple[int, int]]:
    """The ranges (offset, length) of the GETs the server saw for one file."""
    found = []
    for line in requests:
        match = re.fullmatch(rf"GET /{re.escape(name)} bytes=(\d+)-(\d+)", line)
        if match:
            first, last = int(match[1]), int(match[2])
            found.append((first, last - first + 1))
    return found


def test_the_rows_are_a_plain_walks_whatever_the_index(tmp_path, sample_files, cli):
    served = tmp_path / "served"
    shards_folder(served, sample_files)
    make_indexes(served, tmp_path, sample_files)
    names = sorted(path.name for path in served.glob("*.tar"))
    with range_server(served) as (base, faults):
        plain, indexed = tmp_path / "plain.txt", tmp_path / "indexed.txt"
        plain.write_text("".join(f"{base}/{name}\n" for name in names))
        indexed.write_text(plain.read_text() + "".join(f"{base}/{name[:-4]}.json\n" for name in names))
        assert cli("index", "--shard-list", plain, "--db", tmp_path / "plain.sqlite").exit_code == 0
        faults.requests.clear()
        result = cli("index", "--shard-list", indexed, "--db", tmp_path / "indexed.sqlite", "--json")
        assert result.exit_code == 0, result.stderr
        seen = list(faults.requests)
        for name in RUN_SPECIFIC:
            assert table(tmp_path / "indexed.sqlite", name) == table(tmp_path / "plain.sqlite", name)
        index_root(tmp_path / "local.sqlite", served, workers=1)  # and they are the local copy's
        assert sample_rows(tmp_path / "plain.sqlite", ROW) == sample_rows(tmp_path / "local.sqlite", ROW)

        # with the complete index, the walk read nothing itself: the plan's ranges and the head
        # of the one image whose size the JSON lacks, each fetched once, all counted
        full = served / "full.tar"
        plan = read_plan((served / "full.json").read_bytes(), full.stat().st_size)
        conn = sqlite3.connect(tmp_path / "indexed.sqlite")
        head_at, image_size = conn.execute("SELECT image_offset, image_size FROM samples"
                                           " WHERE key = 'f9'").fetchone()
        conn.close()
        head = (head_at, min(image_size, HEAD_BYTES))
        assert sorted(gets(seen, "full.tar")) == sorted([*plan, head])
        per_shard = {entry["shard"]: entry for entry in json.loads(result.output)["shards"]["per_shard"]}
        assert per_shard["full.tar"]["requests"] == len(plan) + 1 + 1  # + the head, + the index
        index_size = (served / "full.json").stat().st_size
        assert per_shard["full.tar"]["bytes"] == sum(n for _, n in plan) + head[1] + index_size
        assert len(gets(seen, "full.json")) == 1 and len(gets(seen, "garbage.json")) == 1

        # a rerun reads nothing, and nor does an index that changed alone
        faults.requests.clear()
        (served / "full.json").write_bytes(b"{}")
        again = json.loads(cli("index", "--shard-list", indexed, "--db", tmp_path / "indexed.sqlite",
                               "--json").output)
        assert again["shards"]["read"] == 0 and again["files_read"] == 0
        assert not [line for line in faults.requests if line.startswith("GET")]


def walk_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Counted:
    """An object's bytes read by pread, each call counted."""

    def __init__(self, data: bytes) -> None:
        self.data, self.calls, self.bytes = data, 0, 0

    def pread(self, count: int, offset: int) -> bytes:
        self.calls += 1
        self.bytes += min(count, len(self.data) - offset)
        return self.data[offset:offset + count]


def local_members(data: bytes) -> list:
    return list(iter_members_in(Counted(data).pread, "x.tar", len(data), want_data=_want))


def test_a_jump_reads_what_the_recent_jumps_used(sample_files):
    samples = [m for i in range(40) for m in sample(sample_files, f"k{i:02d}", 30)]
    samples[60:60] = sample(sample_files, "k30b", 400)  # one JSON far longer than the rest
    data = walk_bytes(samples)
    source = Counted(data)
    walked = list(remote_walk.members(source.pread, "x.tar", len(data), None, _want))
    assert walked == local_members(data)
    stretch = 512 + ((len(samples[0][1]) + 511) // 512 * 512) + 512  # header, JSON, next header
    # one request a sample (and the end): the long JSON costs one more, once
    count = len(samples) // 2
    assert source.calls <= count + 2
    assert source.bytes <= count * stretch + (count - 30) * 3 * 1024 + 6 * 1024
    plain = Counted(data)
    list(iter_members_in(plain.pread, "x.tar", len(data), want_data=_want, jump_read=3 << 10))
    assert source.bytes < plain.bytes and source.calls <= plain.calls


def test_ranges_fetched_ahead_that_fail_or_miss_are_read_by_the_walk(sample_files, monkeypatch):
    monkeypatch.setattr(remote_walk, "WINDOW", 3)  # the window moves along the walk
    samples = [m for i in range(12) for m in sample(sample_files, f"k{i:02d}", 3 * i)]
    data = walk_bytes(samples)
    members = local_members(data)
    index = {"files": {m.name: {"offset": m.data_offset, "length": m.size} for m in members[::3]}}
    plan = read_plan(orjson.dumps(index), len(data))
    assert plan and all(length > 0 for _, length in plan)
    failing = {plan[1][0], plan[4][0]}

    def fetch(count: int, offset: int) -> bytes:
        if offset in failing:
            raise remote.RemoteError("x.tar: HTTP 503 (after 5 retries)")
        return data[offset:offset + count]

    source = Counted(data)
    with Prefetch(plan, fetch, 4) as prefetched:
        walked = list(remote_walk.members(source.pread, "x.tar", len(data), prefetched, _want))
    assert walked == members
    assert 0 < source.calls < len(members)  # the misses and failures, not every member


@pytest.mark.parametrize("index", [
    b"", b"null", b"[1, 2]", b'{"files": 5}', b'{"files": {"a.json": 5}}', b"[" * 100_000,
    b'{"files": {"a.json": {"offset": 511, "length": 5}}}',  # not past a header
    b'{"files": {"a.json": {"offset": 1000, "length": 5}}}',  # not on a block boundary
    b'{"files": {"a.json": {"offset": 512, "length": 99999999}}}',  # past the end
    b'{"files": {"a.json": {"offset": 512.0, "length": 5}}}',
    b'{"files": [{"path": 7, "offset": 512, "length": 5}, 3]}',
], ids=lambda index: f"{len(index)}:{index[:40]!r}")
def test_an_index_that_cannot_be_one_plans_nothing(index):
    assert read_plan(index, 10_240) == []


def test_a_plan_joins_near_ranges_and_reads_to_the_end_blocks():
    index = {"files": {"a.json": {"offset": 512, "length": 700}, "a.png": {"offset": 2048, "length": 100_000},
                       "b.json": {"offset": 102_912, "length": 10}},
             "extra": "ignored"}
    plan = read_plan(orjson.dumps(index), 1 << 20)
    a_end = 2048  # a.json's header and data (700 bytes, padded), a.png's header
    b_end = 102_912 + BLOCK + 2 * BLOCK  # b.json's header, data, the end-of-archive blocks
    assert plan == [(0, a_end), (102_912 - BLOCK, b_end - (102_912 - BLOCK))]
    as_list = {"files": [{"path": name, **entry} for name, entry in index["files"].items()]}
    assert read_plan(orjson.dumps(as_list), 1 << 20) == plan


def test_a_first_local_run_never_takes_a_shards_index_for_a_sample(tmp_path, sample_files):
    folder = tmp_path / "data"
    sample_files.shard(folder / "s.tar", sample(sample_files, "k", 3))
    (folder / "s.json").write_bytes(b'{"files": {}}')
    sample_files.pair(folder, "loose", size=(8, 8))
    index_root(tmp_path / "db.sqlite", folder, workers=1)
    assert [row[0] for row in sample_rows(tmp_path / "db.sqlite", ("key",), order="key")] == ["k", "loose"]


def test_a_buckets_listing_finds_the_index_beside_its_shard(tmp_path, sample_files, monkeypatch):
    import s3fs

    served = tmp_path / "served"
    sample_files.shard(served / "full.tar", [m for i in range(4) for m in sample(sample_files, f"f{i}", 9)])
    sample_files.pair(served, "loose", size=(8, 8))
    index_root(tmp_path / "served.sqlite", served, workers=1)
    export_webshart(tmp_path / "served.sqlite")
    with s3_server() as endpoint:
        for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                            ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(remote, "_FILESYSTEMS", {})
        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        fs.mkdir("bkt")
        for prefix, names in (("plain", ("full.tar", "loose.json", "loose.png")),
                              ("indexed", ("full.tar", "full.json", "loose.json", "loose.png"))):
            for name in names:
                fs.pipe(f"bkt/{prefix}/{name}", (served / name).read_bytes())
        summaries = {prefix: index_root(tmp_path / f"{prefix}.sqlite", f"s3://bkt/{prefix}", dataset_id="d")
                     for prefix in ("plain", "indexed")}
    # each prefix's objects were uploaded on their own, so their listed times (and the signatures
    # made with them) may fall in different seconds; everything read from the bytes must agree
    listed_times = {"samples": frozenset({"json_sig", "image_mtime_ns", "image_sig"}),
                    "tar_shards": frozenset({"mtime_ns"})}
    for name in RUN_SPECIFIC:
        assert table(tmp_path / "indexed.sqlite", name, listed_times[name]) == \
            table(tmp_path / "plain.sqlite", name, listed_times[name])
    assert [row[0] for row in sample_rows(tmp_path / "indexed.sqlite", ("key",), order="key")] == \
        ["f0", "f1", "f2", "f3", "loose"]
    plan = read_plan((served / "full.json").read_bytes(), (served / "full.tar").stat().st_size)
    assert summaries["indexed"]["shards"]["requests"] == len(plan) + 1  # the plan's ranges, the index
