"""`indexer extract`: safe against hostile tars, resumable, and indexed in the same pass."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from helpers_index import samples
from helpers_samples import SampleFiles
from hypothesis import given
from hypothesis import strategies as st

from indexer.extract import extract_shards, staging_name, worker
from indexer.extract.fileops import FS, FileOps
from indexer.extract.members import Refused, member_parts
from indexer.extract.sinks import LinkSink
from indexer.ingest.index import index_root
from indexer.ingest.walk import STAGING_PREFIX

A_JSON = ("a.json", b'{"width": 1, "height": 1}')  # the least JSON a sample with a size needs


def files_of(folder: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file in a flat sample folder, pairs adjacent as in webdataset."""
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every path under folder with its content (files) or a marker (folders, symlinks)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = "symlink -> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = path.read_bytes()
    return found


def shard_rows(db: Path) -> dict[str, tuple]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT path, status, members, refused, staging FROM shards").fetchall()
    finally:
        conn.close()
    return {Path(row[0]).name: row[1:] for row in rows}


@pytest.fixture
def fs() -> Iterator[FileOps]:
    """The os calls extract writes into the root through, for a test to make one fail; the real
    ones are back after the test."""
    yield FS
    FS.reset()


@pytest.fixture
def sample_shards(tmp_path: Path, gen, sample_files) -> tuple[list[Path], Path]:
    """Three shards (.tar, .tar.gz, .tgz) of a faulty sample set, one pair split across two shards."""
    src = tmp_path / "src"
    gen.make_dataset(src, 90, faults=0.15, seed=3)
    members = files_of(src)
    split_key = next(name for name, _ in members if name.endswith(".json"))[: -len(".json")]
    split = [m for m in members if m[0].startswith(split_key + ".")]
    rest = [m for m in members if m not in split]
    third = len(rest) // 3
    shards_dir = tmp_path / "shards"
    shards_dir.mkdir()
    shards = [
        sample_files.shard(shards_dir / "a.tar", rest[:third] + split[:1]),
        sample_files.shard(shards_dir / "b.tar.gz", rest[third : 2 * third] + split[1:], mode="w:gz"),
        sample_files.shard(shards_dir / "c.tgz", rest[2 * third :], mode="w:gz"),
    ]
    assert len(split) == 2  # the split key really has its JSON in a.tar and its image in b.tar.gz
    return shards, src


@pytest.mark.parametrize("workers", [1, 2])
def test_index_after_extract_reads_nothing_and_matches_a_separate_index(
    tmp_path: Path, sample_shards, workers: int
) -> None:
    shards, src = sample_shards
    data = tmp_path / "out" / "data"
    db = tmp_path / "extract.sqlite"
    summary = extract_shards(db, shards, data, workers=workers)
    assert summary["dataset"] == "data"
    assert (summary["shards_done"], summary["shards_skipped"], summary["refused"]) == (3, 0, 0)
    assert summary["added"] == summary["samples"] == 90
    assert tree(data) == tree(src)
    assert not [p for p in data.iterdir() if p.name.startswith(STAGING_PREFIX)]

    rerun = index_root(db, data)
    assert (rerun["added"], rerun["changed"], rerun["removed"], rerun["files_read"]) == (0, 0, 0, 0)

    separate = tmp_path / "separate.sqlite"
    index_root(separate, data)
    assert samples(db) == samples(separate)
    assert {row["status"] for row in samples(db).values()} > {"ok"}  # the faults really are in there


def test_second_run_skips_finished_shards_and_redoes_a_replaced_one(tmp_path: Path, sample_shards) -> None:
    shards, _src = sample_shards
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    extract_shards(db, shards, data, workers=1)
    again = extract_shards(db, shards, data, workers=1)
    assert (again["shards_done"], again["shards_skipped"], again["members"]) == (0, 3, 0)
    assert (again["added"], again["changed"]) == (0, 0)

    os.utime(shards[1], ns=(time.time_ns(), time.time_ns()))  # a re-downloaded shard
    third = extract_shards(db, shards, data, workers=1)
    assert (third["shards_done"], third["shards_skipped"]) == (1, 2)
    assert third["members"] > 0
    assert (third["added"], third["changed"]) == (0, 0)
    assert {row[0] for row in shard_rows(db).values()} == {"finished"}


