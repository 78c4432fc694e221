"""A database on read-only media (a mounted dataset volume, a team share, a published copy): every
reading command and every export answers from it as from a writable copy, nothing is ever written
to it, and a writing command says it is read-only. The folder is really read-only: a read-only
bind mount (tests/readonly_media.py), which binds root too."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from readonly_media import folder_state, run_readonly, run_writable

from indexer import store
from indexer.ingest.derived import defer_derived
from indexer.ingest.index import index_root

SHARD_KEYS = [f"shard/s{i}" for i in range(6)]


pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled


@pytest.fixture
def copies(gen, sample_files, tmp_path: Path) -> tuple[Path, Path]:
    """(live, published): a cleanly closed database of loose samples (faults mixed in) and a tar
    shard read in place, and a copy of it alone in a folder that tests mount read-only."""
    root = tmp_path / "data"
    gen.make_dataset(root, 60, faults=0.3, seed=11)
    members: dict[str, bytes] = {}
    for key in SHARD_KEYS:
        members.update(sample_files.members(key, short_caption=f"stone castle number {key[-1]}"))
    sample_files.shard(root / "shard.tar", members)
    live = tmp_path / "live" / "index.sqlite"
    live.parent.mkdir()
    index_root(live, root, workers=1)
    published = tmp_path / "share" / "index.sqlite"
    published.parent.mkdir()
    shutil.copy2(live, published)
    assert sorted(p.name for p in live.parent.iterdir()) == ["index.sqlite", "index.sqlite.lock"]
    return live, published


READS = [
    ["query", "SELECT key, status, width, height, error FROM samples ORDER BY key", "--format", "json"],
    ["query", "SELECT * FROM problems ORDER BY key", "--format", "csv"],
    ["stats", "--json"],
    ["stats"],
    ["problems", "--json", "--warnings"],
    ["search", "castle", "--json", "-n", "100"],
    ["search", '"stone castle"', "-n", "100"],
]


def test_reading_commands_answer_the_same_from_a_read_only_mount(copies):
    live, published = copies
    share = published.parent
    before = folder_state(share)
    for args in READS:
        expected = run_writable([*args, "--db", str(live)])
        got = run_readonly(share, [*args, "--db", str(published)])
        assert expected.returncode == 0 and expected.stdout, (args, expected.stderr)
        assert (got.returncode, got.stdout, got.stderr) == (0, expected.stdout, expected.stderr), args
    assert folder_state(share) == before


def test_report_from_a_read_only_mount(copies, tmp_path):
    live, published = copies
    got = run_readonly(published.parent, ["report", str(tmp_path / "ro.html"), "--db", str(published)])
    assert got.returncode == 0, got.stderr
    assert run_writable(["report", str(tmp_path / "rw.html"), "--db", str(live)]).returncode == 0
    assert (tmp_path / "ro.html").read_text() == (tmp_path / "rw.html").read_text()


def exported_files(root: Path, out: Path) -> dict[str, object]:
    """Every file an export wrote: under OUT's folder, and the caption, webshart and ai-toolkit
    files beside the samples (a Parquet by its rows)."""
    found: dict[str, object] = {}
    beside = [*root.rglob("*.txt"), root / "shard.json", root / ".aitk_size.json"]
    for path in sorted(p for p in [*out.rglob("*"), *beside] if p.is_file()):
        found[str(path)] = pq.read_table(path).to_pylist() if path.suffix == ".parquet" else path.read_bytes()
    return found


def test_every_export_works_from_a_read_only_mount_and_records_nothing(copies, tmp_path):
    """The same files as from a writable copy; the summaries say nothing was recorded."""
    live, published = copies
    root, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    assert run_writable(["export", "webshart", "--db", str(live)]).returncode == 0
    (root / "shard.json").unlink()
    shutil.copy2(live, published)  # published after a webshart export, which `config` points at
    parquet = str(out / "x.parquet")
    exports = [
        ["parquet", parquet], ["jsonl", str(out / "m.jsonl")], ["kohya", str(out / "k.jsonl")],
        ["musubi", str(out / "u.jsonl"), "--config", str(out / "u.toml")],
        ["captions"], ["aitk"], ["webshart"],
        ["config", str(out / "c.json"), "--parquet", parquet],
        ["config", str(out / "w.json"), "--backend", "webshart"],
    ]
    share = published.parent
    before = folder_state(share)
    results = []
    for db, run in ((published, lambda args: run_readonly(share, args)), (live, run_writable)):
        runs = [run(["export", *args, "--db", str(db), "--json"]) for args in exports]
        assert [done.returncode for done in runs] == [0] * len(exports), [done.stderr for done in runs]
        files = exported_files(root, out)
        for path in files:
            Path(path).unlink()
        results.append(([json.loads(done.stdout) for done in runs], files))
    (ro_summaries, ro_files), (rw_summaries, rw_files) = results
    assert folder_state(share) == before
    assert ro_files == rw_files and any(name.endswith(".txt") for name in ro_files)
    names = {Path(name).name for name in ro_files if not name.endswith(".txt")}
    assert names == {"x.parquet", "m.jsonl", "k.jsonl", "u.jsonl", "u.toml", "c.json", "w.json", "shard.json",
                     ".aitk_size.json"}
    for ro, rw in zip(ro_summaries, rw_summaries, strict=True):
        assert "read-only" in ro.pop("not_recorded") and "not_recorded" not in rw
        assert ro.get("rows") == rw.get("rows") and ro.get("excluded") == rw.get("excluded")


def test_writing_commands_say_the_database_is_read_only(copies, tmp_path):
    _live, published = copies
    share, root = published.parent, tmp_path / "data"
    before = folder_state(share)
    for args in (["index", str(root)], ["extract", str(root / "shard.tar"), "--to", str(tmp_path / "x")],
                 ["watch", str(root)]):
        done = run_readonly(share, [*args, "--db", str(published)])
        assert done.returncode == 1, (args, done.stderr)
        assert f"database {published} is read-only" in done.stderr and "copy it" in done.stderr, args
        assert "unable to open" not in done.stderr and "Traceback" not in done.stderr
    done = run_readonly(share, ["index", str(root), "--db", str(share / "new.sqlite")])
    assert done.returncode == 1 and f"cannot create database {share / 'new.sqlite'}" in done.stderr
    assert folder_state(share) == before


def test_stats_and_search_on_a_read_only_database_whose_derived_structures_were_never_built(copies):
    """A copy published after a run stopped before its build: the same figures and hits, computed
    without the indexes (a temporary search index), and a note saying why and what to do."""
    live, published = copies
    conn = store.connect(published)
    defer_derived(conn)
    conn.close()
    share = published.parent
    expected = json.loads(run_writable(["stats", "--json", "--db", str(live)]).stdout)
    got = json.loads(run_readonly(share, ["stats", "--json", "--db", str(published)]).stdout)
    derived = got.pop("derived")
    assert derived["waiting"] > 0 and derived["search"] and derived["read_only"]
    assert got.pop("derived_ready") is False and expected.pop("derived_ready") is True
    assert expected.pop("derived") is None and got == expected
    text = run_readonly(share, ["stats", "--db", str(published)])
    assert text.returncode == 0 and "stats indexes are not built yet" in text.stdout
    assert "build them on a writable copy" in text.stdout and "holds" not in text.stdout
    for words in ("castle", "dragon", '"stone castle"'):
        args = ["search", words, "--json", "-n", "100"]
        hits = run_readonly(share, [*args, "--db", str(published)])
        assert hits.stdout == run_writable([*args, "--db", str(live)]).stdout and hits.stdout
        assert "built a temporary one" in hits.stderr and "read-only" in hits.stderr


def wal_copy(live: Path, share: Path, *, shm: bool) -> Path:
    """A copy taken while a writer had commits in its -wal (not closed cleanly)."""
    writer = sqlite3.connect(live, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE runs SET command = 'edited'")
        for suffix in ("", "-wal", *(["-shm"] if shm else [])):
            shutil.copy2(f"{live}{suffix}", share / f"index.sqlite{suffix}")
    finally:
        writer.close()
    return share / "index.sqlite"


def test_a_copy_with_commits_in_its_wal(copies):
    """With its -shm beside it the -wal's commits are read; without, SQLite cannot read them and the
    message says what to do, never a raw 'unable to open database file'."""
    live, published = copies
    share = published.parent
    query = ["query", "SELECT DISTINCT command FROM runs", "--format", "csv", "--db", str(published)]
    wal_copy(live, share, shm=True)
    done = run_readonly(share, query)
    assert (done.returncode, done.stdout.split()) == (0, ["command", "edited"]), done.stderr
    (share / "index.sqlite-shm").unlink()
    for args in (query, ["stats", "--db", str(published)]):
        done = run_readonly(share, args)
        assert done.returncode == 1 and "was not closed cleanly" in done.stderr, done.stderr
        assert "wal_checkpoint" in done.stderr and "unable to open" not in done.stderr
