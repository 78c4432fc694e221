"""`indexer materialize DIR`: a selection of a dataset indexed in place (local shards and files, a
bucket on moto's S3 server, https shards from a shard list) copied into DIR as `tar xf` lays it out,
checked, recorded (a following index reads nothing), resumable, and as safe as `extract`."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import sqlite3
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from servers import range_server, s3_server

from indexer.errors import EXIT_INCOMPLETE, EXIT_REFUSED_MEMBERS
from indexer.extract.fileops import FS
from indexer.ingest import remote
from indexer.ingest.index import index_root
from indexer.ingest.walk import STAGING_PREFIX
from indexer.materialize import materialize, place

SUBSET = "width % 2 = 0"  # every other sample: widths 32, 33, 34, ...


pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled


def sample(sample_files, key: str, width: int, **fields) -> dict[str, bytes]:
    """A pair whose JSON carries its image's md5, as DALLE-3's does."""
    image = sample_files.image("png", (width, 24))
    return sample_files.members(key, size=(width, 24), image_data=image,
                                md5_file_hash=hashlib.md5(image).hexdigest(), **fields)


def source_folder(folder: Path, sample_files, shards: int = 3, per_shard: int = 4) -> Path:
    """`shards` tar shards of `per_shard` pairs (sub/ keys), and two loose pairs beside them."""
    for n in range(shards):
        members: dict[str, bytes] = {}
        for i in range(per_shard):
            members.update(sample(sample_files, f"sub/k{n}{i}", 32 + n * per_shard + i))
        sample_files.shard(folder / f"s{n}.tar", members)
    for i, key in enumerate(("loose/x", "loose/y")):
        sample_files.files(folder, sample(sample_files, key, 60 + i))
    return folder


def untarred(source: Path, into: Path) -> dict[str, bytes]:
    """What `tar xf` of every shard, plus the loose files, gives: {path: bytes}."""
    into.mkdir()
    for shard in sorted(source.glob("*.tar")):
        subprocess.run(["tar", "xf", shard, "-C", into], check=True)
    found = tree(into)
    found.update({p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*")
                  if p.is_file() and p.suffix != ".tar"})
    return found


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def subset_of(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files of the samples SUBSET selects (even widths)."""
    keys = {name[: -len(".json")] for name, data in files.items()
            if name.endswith(".json") and json.loads(data)["width"] % 2 == 0}
    return {name: data for name, data in files.items() if name.rsplit(".", 1)[0] in keys}


def pair_reads(files: dict[str, bytes]) -> int:
    """The bytes one read a pair takes from a shard: the JSON's data padded to a tar block, the
    image's header block, and the image."""
    return sum(-(-len(data) // 512) * 512 + 512 if name.endswith(".json") else len(data)
               for name, data in files.items())


def parquet_images(cli, db: Path, dataset: str, out: Path) -> list[str]:
    result = cli("export", "parquet", out, "--db", db, "--id", dataset)
    assert result.exit_code == 0, result.stderr
    return sorted(pq.read_table(out).column("filename").to_pylist())


def gets(requests: list[str]) -> list[tuple[int, int]]:
    """(first, last) byte of every ranged GET the HTTP server answered."""
    found = []
    for line in requests:
        method, _path, wanted = line.split(" ", 2)
        if method == "GET" and wanted:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            found.append((int(first), int(last)))
    return found


def test_a_local_selection_is_what_tar_xf_gives_and_index_then_reads_nothing(tmp_path, cli, sample_files):
    source = source_folder(tmp_path / "shards", sample_files)
    db = tmp_path / "db.sqlite"
    index_root(db, source, workers=1)
    expected = subset_of(untarred(source, tmp_path / "untarred"))
    out = tmp_path / "train" / "subset"

    result = cli("materialize", out, "--db", db, "--where", SUBSET, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.output)
    assert tree(out) == expected and len(expected) == 2 * 7  # 6 shard pairs and loose/x
    assert (summary["dataset"], summary["source"], summary["selected"]) == ("subset", "shards", 7)
    assert (summary["fetched"], summary["in_place"], summary["failed_count"]) == (7, 0, 0)
    in_shards = {name: data for name, data in expected.items() if name.startswith("sub/")}
    loose = sum(len(data) for name, data in expected.items() if name.startswith("loose/"))
    assert summary["fetched_bytes"] == pair_reads(in_shards) + loose
    assert summary["bytes_written"] == sum(map(len, expected.values()))
    assert summary["requests"] == 6 + 2  # one read a shard pair, one a loose file
    assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]

    again = index_root(db, out)
    assert (again["files_read"], again["added"], again["changed"], again["removed"]) == (0, 0, 0, 0)
    images = sorted(name for name in expected if name.endswith(".png"))
    assert parquet_images(cli, db, "subset", tmp_path / "subset.parquet") == images

    rerun = json.loads(cli("materialize", out, "--db", db, "--where", SUBSET, "--json").output)
    assert (rerun["fetched"], rerun["in_place"], rerun["requests"], rerun["added"]) == (0, 7, 0, 0)


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        yield url