def hostile_tar(sample_files: SampleFiles, path: Path) -> Path:
    """Good pairs mixed with every kind of escape the README's extract section refuses, and a few more."""
    special = sample_files.special
    return sample_files.shard(path, [
        ("good.json", b'{"width": 2, "height": 3, "short_caption": "ok"}'), ("good.png", b"png"),
        ("../escape.json", b"{}"),
        ("sub/../../escape2.json", b"{}"),
        ("/tmp/absolute-escape.json", b"{}"),
        special("link.json", tarfile.SYMTYPE, "/etc/passwd"),
        special("uplink", tarfile.SYMTYPE, ".."),
        ("uplink/through-link.json", b"{}"),
        special("hard.json", tarfile.LNKTYPE, "/etc/passwd"),
        special("hard2.json", tarfile.LNKTYPE, "../outside.txt"),
        special("fifo.json", tarfile.FIFOTYPE),
        special("null.png", tarfile.CHRTYPE),
        special("disk.png", tarfile.BLKTYPE),
        ("..\\..\\windows.json", b"{}"),
        ("C:evil.json", b"{}"),
        (f"{STAGING_PREFIX}extract-x/hidden.json", b"{}"),
        ("victim.json", b'{"short_caption": "replaced the symlink, not its target"}'),
        ("planted/inside.json", b"{}"),
        ("./nested/deeper/fine.json", b'{"width": 5, "height": 5}'),
    ])


@pytest.mark.parametrize("through", ["links", "staging"])
def test_hostile_tar_extracts_its_good_members_and_nothing_outside(tmp_path: Path, cli, monkeypatch,
                                                                   sample_files, through: str) -> None:
    if through == "staging":  # what filesystems without O_TMPFILE get
        monkeypatch.setattr(worker, "links_in_place", lambda staging_fd: False)
    sinks_used = []
    monkeypatch.setattr(worker, "LinkSink", lambda *a: sinks_used.append(1) or LinkSink(*a))
    box = tmp_path / "box"
    data = box / "data"
    data.mkdir(parents=True)
    outside = box / "outside"
    outside.mkdir()
    (outside / "secret.json").write_bytes(b"secret")
    (box / "outside.txt").write_bytes(b"outside")
    os.symlink(outside / "secret.json", data / "victim.json")  # a planted symlink to a file outside
    os.symlink(outside, data / "planted")  # and one to a folder outside
    shard = hostile_tar(sample_files, tmp_path / "hostile.tar")
    before = tree(box)

    result = cli("extract", shard, "--to", data, "--db", tmp_path / "db.sqlite", "--json", "--workers", "1")
    assert result.exit_code == 3
    summary = orjson.loads(result.stdout)
    refused = {r["member"]: r["reason"] for r in summary["refusals"]}
    assert {r["shard"] for r in summary["refusals"]} == {str(shard.resolve())}
    assert set(refused) == {
        "../escape.json", "sub/../../escape2.json", "/tmp/absolute-escape.json", "link.json", "uplink",
        "uplink/through-link.json", "hard.json", "hard2.json", "fifo.json", "null.png", "disk.png",
        "..\\..\\windows.json", "C:evil.json", f"{STAGING_PREFIX}extract-x/hidden.json",
        "planted/inside.json",
    } - {"uplink/through-link.json"}  # the refused link is no folder: that file lands in data/uplink/
    assert "symbolic link" in refused["link.json"] and "hard link" in refused["hard.json"]
    assert "device" in refused["null.png"] and "FIFO" in refused["fifo.json"]
    assert "absolute" in refused["/tmp/absolute-escape.json"] and ".." in refused["../escape.json"]

    after = tree(box)
    outside_before = {k: v for k, v in before.items() if not k.startswith("data/")}
    outside_after = {k: v for k, v in after.items() if not k.startswith("data/")}
    assert outside_after == outside_before  # not a byte outside DIR changed
    assert not Path("/tmp/absolute-escape.json").exists()
    assert {k for k in after if k.startswith("data/")} == {
        "data/good.json", "data/good.png", "data/victim.json", "data/planted", "data/nested",
        "data/nested/deeper", "data/nested/deeper/fine.json", "data/uplink",
        "data/uplink/through-link.json",
    }
    assert len(sinks_used) == (through == "links")
    # a link or rename replaces a planted symlink itself (never its target); O_NOFOLLOW refuses the folder
    assert not (data / "victim.json").is_symlink()
    assert (data / "victim.json").read_bytes().startswith(b'{"short_caption": "replaced')
    assert (outside / "secret.json").read_bytes() == b"secret"
    assert "is a symlink or a file, not a folder" in refused["planted/inside.json"]
    assert summary["samples"] == 4  # good, nested/deeper/fine, uplink/through-link and victim
    assert summary["shards_done"] == 1


