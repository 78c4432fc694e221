"""The incremental index: pairing, statuses, sizes, change detection, crash and concurrency safety."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_index import files, same_files, samples

from indexer import store
from indexer.db import lock
from indexer.errors import IndexerError
from indexer.ingest import scan, walk
from indexer.ingest.index import index_root


def run(db, root, **kwargs):
    kwargs.setdefault("workers", 1)
    return index_root(db, root, **kwargs)


def test_pairs_and_every_status(data_root, db_path, sample_files, no_racy):
    sample_files.pair(data_root, "ok1")
    sample_files.pair(data_root, "jpgpair", ext="jpg", size=(1792, 1024))
    sample_files.pair(data_root, "nojson", json_file=False, size=(640, 480))
    sample_files.pair(data_root, "noimage", image=False)
    sample_files.pair(data_root, "truncated", json_text='{"short_caption": "cut')
    sample_files.pair(data_root, "empty", json_text="")
    sample_files.pair(data_root, "array", json_text="[1, 2]")
    sample_files.pair(data_root, "latin1", size=(8, 8),
                      json_text='{"short_caption": "caf\xe9"}'.encode("latin-1"))
    sample_files.pair(data_root, "badimage", record={"short_caption": "no size"}, image=False)
    (data_root / "badimage.png").write_bytes(b"this is not an image at all")
    sample_files.pair(data_root, "zeroimage", record={"short_caption": "no size"}, image=False)
    (data_root / "zeroimage.jpg").write_bytes(b"")
    (data_root / "notes.txt").write_text("not a sample")
    (data_root / "readme").write_text("no extension")

    summary = run(db_path, data_root)
    rows = samples(db_path)
    status = {key: row["status"] for key, row in rows.items()}
    assert status == {
        "ok1": "ok", "jpgpair": "ok", "nojson": "missing_json", "noimage": "missing_image",
        "truncated": "bad_json", "empty": "bad_json", "array": "bad_json", "latin1": "bad_json",
        "badimage": "bad_image", "zeroimage": "bad_image",
    }
    assert summary["added"] == 10
    assert summary["problems"] == {"bad_image": 2, "bad_json": 4, "missing_image": 1, "missing_json": 1}
    assert rows["jpgpair"]["image"] == "jpgpair.jpg" and rows["jpgpair"]["json"] == "jpgpair.json"
    assert rows["noimage"]["image"] is None
    assert rows["nojson"]["json"] is None
    assert (rows["nojson"]["width"], rows["nojson"]["height"]) == (640, 480)
    for key, row in rows.items():
        if row["status"] != "ok":
            assert row["error"] and (f"{key}." in row["error"]), row
    assert "empty" in rows["empty"]["error"]
    assert "UTF-8" in rows["latin1"]["error"]
    assert "object" in rows["array"]["error"]
    assert "0 bytes" in rows["zeroimage"]["error"]


def test_meta_keeps_every_field_and_typed_columns(data_root, db_path, gen, sample_files, no_racy):
    record = gen.sample_json(__import__("random").Random(1), "k", "png", (1024, 1024))
    record["extra_field"] = {"nested": [1, "ü"]}
    sample_files.pair(data_root, "k", record=record, size=(1024, 1024))
    run(db_path, data_root)
    row = samples(db_path)["k"]
    assert json.loads(row["meta"]) == record
    conn = sqlite3.connect(db_path)
    typed = conn.execute(
        "SELECT short_caption, long_caption, source, md5_file_hash, md5_pil_hash,"
        " meta ->> '$.extra_field.nested[1]' FROM samples"
    ).fetchone()
    assert typed == (record["short_caption"], record["long_caption"], record["source"],
                     record["md5_file_hash"], record["md5_pil_hash"], "ü")


@pytest.mark.parametrize(
    ("width", "height", "expected", "size_from"),
    [
        (1024, 768, (1024, 768), "json"),
        ("1024", " 768 ", (1024, 768), "json"),
        (1024.0, 768.0, (1024, 768), "json"),
        (None, None, (320, 200), "image"),
        ("wide", "tall", (320, 200), "image"),
        (0, 768, (320, 200), "image"),
        (-5, 768, (320, 200), "image"),
        (True, True, (320, 200), "image"),
        (1024, None, (320, 200), "image"),
    ],
)
def test_size_from_json_or_header(data_root, db_path, sample_files, no_racy, width, height, expected,
                                  size_from):
    record = {"short_caption": "x"}
    if width is not None:
        record["width"] = width
    if height is not None:
        record["height"] = height
    sample_files.pair(data_root, "s", record=record, size=(320, 200))
    run(db_path, data_root)
    row = samples(db_path)["s"]
    assert (row["width"], row["height"], row["size_from"], row["status"]) == (*expected, size_from, "ok")


@pytest.mark.parametrize("ext", ["png", "jpg", "jpeg", "webp", "PNG", "Jpg"])
def test_header_sizes_by_format(data_root, db_path, sample_files, no_racy, ext):
    sample_files.pair(data_root, "h", ext=ext, size=(1792, 1024), record={"short_caption": "x"})
    run(db_path, data_root)
    row = samples(db_path)["h"]
    assert (row["width"], row["height"], row["size_from"]) == (1792, 1024, "image")
    assert row["image"] == f"h.{ext}"


def test_verify_images_prefers_header_and_warns(data_root, db_path, sample_files, no_racy):
    sample_files.pair(data_root, "v", size=(512, 512),
                      record={"short_caption": "x", "width": 1024, "height": 1024})
    run(db_path, data_root)
    assert samples(db_path)["v"]["width"] == 1024  # default: the JSON is trusted
    sample_files.pair(data_root, "v", size=(512, 512), json_file=False)  # touch: re-read with verification
    run(db_path, data_root, verify_images=True)
    row = samples(db_path)["v"]
    assert (row["width"], row["size_from"]) == (512, "image")
    assert "1024x1024" in row["warning"] and "512x512" in row["warning"]


def test_subfolders_and_keys(data_root, db_path, sample_files, no_racy):
    sample_files.pair(data_root, "a/b/deep")
    sample_files.pair(data_root, "a/shallow", ext="jpeg")
    sample_files.pair(data_root, "top")
    run(db_path, data_root)
    rows = samples(db_path)
    assert set(rows) == {"a/b/deep", "a/shallow", "top"}
    assert rows["a/shallow"]["image"] == "a/shallow.jpeg"
    assert {row["dataset"] for row in rows.values()} == {"data"}


def test_symlinked_folder_not_followed_and_loop_terminates(data_root, db_path, sample_files, no_racy,
                                                           tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    sample_files.pair(outside, "elsewhere")
    sample_files.pair(data_root, "inside")
    (data_root / "link_out").symlink_to(outside, target_is_directory=True)
    (data_root / "loop").symlink_to(data_root, target_is_directory=True)
    run(db_path, data_root)
    assert set(samples(db_path)) == {"inside"}


def test_hostile_image_name_is_only_data(data_root, db_path, sample_files, no_racy, tmp_path):
    sample_files.pair(data_root, "evil", record={"image_name": "../../outside.png", "short_caption": "x"})
    run(db_path, data_root)
    row = samples(db_path)["evil"]
    assert row["image"] == "evil.png" and row["status"] == "ok"
    assert "../../outside.png" in row["warning"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "index.sqlite", "index.sqlite.lock"]


def test_rerun_reads_nothing_when_unchanged(data_root, db_path, gen, no_racy):
    gen.make_dataset(data_root, 60, faults=0.3, seed=3)
    first = run(db_path, data_root)
    again = run(db_path, data_root)
    assert first["added"] == first["samples"] == 60
    assert (again["added"], again["changed"], again["removed"], again["files_read"]) == (0, 0, 0, 0)
    assert again["unchanged"] == 60


def test_changes_deletions_renames(data_root, db_path, sample_files, no_racy):
    for i in range(6):
        sample_files.pair(data_root, f"k{i}")
    run(db_path, data_root)
    before = samples(db_path)
    # change a caption, delete a whole pair, delete one half, rename a pair, add one
    sample_files.pair(data_root, "k0", record={"short_caption": "new caption", "width": 10, "height": 20},
                      image=False)
    (data_root / "k1.json").unlink()
    (data_root / "k1.png").unlink()
    (data_root / "k2.png").unlink()
    (data_root / "k3.json").rename(data_root / "r3.json")
    (data_root / "k3.png").rename(data_root / "r3.png")
    sample_files.pair(data_root, "k9")
    summary = run(db_path, data_root)
    rows = samples(db_path)
    assert set(rows) == {"k0", "k2", "r3", "k4", "k5", "k9"}
    assert rows["k0"]["meta"] != before["k0"]["meta"] and rows["k0"]["width"] == 10
    assert rows["k2"]["status"] == "missing_image"
    assert rows["k4"] == before["k4"]
    assert (summary["added"], summary["changed"], summary["removed"]) == (2, 2, 2)
    assert summary["unchanged"] == 2
    assert {p for _d, p, *_ in files(db_path)} == {
        "k0.json", "k0.png", "k2.json", "r3.json", "r3.png", "k4.json", "k4.png", "k5.json",
        "k5.png", "k9.json", "k9.png"}


def test_same_size_rewrite_with_restored_mtime_is_detected(data_root, db_path, sample_files, no_racy):
    sample_files.pair(data_root, "same", record={"short_caption": "AAAA"})
    run(db_path, data_root)
    path = data_root / "same.json"
    st = path.stat()
    text = path.read_text().replace("AAAA", "BBBB")
    with open(path, "r+b") as handle:  # same inode, same size, then the old mtime restored
        handle.write(text.encode())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    summary = run(db_path, data_root)
    assert summary["changed"] == 1
    assert samples(db_path)["same"]["meta"].count("BBBB") == 1


def test_reread_identical_file_counts_unchanged(data_root, db_path, sample_files, no_racy):
    sample_files.pair(data_root, "t")
    run(db_path, data_root)
    os.utime(data_root / "t.json")  # new mtime, same content
    summary = run(db_path, data_root)
    assert (summary["changed"], summary["unchanged"], summary["files_read"]) == (0, 1, 1)


def test_racy_files_are_rechecked_next_run(data_root, db_path, sample_files):
    sample_files.pair(data_root, "young")
    run(db_path, data_root)  # the files are seconds old: recorded as racy
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT min(racy) FROM files").fetchone()[0] == 1
    again = run(db_path, data_root)
    assert again["files_read"] == 1 and again["changed"] == 0  # re-checked, found identical
    old = time.time() - 60
    for path in data_root.iterdir():
        os.utime(path, (old, old))
    # ctime is still young (utime just changed it), so the files stay racy until 3 s have passed
    assert conn.execute("SELECT min(racy) FROM files").fetchone()[0] == 1
    conn.close()


def test_unreadable_json_is_reported_not_fatal(data_root, db_path, sample_files, no_racy, monkeypatch):
    from indexer.ingest import read

    sample_files.pair(data_root, "locked")
    sample_files.pair(data_root, "fine")
    real_open = os.open

    def deny(path, *args, **kwargs):
        if str(path).endswith("locked.json"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(read.os, "open", deny)
    summary = run(db_path, data_root)
    rows = samples(db_path)
    assert rows["locked"]["status"] == "bad_json"
    assert "Permission denied" in rows["locked"]["error"] and "locked.json" in rows["locked"]["error"]
    assert rows["fine"]["status"] == "ok" and summary["added"] == 2


def test_unlistable_folder_keeps_its_samples(data_root, db_path, sample_files, no_racy, monkeypatch):
    sample_files.pair(data_root, "sub/x")
    sample_files.pair(data_root, "y")
    run(db_path, data_root)
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if str(path).rstrip("/").endswith("sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(walk.os, "open", deny)
    summary = run(db_path, data_root)
    assert set(samples(db_path)) == {"sub/x", "y"}
    assert summary["removed"] == 0
    assert summary["unreadable"] == ["sub/: cannot open folder: Permission denied"]


def test_several_datasets_in_one_database(tmp_path, db_path, sample_files, no_racy):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        sample_files.pair(root, "same_key")
    run(db_path, a)
    run(db_path, b, dataset_id="bee")
    run(db_path, a)  # the same root keeps its id
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT dataset, key FROM samples ORDER BY dataset").fetchall() == [
        ("a", "same_key"), ("bee", "same_key")]
    with pytest.raises(IndexerError, match="already indexed as dataset 'a'"):
        run(db_path, a, dataset_id="other")


def test_missing_root_and_unusable_db_fail_clearly(tmp_path, cli):
    result = cli("index", tmp_path / "nope", "--db", tmp_path / "x.sqlite")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    (tmp_path / "d").mkdir()
    result = cli("index", tmp_path / "d", "--db", bad)
    assert result.exit_code == 1 and "unusable" in result.stderr


def test_cli_json_summary(data_root, db_path, cli, gen, no_racy):
    gen.make_dataset(data_root, 20, faults=0.0, seed=2)
    result = cli("index", data_root, "--db", db_path, "--json", "--workers", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for field in ("added", "changed", "removed", "unchanged", "problems", "seconds"):
        assert field in summary
    assert summary["added"] == 20 and summary["problems"] == {}
    runs = sqlite3.connect(db_path).execute("SELECT status, added FROM runs").fetchall()
    assert runs == [("done", 20)]


def test_env_db_and_group_db(data_root, tmp_path, cli, sample_files, monkeypatch, no_racy):
    sample_files.pair(data_root, "e")
    monkeypatch.setenv("INDEXER_DB", str(tmp_path / "env.sqlite"))
    assert cli("index", data_root, "-q").exit_code == 0
    assert "e" in samples(tmp_path / "env.sqlite")
    assert cli("--db", tmp_path / "group.sqlite", "index", data_root, "-q").exit_code == 0
    assert "e" in samples(tmp_path / "group.sqlite")


def test_second_writer_stops_with_clear_message(data_root, db_path, cli, sample_files):
    sample_files.pair(data_root, "w")
    with lock.writer_lock(db_path, "index"):
        result = cli("index", data_root, "--db", db_path)
    assert result.exit_code == 75
    assert "being written by `indexer index`" in result.stderr


def test_parallel_workers_match_single(tmp_path, gen, no_racy):
    root = tmp_path / "data"
    gen.make_dataset(root, 300, faults=0.2, seed=5, subfolders=3)
    run(tmp_path / "one.sqlite", root, workers=1)
    index_root(tmp_path / "two.sqlite", root, workers=2)
    assert samples(tmp_path / "one.sqlite") == samples(tmp_path / "two.sqlite")


def _index_in_subprocess(db: Path, root: Path) -> subprocess.Popen:
    code = (
        "import sys; from indexer.ingest.index import index_root;"
        f"index_root({str(db)!r}, {str(root)!r}, workers=2, keys_per_commit=25)"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def _count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        return conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_killed_run_then_clean_rerun_matches_uninterrupted(tmp_path, gen):
    root = tmp_path / "data"
    gen.make_dataset(root, 1500, faults=0.05, seed=7)
    reference = tmp_path / "reference.sqlite"
    index_root(reference, root, workers=2)
    killed_midway = 0
    for attempt in range(6):
        db = tmp_path / f"killed{attempt}.sqlite"
        proc = _index_in_subprocess(db, root)
        deadline = time.monotonic() + 30
        while _count(db) < 100 * (attempt + 1) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        if 0 < _count(db) < 1500:
            killed_midway += 1
        index_root(db, root, workers=2)
        assert samples(db) == samples(reference)
        assert same_files(files(db), files(reference))
        assert not Path(f"{db}-scratch").exists()  # what the killed first run's readers left
        statuses = sqlite3.connect(db).execute("SELECT status FROM runs ORDER BY id").fetchall()
        assert statuses[-1] == ("done",)
        if killed_midway >= 2:
            break
    assert killed_midway >= 1


def test_readers_are_never_blocked_during_an_index(tmp_path, gen):
    root = tmp_path / "data"
    gen.make_dataset(root, 1500, faults=0.0, seed=8)
    db = tmp_path / "busy.sqlite"
    store.connect(db).close()  # schema exists before the reader starts
    proc = _index_in_subprocess(db, root)
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
    seen = []
    try:
        while proc.poll() is None:
            seen.append(reader.execute("SELECT count(*) FROM samples").fetchone()[0])
            time.sleep(0.002)
    finally:
        proc.wait()
    seen.append(reader.execute("SELECT count(*) FROM samples").fetchone()[0])
    assert proc.returncode == 0
    assert seen == sorted(seen) and seen[-1] == 1500
    assert len(set(seen)) > 2  # the reader saw the index grow, batch by batch


def test_parallel_stat_scan_detects_the_same_changes(tmp_path, gen, no_racy, monkeypatch):
    monkeypatch.setattr(scan, "PARALLEL_STAT_MIN", 1)  # stat in worker processes even when small
    root = tmp_path / "data"
    gen.make_dataset(root, 200, faults=0.0, seed=11, subfolders=2)
    db = tmp_path / "p.sqlite"
    index_root(db, root, workers=2)
    edited = sorted(root.glob("part000/*.json"))[:5]
    for path in edited:
        path.write_text(path.read_text().replace('"short_caption": "', '"short_caption": "edited '))
    for path in sorted(root.glob("part001/*.json"))[:3]:
        path.unlink()
    gen.make_dataset(root, 2, faults=0.0, seed=12, start=5000)  # 2 new pairs beside the folders
    summary = index_root(db, root, workers=2)
    # 5 JSONs re-read; the 3 samples that lost their JSON get their size from the image header
    assert (summary["changed"], summary["added"], summary["files_read"]) == (8, 2, 8 + 2)
    assert sum(1 for row in samples(db).values() if row["status"] == "missing_json") == 3
    again = index_root(db, root, workers=2)
    assert (again["changed"], again["files_read"]) == (0, 0)


def test_caption_change_while_search_sync_is_pending(data_root, db_path, sample_files, no_racy):
    """A run killed before its search sync leaves ids queued; the next caption change must not fail."""
    sample_files.pair(data_root, "p", record={"short_caption": "first"})
    run(db_path, data_root)
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO search_pending (id) SELECT id FROM samples")
    conn.commit()
    conn.close()
    sample_files.pair(data_root, "p", record={"short_caption": "second caption"}, image=False)
    summary = run(db_path, data_root)
    assert summary["changed"] == 1
    conn = sqlite3.connect(db_path)
    hits = conn.execute("SELECT rowid FROM samples_fts WHERE samples_fts MATCH 'second'").fetchall()
    assert hits == conn.execute("SELECT id FROM samples").fetchall()


def test_names_that_are_not_utf8_are_reported_not_fatal(data_root, db_path, sample_files, no_racy):
    sample_files.pair(data_root, os.fsdecode(b"bad\xffname"), size=(4, 4),
                      record={"short_caption": "x", "width": 4, "height": 4})
    os.mkdir(os.fsencode(data_root) + b"/dir\xfe")
    sample_files.pair(data_root, "fine")
    sample_files.pair(data_root, "new\nline")
    summary = run(db_path, data_root)
    assert set(samples(db_path)) == {"fine", "new\nline"}
    assert summary["bad_names_count"] == 3
    assert "bad\\xffname.json" in summary["bad_names"] and "dir\\xfe" in summary["bad_names"]


def test_json_bytes_is_kept_by_each_write_and_summed_only_when_not_known(data_root, db_path, sample_files,
                                                                         no_racy):
    def on_disk() -> int:
        return sum(p.stat().st_size for p in data_root.glob("*.json"))

    for key in ("a", "b", "c"):
        sample_files.pair(data_root, key)
    assert run(db_path, data_root)["json_bytes"] == on_disk()
    sample_files.pair(data_root, "a", record={"short_caption": "a much longer caption than before " * 3})
    (data_root / "b.json").unlink()
    sample_files.pair(data_root, "d")
    assert run(db_path, data_root)["json_bytes"] == on_disk()  # changed, removed and added
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE datasets SET json_bytes = 1")  # a stale figure shows whether it was re-summed
    conn.commit()
    assert run(db_path, data_root)["json_bytes"] == 1  # nothing changed: the stored figure
    conn.execute("UPDATE datasets SET json_bytes = NULL")  # not known (a database from before schema 011)
    conn.commit()
    assert run(db_path, data_root)["json_bytes"] == on_disk()
    conn.close()


def test_entries_that_are_not_regular_files_are_reported_and_never_opened(data_root, db_path, sample_files,
                                                                           tmp_path):
    import socket

    sample_files.pair(data_root, "good")
    sample_files.pair(data_root, "piped", json_file=False)
    os.mkfifo(data_root / "piped.json")  # opening it for reading would wait for a writer forever
    os.mkfifo(data_root / "lonely.json")
    (data_root / "folder.json").mkdir()
    sample_files.pair(data_root / "folder.json", "inner")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(data_root / "sock.png"))
    os.symlink(data_root / "nowhere.json", data_root / "dangling.json")
    code = ("import sys, json; from indexer.ingest.index import index_root; "
            "print(json.dumps(index_root(sys.argv[1], sys.argv[2], workers=1)))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(db_path), str(data_root)],
                              capture_output=True, text=True, timeout=60)
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["not_files_count"] == 5
    reported = dict(line.split(": ", 1) for line in summary["not_files"])
    assert reported.keys() == {"piped.json", "lonely.json", "folder.json", "sock.png", "dangling.json"}
    assert "named pipe" in reported["piped.json"] and "socket" in reported["sock.png"]
    assert "folder" in reported["folder.json"] and "symlink to nothing" in reported["dangling.json"]
    rows = samples(db_path)
    assert rows["good"]["status"] == "ok" and rows["folder.json/inner"]["status"] == "ok"
    assert rows["piped"]["status"] == "missing_json"  # its JSON is a FIFO: only the image counts
    assert "lonely" not in rows and "sock" not in rows and "dangling" not in rows


def test_a_listed_file_replaced_by_a_fifo_is_not_read(tmp_path):
    from indexer.ingest.read import read_sample

    os.mkfifo(tmp_path / "x.json")
    sample, files, files_read = read_sample(str(tmp_path), "x", ["x.json"], time.time_ns())
    assert (sample, files, files_read) == (None, [], 0)


def test_a_root_without_samples_says_so_and_points_at_extract(tmp_path, db_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no samples here")
    result = cli("index", empty, "--db", db_path)
    assert result.exit_code == 0
    assert f"no sample files (.json, .png, .jpg, .jpeg, .webp) found under {empty}" in result.output
    assert "extract" not in result.output
    shards = tmp_path / "shards"
    (shards / "part").mkdir(parents=True)
    (shards / "part" / "data-000000.tar").write_bytes(b"")
    (shards / "data-000001.tgz").write_bytes(b"")
    summary = json.loads(cli("index", shards, "--db", db_path, "--json").output)
    # the .tar is read in place (an empty file is a damaged tar); the compressed one cannot be
    assert summary["samples"] == 0 and len(summary["notes"]) == 1
    assert summary["shards"]["seen"] == 1 and "part/data-000000.tar" in summary["shards"]["errors"][0]
    assert "data-000001.tgz" in summary["notes"][0] and "indexer extract" in summary["notes"][0]


def test_hidden_files_are_never_samples(data_root, db_path, sample_files, no_racy):
    sample_files.pair(data_root, "x")
    (data_root / ".aitk_size.json").write_text('{"__version__": "0.1.2"}')
    (data_root / "._x.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    sample_files.pair(data_root, "sub/.hidden")
    summary = run(db_path, data_root)
    assert set(samples(db_path)) == {"x"} and summary["files_seen"] == 2
    assert walk.split_sample_path("sub/.hidden.json") is None
    assert walk.split_sample_path("sub/visible.json") == ("sub/visible", "json")


def test_header_size_is_the_stored_size_whatever_the_exif_orientation(data_root, db_path, gen, sample_files,
                                                                       no_racy):
    from helpers_export import exif_jpeg

    turned = exif_jpeg(gen, 1200, 800, 6)  # displayed as 800x1200
    sample_files.pair(data_root, "turned", ext="jpg", image_data=turned,
                      record={"short_caption": "no size in the JSON"})
    run(db_path, data_root)
    row = samples(db_path)["turned"]
    assert (row["width"], row["height"], row["size_from"]) == (1200, 800, "image")


def test_an_unwritable_scratch_database_ends_a_first_run_with_one_clear_error(data_root, db_path, cli,
                                                                               sample_files, monkeypatch):
    from indexer.ingest import bulk

    sample_files.pair(data_root, "a")

    def full(path, results):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(bulk, "write_scratch", full)
    result = cli("index", data_root, "--db", db_path, "--workers", "1")
    assert result.exit_code == 1
    assert "cannot write scratch database" in result.stderr and "free some space" in result.stderr
    assert "Traceback" not in result.stderr
    assert not Path(f"{db_path}-scratch").exists()


def test_each_run_gets_its_own_unguessable_scratch_folder(tmp_path):
    """A tar member cannot be placed where a reader will write (whatever the filesystem's case
    rules): the run folder's name is random and only its owner may enter it."""
    import stat as stat_module

    from indexer.ingest import bulk

    conn = store.connect(tmp_path / "db.sqlite")
    try:
        first, second = bulk.scratch_folder(conn), bulk.scratch_folder(conn)
    finally:
        conn.close()
    assert first != second
    assert Path(first).parent == Path(second).parent == (tmp_path / "db.sqlite-scratch").resolve()
    assert stat_module.S_IMODE(os.stat(first).st_mode) == 0o700
    bulk.remove_scratch(tmp_path / "db.sqlite")
    assert not (tmp_path / "db.sqlite-scratch").exists()