def test_a_selection_from_a_bucket_fetches_only_its_own_bytes(tmp_path, cli, sample_files, endpoint,
                                                                monkeypatch):
    import s3fs

    for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(remote, "_FILESYSTEMS", {})
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    bucket = "m" + secrets.token_hex(6)
    source = source_folder(tmp_path / "local", sample_files)
    fs.put(str(source), f"{bucket}/data", recursive=True)
    db = tmp_path / "db.sqlite"
    assert cli("index", f"s3://{bucket}/data", "--db", db).exit_code == 0
    expected = subset_of(untarred(source, tmp_path / "untarred"))

    result = cli("materialize", tmp_path / "subset", "--db", db, "--where", SUBSET, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.output)
    assert tree(tmp_path / "subset") == expected
    assert summary["source_root"] == f"s3://{bucket}/data"
    in_shards = {name: data for name, data in expected.items() if name.startswith("sub/")}
    loose = sum(len(data) for name, data in expected.items() if name.startswith("loose/"))
    assert summary["fetched_bytes"] == pair_reads(in_shards) + loose
    assert summary["requests"] == 6 + 2
    assert index_root(db, tmp_path / "subset")["files_read"] == 0


def test_https_shards_fetch_one_range_a_pair_and_a_rerun_fetches_only_what_is_missing(
        tmp_path, cli, sample_files, monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.001)
    source = source_folder(tmp_path / "local", sample_files, shards=4, per_shard=10)
    for loose in source.glob("loose"):
        subprocess.run(["rm", "-r", loose], check=True)
    expected = subset_of(untarred(source, tmp_path / "untarred"))
    db, out = tmp_path / "db.sqlite", tmp_path / "subset"
    with range_server(source) as (base, faults):
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{base}/s{n}.tar\n" for n in range(4)))
        assert cli("index", "--shard-list", urls, "--db", db).exit_code == 0
        faults.requests.clear()
        no_list = cli("materialize", out, "--db", db, "--where", SUBSET)
        assert no_list.exit_code == 1 and "--shard-list" in no_list.stderr and not out.exists()

        run = cli("materialize", out, "--db", db, "--where", SUBSET, "--shard-list", urls, "--json")
        assert run.exit_code == 0, run.stderr
        assert tree(out) == expected
        ranges = gets(faults.requests)
        assert len(ranges) == len(expected) // 2 == 20  # one range request a selected pair
        fetched = sum(last - first + 1 for first, last in ranges)
        assert fetched == pair_reads(expected)  # the pairs' bytes and the tar headers between them
        assert json.loads(run.output)["fetched_bytes"] == fetched

        # a killed run's leftovers: files gone, one cut short, one not recorded, a staging file
        placed = sorted(name for name in expected if name.endswith(".png"))
        (out / placed[0]).unlink()
        (out / placed[1].replace(".png", ".json")).unlink()
        (out / placed[2]).write_bytes(expected[placed[2]][:10])
        (out / ".indexer-materialize").mkdir()
        (out / ".indexer-materialize" / "00000001").write_bytes(b"half a file")
        faults.requests.clear()
        rerun = cli("materialize", out, "--db", db, "--where", SUBSET, "--shard-list", urls, "--json")
        assert rerun.exit_code == 0, rerun.stderr
        assert tree(out) == expected
        assert len(gets(faults.requests)) == 3 and json.loads(rerun.output)["in_place"] == 17
        assert index_root(db, out)["files_read"] == 0

        # a shard replaced on the server since it was indexed: its samples are not fetched (exit 4)
        (out / placed[0]).unlink()
        os.utime(source / "s0.tar", (1, 1))
        stale = cli("materialize", out, "--db", db, "--where", SUBSET, "--shard-list", urls, "--json")
        assert stale.exit_code == EXIT_INCOMPLETE
        assert "changed since it was indexed" in json.loads(stale.output)["failed"][0]["error"]
        assert not (out / placed[0]).exists()
        assert cli("index", "--shard-list", urls, "--db", db).exit_code == 0
        assert cli("materialize", out, "--db", db, "--where", SUBSET, "--shard-list", urls).exit_code == 0
        assert tree(out) == expected


def test_an_image_whose_md5_differs_from_its_json_is_not_placed(tmp_path, cli, sample_files):
    source = tmp_path / "shards"
    bad = sample_files.members("bad", size=(40, 24), md5_file_hash="0" * 32)
    sample_files.shard(source / "s.tar", {**sample(sample_files, "good", 40), **bad})
    db = tmp_path / "db.sqlite"
    index_root(db, source, workers=1)
    summary = materialize(db, tmp_path / "out")  # the library reports it, for the caller's exit code
    assert [f["key"] for f in summary["failed"]] == ["bad"] and "md5" in summary["failed"][0]["error"]
    assert sorted(tree(tmp_path / "out")) == ["good.json", "good.png"]
    text = cli("materialize", tmp_path / "out", "--db", db)
    assert text.exit_code == EXIT_INCOMPLETE and "not fetched: bad:" in text.stderr