NAME_PIECES = st.sampled_from([*"ab./\\:\x00-_ ", "..", "../", "/..", ".indexer-", "C:", "é"])


@given(st.lists(NAME_PIECES, max_size=12).map("".join))
def test_accepted_names_always_stay_inside_the_root(name: str) -> None:
    info = tarfile.TarInfo(name)
    root = "/srv/root"
    try:
        parts = member_parts(info, root)
    except Refused:
        return
    assert all(part not in ("", ".", "..") and "/" not in part and "\\" not in part for part in parts)
    assert all("\x00" not in part and not part.startswith(STAGING_PREFIX) for part in parts)
    target = os.path.normpath(os.path.join(root, *parts))
    assert target.startswith(root + "/") and target == os.path.join(root, *parts)


def test_database_inside_the_root_is_never_overwritten(sample_files, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "index.sqlite"
    planted = "index.sqlite-scratch/task-shard-000000.sqlite"  # where the writer reads rows from
    shard = sample_files.shard(tmp_path / "s.tar", [("index.sqlite", b"not a database"), (planted, b"rows"),
                                                    ("a.json", b"{}")])
    summary = extract_shards(db, [shard], data, workers=1)
    assert [r["member"] for r in summary["refusals"]] == ["index.sqlite", planted]
    assert sqlite3.connect(db).execute("SELECT count(*) FROM samples").fetchone() == (1,)
    assert not (data / "index.sqlite-scratch").exists()  # the run's scratch folder is gone too


def test_a_whole_pair_in_two_shards_is_recorded_as_the_last_one_placed(sample_files, tmp_path: Path) -> None:
    image = b"\x89PNG" + bytes(60)
    first = sample_files.shard(tmp_path / "1.tar", [
        ("k.json", b'{"short_caption": "one", "width": 2, "height": 2}'), ("k.png", image),
        ("only1.json", b'{"width": 1, "height": 1}'), ("only1.png", image)])
    second = sample_files.shard(tmp_path / "2.tar", [
        ("k.json", b'{"short_caption": "two", "width": 2, "height": 2}'), ("k.png", image)])
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    summary = extract_shards(db, [first, second], data, workers=1)
    assert (summary["added"], summary["changed"]) == (2, 1)
    assert orjson.loads(samples(db)["k"]["meta"]) == {"short_caption": "two", "width": 2, "height": 2}
    index_root(tmp_path / "fresh.sqlite", data)
    assert samples(db) == samples(tmp_path / "fresh.sqlite")


@pytest.mark.parametrize("through", ["links", "staging"])
def test_shard_interrupted_while_moving_into_place_is_redone(
    tmp_path: Path, sample_shards, monkeypatch, fs: FileOps, through: str
) -> None:
    """Killed half-way through a shard: unnamed files linked whole (where the filesystem has
    O_TMPFILE), or a staging folder renamed from (elsewhere); either way the rerun redoes it."""
    shards, src = sample_shards
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    if through == "staging":
        monkeypatch.setattr(worker, "links_in_place", lambda staging_fd: False)
    extract_shards(db, shards[:1], data, workers=1)
    step = "link" if through == "links" else "rename"
    real_step = getattr(fs, step)
    calls = []

    def step_then_die(*args, **kwargs):
        calls.append(args)
        if len(calls) == 10:
            raise KeyboardInterrupt  # as if killed half-way through putting shard b in place
        return real_step(*args, **kwargs)

    setattr(fs, step, step_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract_shards(db, shards, data, workers=1)
    fs.reset()
    rows = shard_rows(db)
    assert rows["a.tar"][0] == "finished" and rows["b.tar.gz"][0] == "extracting"
    assert (data / rows["b.tar.gz"][3]).is_dir()  # the shard's staging folder, for the next run to remove
    sources = dict(files_of(src))
    assert all(path.read_bytes() == sources[path.name] for path in data.iterdir() if path.is_file())
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT status FROM runs ORDER BY id DESC LIMIT 1").fetchone() == ("interrupted",)
    conn.close()

    summary = extract_shards(db, shards, data, workers=1)
    assert (summary["shards_done"], summary["shards_skipped"]) == (2, 1)
    assert not [p for p in data.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert tree(data) == tree(src)
    assert {row[0] for row in shard_rows(db).values()} == {"finished"}
    rerun = index_root(db, data)
    assert (rerun["added"], rerun["changed"], rerun["removed"], rerun["files_read"]) == (0, 0, 0, 0)
    assert summary["samples"] == 90


def test_leftover_staging_of_a_shard_not_given_again_is_cleaned(sample_files, tmp_path: Path) -> None:
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    first = sample_files.shard(tmp_path / "first.tar", [("a.json", b"{}")])
    second = sample_files.shard(tmp_path / "second.tar", [("b.json", b"{}")])
    extract_shards(db, [first], data, workers=1)
    leftover = data / staging_name(second.resolve())
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "00000001").write_bytes(b"half")
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO shards (dataset, path, size, mtime_ns, status, staging, started_at)"
        " VALUES ('data', ?, 1, 1, 'extracting', ?, 'then')", (str(second.resolve()), leftover.name))
    conn.commit()
    conn.close()
    extract_shards(db, [first], data, workers=1)
    assert not leftover.exists()
    summary = extract_shards(db, [second], data, workers=1)
    assert summary["shards_done"] == 1 and summary["samples"] == 2


def test_killed_process_leaves_an_unfinished_shard_that_the_next_run_redoes(tmp_path: Path, gen,
                                                                             sample_files) -> None:
    src = tmp_path / "src"
    gen.make_dataset(src, 1500, faults=0.0, seed=1)
    shard = sample_files.shard(tmp_path / "big.tar", files_of(src))
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "indexer", "extract", str(shard), "--to", str(data), "--db", str(db), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (data.is_dir() and sum(1 for _ in data.iterdir()) > 20) and time.monotonic() < deadline:
        assert process.poll() is None, "the extraction finished before it could be killed"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert shard_rows(db)["big.tar"][0] == "extracting"
    sources = dict(files_of(src))
    landed = [path for path in data.iterdir() if path.is_file()]
    assert 0 < len(landed) < len(sources)
    assert all(path.read_bytes() == sources[path.name] for path in landed)  # never half a file

    summary = extract_shards(db, [shard], data, workers=1)
    assert summary["shards_done"] == 1 and summary["samples"] == 1500
    assert not [p for p in data.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert tree(data) == tree(src)
    rerun = index_root(db, data)
    assert (rerun["added"], rerun["changed"], rerun["files_read"]) == (0, 0, 0)


def test_damaged_shard_keeps_its_good_members_and_the_run_goes_on(tmp_path: Path, cli, gen,
                                                                  sample_files) -> None:
    src = tmp_path / "src"
    gen.make_dataset(src, 42, faults=0.0, seed=2)
    members = files_of(src)
    whole = sample_files.shard(tmp_path / "whole.tar", members[:40])
    # no member path in two shards: shards run in parallel, and the same path extracted by two at
    # once leaves a stat record that the next `index` re-checks once (see README)
    cut = sample_files.shard(tmp_path / "cut.tar", members[60:80])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    cut_gz = sample_files.shard(tmp_path / "cut.tgz", members[40:60], mode="w:gz")
    cut_gz.write_bytes(cut_gz.read_bytes()[: cut_gz.stat().st_size * 2 // 3])
    garbled = sample_files.shard(tmp_path / "garbled.tar", members[80:84])
    raw = bytearray(garbled.read_bytes())
    second_header = 512 + (len(members[80][1]) + 511) // 512 * 512
    raw[second_header : second_header + 512] = b"\x7f" * 512  # a header no tar tool would accept
    garbled.write_bytes(bytes(raw))
    not_tar = tmp_path / "junk.tgz"
    not_tar.write_bytes(b"this is not a tar archive at all" * 50)
    data, db = tmp_path / "data", tmp_path / "db.sqlite"

    result = cli("extract", whole, cut, cut_gz, garbled, not_tar, "--to", data, "--db", db, "--workers", "2")
    assert result.exit_code == 1
    assert "damaged or not a tar archive" in result.stderr and str(not_tar.resolve()) in result.stderr
    rows = shard_rows(db)
    assert (rows["whole.tar"][0], rows["cut.tar"][0], rows["junk.tgz"][0]) == ("finished", "failed", "failed")
    assert (rows["cut.tgz"][0], rows["garbled.tar"][0], rows["garbled.tar"][1]) == ("failed", "failed", 1)
    assert "invalid header" in result.stderr and "cut short" in result.stderr
    assert 0 < rows["cut.tar"][1] < 20
    names = {p.name for p in data.iterdir()}
    assert {name for name, _ in members[:40]} <= names
    assert not [n for n in names if n.startswith(STAGING_PREFIX)]
    rerun = index_root(db, data)
    assert (rerun["added"], rerun["changed"], rerun["files_read"]) == (0, 0, 0)


def test_partner_already_in_the_folder_completes_the_pair(tmp_path: Path, sample_files) -> None:
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    data.mkdir()
    sample_files.pair(data, "k", size=(4, 3), json_file=False)  # on disk before, never indexed
    shard = sample_files.shard(tmp_path / "s.tar", [("k.json", b'{"short_caption": "x"}')])
    summary = extract_shards(db, [shard], data, workers=1)
    assert summary["problems"] == {} and summary["files_read"] >= 1
    row = samples(db)["k"]
    assert (row["image"], row["json"], row["width"], row["height"], row["size_from"]) == (
        "k.png", "k.json", 4, 3, "image")
    rerun = index_root(db, data)  # k.png was written just now by someone else: racy, so re-read
    assert (rerun["added"], rerun["changed"], rerun["removed"]) == (0, 0, 0)


def test_cli_summary_and_clean_exit(tmp_path: Path, cli, sample_shards) -> None:
    shards, _src = sample_shards
    data = tmp_path / "target"
    result = cli("extract", *shards, "--to", data, "--db", tmp_path / "db.sqlite")
    assert result.exit_code == 0, result.stderr
    assert "dataset target" in result.stdout and "3 extracted, 0 skipped" in result.stdout
    again = cli("extract", *shards, "--to", data, "--db", tmp_path / "db.sqlite", "--json")
    assert again.exit_code == 0 and orjson.loads(again.stdout)["shards_skipped"] == 3
    missing = cli("extract", tmp_path / "nope.tar", "--to", data, "--db", tmp_path / "db.sqlite")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def test_member_names_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    shard = tmp_path / "latin1.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        for name, data in (("caf\xe9.json", b"{}"), ("fine.json", b'{"width": 2, "height": 2}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data_dir, db = tmp_path / "data", tmp_path / "db.sqlite"
    summary = extract_shards(db, [shard], data_dir, workers=1)
    refused = {r["member"]: r["reason"] for r in summary["refusals"]}
    assert len(refused) == 1 and "not valid UTF-8" in next(iter(refused.values()))
    assert sorted(p.name for p in data_dir.iterdir()) == ["fine.json"]
    rows = sqlite3.connect(db).execute("SELECT key, status FROM samples").fetchall()
    assert rows == [("fine", "missing_image")]


@pytest.mark.parametrize("compression", ["", ":gz"])
def test_members_keep_their_pax_mtime_and_lose_unsafe_mode_bits(tmp_path: Path, compression: str) -> None:
    """Both staging loops (the one-pass reader for .tar, tarfile for compressed shards) restore
    what `tar xf` restores: sub-second pax mtimes, and the data filter's permissions."""
    shard = tmp_path / f"s.tar{'.gz' if compression else ''}"
    with tarfile.open(shard, "w" + compression, format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode, mtime in (("a.json", b'{"width": 4, "height": 4}', 0o4777, 1_700_000_000.5),
                                        ("a.png", b"\x89PNG" + bytes(60), 0o600, 1_600_000_000)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, mtime
            tar.addfile(info, io.BytesIO(data))
    summary = extract_shards(tmp_path / "db.sqlite", [shard], tmp_path / "data", workers=1)
    assert summary["members"] == 2
    json_stat = (tmp_path / "data" / "a.json").stat()
    image_stat = (tmp_path / "data" / "a.png").stat()
    assert abs(json_stat.st_mtime_ns - 1_700_000_000_500_000_000) < 1_000  # tarfile's float: ~ns
    assert image_stat.st_mtime_ns == 1_600_000_000_000_000_000
    assert (json_stat.st_mode & 0o7777, image_stat.st_mode & 0o7777) == (0o755, 0o600)
    assert (tmp_path / "data" / "a.png").read_bytes() == b"\x89PNG" + bytes(60)


def test_json_bytes_stay_right_when_extract_adds_to_a_dataset_whose_figure_is_unknown(tmp_path: Path,
                                                                                        sample_files) -> None:
    first = sample_files.shard(tmp_path / "1.tar", [A_JSON, ("a.png", b"png")])
    second = sample_files.shard(tmp_path / "2.tar", [("b.json", b'{"width": 2, "height": 2, "x": 1}'),
                                                     ("b.png", b"png")])
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    extract_shards(db, [first], data, workers=1)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE datasets SET json_bytes = NULL")  # as schema 011 leaves an older database
    conn.commit()
    conn.close()
    summary = extract_shards(db, [second], data, workers=1)
    assert summary["json_bytes"] == sum(path.stat().st_size for path in data.glob("*.json"))


@pytest.mark.parametrize("through", ["links", "staging"])
def test_a_folder_that_cannot_be_created_refuses_its_members_only(sample_files, tmp_path: Path, monkeypatch,
                                                                   fs: FileOps, through: str) -> None:
    if through == "staging":
        monkeypatch.setattr(worker, "links_in_place", lambda staging_fd: False)
    shard = sample_files.shard(tmp_path / "s.tar", [("locked/x.json", b"{}"), A_JSON, ("a.png", b"png"),
                                                    ("open/b.json", b"{}")])
    real_mkdir = fs.mkdir

    def mkdir(path, *args, **kwargs):
        if os.fspath(path) == "locked":
            raise PermissionError(13, "Permission denied")
        return real_mkdir(path, *args, **kwargs)

    fs.mkdir = mkdir
    summary = extract_shards(tmp_path / "db.sqlite", [shard], tmp_path / "data", workers=1)
    assert summary["failures"] == []
    assert [(r["member"], "Permission denied" in r["reason"]) for r in summary["refusals"]] == [
        ("locked/x.json", True)]
    assert summary["added"] == 2 and (tmp_path / "data" / "open" / "b.json").exists()


def test_a_tar_shard_killed_while_linking_is_redone_whole(tmp_path: Path, gen, sample_files,
                                                          fs: FileOps) -> None:
    src = tmp_path / "src"
    gen.make_dataset(src, 40, faults=0.0, seed=2)
    shard = sample_files.shard(tmp_path / "s.tar", files_of(src))
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    real_link = fs.link
    calls = []

    def link_then_die(*args, **kwargs):
        calls.append(args)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return real_link(*args, **kwargs)

    fs.link = link_then_die
    with pytest.raises(KeyboardInterrupt):
        extract_shards(db, [shard], data, workers=1)
    fs.reset()
    sources = dict(files_of(src))
    landed = [path for path in data.iterdir() if path.is_file()]
    assert 0 < len(landed) < len(sources)
    assert all(path.read_bytes() == sources[path.name] for path in landed)
    summary = extract_shards(db, [shard], data, workers=1)
    assert summary["samples"] == 40 and tree(data) == tree(src)


@pytest.mark.parametrize("kernel_copy", ["refused", "missing"])
def test_image_data_is_copied_without_copy_file_range(tmp_path: Path, sample_files, fs: FileOps,
                                                      kernel_copy: str) -> None:
    """Across filesystems copy_file_range may refuse (EXDEV); outside Linux it does not exist."""
    import errno

    image = bytes(range(256)) * 5000  # larger than one copy chunk would need
    shard = sample_files.shard(tmp_path / "s.tar", [A_JSON, ("a.png", image)])
    refused = []
    if kernel_copy == "missing":
        fs.copy_file_range = None
    else:
        def refuse(*args: int) -> int:
            refused.append(args)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        fs.copy_file_range = refuse
    summary = extract_shards(tmp_path / "db.sqlite", [shard], tmp_path / "data", workers=1)
    assert summary["failures"] == [] and summary["added"] == 1
    assert (tmp_path / "data" / "a.png").read_bytes() == image
    assert len(refused) == (kernel_copy == "refused")  # the image's copy was asked of the kernel once


def test_a_kill_while_replacing_files_leaves_only_the_staging_folder(tmp_path: Path, sample_files,
                                                                     fs: FileOps) -> None:
    """Re-extracting over existing files links each new file under a spare name first: the spare
    lives in the shard's staging folder, which the next run removes with everything in it."""
    shard = sample_files.shard(tmp_path / "s.tar", [A_JSON, ("a.png", b"png")])
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    extract_shards(db, [shard], data, workers=1)
    os.utime(shard, ns=(time.time_ns(), time.time_ns()))  # re-downloaded: extracted again, over a.*

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # killed between linking the spare and renaming it over a.json

    fs.rename = die
    with pytest.raises(KeyboardInterrupt):
        extract_shards(db, [shard], data, workers=1)
    fs.reset()
    leftovers = [p.name for p in data.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert leftovers == [staging_name(shard.resolve())]  # only the staging folder, spare inside
    extract_shards(db, [shard], data, workers=1)
    assert sorted(p.name for p in data.iterdir()) == ["a.json", "a.png"]


def test_a_shard_ending_inside_a_member_while_copied_is_damaged(tmp_path: Path, sample_files,
                                                                fs: FileOps) -> None:
    shard = sample_files.shard(tmp_path / "s.tar", [A_JSON, ("a.png", b"p" * 5000)])

    def shrink(source_fd: int, target_fd: int, count: int, offset: int) -> int:  # cut short under us
        os.truncate(shard, offset)
        return 0

    fs.copy_file_range = shrink
    summary = extract_shards(tmp_path / "db.sqlite", [shard], tmp_path / "data", workers=1)
    assert len(summary["failures"]) == 1 and "damaged" in summary["failures"][0]["error"]


def test_a_kernel_copy_that_stops_early_is_finished_by_reading(tmp_path: Path, sample_files,
                                                               fs: FileOps) -> None:
    image = b"p" * 5000
    shard = sample_files.shard(tmp_path / "s.tar", [A_JSON, ("a.png", image)])
    asked = []

    def copy_nothing(*args: int) -> int:  # some filesystems copy nothing
        asked.append(args)
        return 0

    fs.copy_file_range = copy_nothing
    summary = extract_shards(tmp_path / "db.sqlite", [shard], tmp_path / "data", workers=1)
    assert summary["failures"] == [] and (tmp_path / "data" / "a.png").read_bytes() == image
    assert len(asked) == 1  # the kernel was asked, copied nothing, and the rest was read


def test_a_full_disk_while_renaming_from_staging_fails_the_shard_not_the_run(tmp_path: Path, monkeypatch,
                                                                          sample_files, fs: FileOps) -> None:
    import errno

    monkeypatch.setattr(worker, "links_in_place", lambda staging_fd: False)
    shard = sample_files.shard(tmp_path / "s.tar", [A_JSON, ("a.png", b"png"), ("sub/b.json", b"{}")])
    real_mkdir = fs.mkdir

    def mkdir(path, *args, **kwargs):
        if os.fspath(path) == "sub":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdir(path, *args, **kwargs)

    fs.mkdir = mkdir
    summary = extract_shards(tmp_path / "db.sqlite", [shard], tmp_path / "data", workers=1)
    assert len(summary["failures"]) == 1 and "free some space" in summary["failures"][0]["error"]
    assert summary["added"] == 1  # what was placed before the disk filled is recorded
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_the_database_files_are_refused_whatever_the_case_of_the_member_name(tmp_path: Path,
                                                                              sample_files) -> None:
    data = tmp_path / "data"
    data.mkdir()
    members = [("INDEX.SQLITE", b"x"), ("Index.sqlite-Scratch/a.json", b"{}"), ("a.json", b"{}")]
    shard = sample_files.shard(tmp_path / "s.tar", members)
    summary = extract_shards(data / "index.sqlite", [shard], data, workers=1)
    assert sorted(r["member"] for r in summary["refusals"]) == ["INDEX.SQLITE", "Index.sqlite-Scratch/a.json"]


def test_folders_on_a_filesystem_without_o_tmpfile_or_across_mounts_still_get_their_files(
        sample_files, tmp_path: Path, fs: FileOps) -> None:
    """A mount under the root: O_TMPFILE refused there (files go in under a hidden name in their
    own folder), or spares in the staging folder refused (EXDEV) when files are replaced."""
    import errno

    members = [A_JSON, ("a.png", b"png")]
    shard = sample_files.shard(tmp_path / "s.tar", members)
    data, db = tmp_path / "data", tmp_path / "db.sqlite"
    real_open, real_link = fs.open, fs.link
    tmpfile_opens, exdev_links = [], []

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            tmpfile_opens.append(path)
            if len(tmpfile_opens) > 1:  # the probe passes; the folder the files go to refuses
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    fs.open = open_
    extract_shards(db, [shard], data, workers=1)
    fs.reset()
    assert len(tmpfile_opens) == 3  # the probe, then both files refused O_TMPFILE in their folder
    assert sorted(p.name for p in data.iterdir()) == ["a.json", "a.png"]

    def link(source, name, *args, **kwargs):
        if name.isdigit():  # a spare in the staging folder: another filesystem
            exdev_links.append(name)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(source, name, *args, **kwargs)

    fs.link = link
    os.utime(shard, ns=(time.time_ns(), time.time_ns()))  # extracted again, over its files
    again = extract_shards(db, [shard], data, workers=1)
    assert again["failures"] == [] and again["refused"] == 0
    assert len(exdev_links) == 2  # both replacements had their staging-folder spare refused
    assert sorted(p.name for p in data.iterdir()) == ["a.json", "a.png"]
    assert dict(files_of(data)) == dict(members)