HOSTILE = ("planted/inside", "up\\..\\..\\windows", "C:evil", f"{STAGING_PREFIX}x/hidden",
           "index.sqlite-scratch/rows")


@pytest.mark.parametrize("through", ["links", "staging"])
def test_hostile_names_are_refused_and_nothing_outside_dir_changes(tmp_path, cli, sample_files, monkeypatch,
                                                                   through):
    if through == "staging":  # what filesystems without O_TMPFILE get
        monkeypatch.setattr(place, "links_in_place", lambda staging_fd: False)
    box = tmp_path / "box"
    out, outside = box / "data", box / "outside"
    out.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.json").write_bytes(b"secret")
    os.symlink(outside / "secret.json", out / "victim.json")  # a planted symlink to a file outside
    os.symlink(outside, out / "planted")  # and one to a folder outside
    db = out / "index.sqlite"  # the database inside DIR: its scratch folder is never written
    members: dict[str, bytes] = {}
    for key in ("good", "victim", *HOSTILE):
        members.update(sample_files.members(key, size=(8, 8)))
    sample_files.shard(tmp_path / "shards" / "s.tar", members)
    index_root(db, tmp_path / "shards", workers=1)
    before = tree(outside)

    result = cli("materialize", out, "--db", db, "--json")
    assert result.exit_code == EXIT_REFUSED_MEMBERS, result.stderr
    summary = json.loads(result.output)
    refused = {r["file"]: r["reason"] for r in summary["refused"]}
    assert set(refused) == {f"{key}.{ext}" for ext in ("json", "png") for key in HOSTILE}
    assert "backslash" in refused["up\\..\\..\\windows.json"] and "drive letter" in refused["C:evil.json"]
    assert "symlink" in refused["planted/inside.json"]
    assert "database" in refused["index.sqlite-scratch/rows.png"]
    assert tree(outside) == before and (outside / "secret.json").read_bytes() == b"secret"
    assert not (out / "victim.json").is_symlink()  # the link itself was replaced, never its target
    assert {p.name for p in out.iterdir()} >= {"good.json", "good.png", "victim.json", "victim.png"}
    assert not (out / "index.sqlite-scratch").exists()
    assert (summary["fetched"], summary["samples"]) == (2, 2)


def test_mistakes_are_refused_before_anything_is_written(tmp_path, cli, sample_files):
    source = source_folder(tmp_path / "shards", sample_files, shards=1, per_shard=2)
    db = tmp_path / "db.sqlite"
    index_root(db, source, workers=1)
    out = tmp_path / "out"
    for args, words in ((["--where", "width > 10000"], "selects no sample"),
                        (["--where", "nonsense_column = 1"], "cannot be evaluated"),
                        (["--id", "nope"], "no dataset 'nope'"),
                        (["--as", "shards"], "already names"),
                        (["--shard-list", tmp_path / "u.txt"], "--shard-list is for")):
        result = cli("materialize", out, "--db", db, *args)
        assert result.exit_code == 1 and words in result.stderr, (args, result.stderr)
    inside = cli("materialize", source / "sub", "--db", db)
    assert inside.exit_code == 1 and "overlaps the source" in inside.stderr
    assert not out.exists()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT id FROM datasets").fetchall() == [("shards",)]
    conn.close()


def test_a_full_disk_stops_the_run_with_what_was_placed_recorded(tmp_path, cli, sample_files):
    source = source_folder(tmp_path / "shards", sample_files, shards=1, per_shard=4)
    db, out = tmp_path / "db.sqlite", tmp_path / "out"
    index_root(db, source, workers=1)
    real_open = FS.open
    files_opened: list[str] = []

    def full_after_three_files(path: str, flags: int, *args, **kwargs) -> int:
        if flags & os.O_WRONLY:  # a file opened for writing (never a folder)
            files_opened.append(path)
            if len(files_opened) > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args, **kwargs)

    FS.open = full_after_three_files
    try:
        full = cli("materialize", out, "--db", db, "--workers", "1")
    finally:
        FS.reset()
    assert full.exit_code == 1 and "No space left" in full.stderr and "materialize again" in full.stderr
    placed = tree(out)
    assert 0 < len(placed) < 12
    assert index_root(db, out)["files_read"] == 0  # what was placed is recorded
    rerun = json.loads(cli("materialize", out, "--db", db, "--json").output)
    assert rerun["in_place"] == len(placed) // 2 and rerun["in_place"] + rerun["fetched"] == 6
    assert tree(out) == untarred(source, tmp_path / "untarred")
