"""Every command, given a user's mistake or a broken environment, ends in one clear line and a
documented exit code: never a Python traceback."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.errors import EXIT_FAILURE, EXIT_USAGE

DOCUMENTED = {EXIT_FAILURE, EXIT_USAGE}


def commands(tmp: Path, db: Path, root: Path, out_dir: Path) -> dict[str, list[str]]:
    """Each command with arguments that are fine except for what the case breaks."""
    return {
        "index": ["index", str(root), "--db", str(db), "--quiet"],
        "export parquet": ["export", "parquet", str(out_dir / "x.parquet"), "--db", str(db)],
        "export captions": ["export", "captions", "--db", str(db)],
        "export config": ["export", "config", str(out_dir / "x.json"), "--db", str(db)],
        "export jsonl": ["export", "jsonl", str(out_dir / "x.jsonl"), "--db", str(db)],
        "query": ["query", "SELECT 1", "--db", str(db)],
        "stats": ["stats", "--db", str(db)],
        "problems": ["problems", "--db", str(db)],
        "search": ["search", "cat", "--db", str(db)],
        "report": ["report", str(out_dir / "x.html"), "--db", str(db)],
        "extract": ["extract", str(tmp / "shard.tar"), "--to", str(out_dir / "extracted"), "--db", str(db)],
        "watch": ["watch", str(root), "--db", str(db), "--quiet"],
    }


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, gen):
    """A small indexed dataset and a tar shard: the good inputs every case starts from."""
    tmp = tmp_path_factory.mktemp("errors")
    root = tmp / "data"
    gen.make_dataset(root, 20, faults=0.0, seed=1)
    db = tmp / "good.sqlite"
    run(["index", str(root), "--db", str(db), "--quiet"], expect_ok=True)
    shard = tmp / "shard.tar"
    subprocess.run(["tar", "cf", str(shard), "-C", str(root), "."], check=True)
    return tmp, root, db


def run(args: list[str], expect_ok: bool = False) -> subprocess.CompletedProcess:
    # watch would run until stopped when nothing is wrong: the timeout only guards the suite
    proc = subprocess.run([sys.executable, "-m", "indexer", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_clear_line(proc: subprocess.CompletedProcess, case: str) -> None:
    assert "Traceback" not in proc.stderr, f"{case}: {proc.stderr}"
    assert proc.returncode in DOCUMENTED, f"{case}: exit {proc.returncode}: {proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(("error:", "Error:")), f"{case}: {proc.stderr}"
    assert "unexpected" not in lines[-1], f"{case}: an unmapped exception: {lines[-1]}"


def broken(tmp: Path, root: Path, good_db: Path, case: str) -> tuple[Path, Path, Path]:
    """(db, root, out_dir) for one kind of mistake."""
    base = tmp / case.replace(" ", "_")
    base.mkdir(exist_ok=True)
    if case == "db is a folder":
        db = base / "folder.sqlite"
        db.mkdir(exist_ok=True)
        return db, root, base
    if case == "db is not sqlite":
        db = base / "notes.sqlite"
        db.write_text("these are my notes, not a database\n" * 50)
        return db, root, base
    if case == "missing inputs":
        return base / "missing.sqlite", tmp / "no-such-root", base
    if case == "unwritable outputs":
        assert not UNWRITABLE.joinpath("x.html").exists()
        return good_db, root, UNWRITABLE
    # the output folder is a file, so nothing can be created under it
    blocker = base / "not-a-folder"
    blocker.write_text("x")
    return good_db, root, blocker


CASES = ["missing inputs", "db is a folder", "db is not sqlite", "unwritable outputs",
         "output folder is a file"]
UNWRITABLE = Path("/sys")  # even root may not create files there
WRITES_OUTPUT = {"export parquet", "export config", "export jsonl", "report", "extract"}


@pytest.mark.parametrize("case", CASES)
def test_every_command_fails_in_one_line(indexed, case):
    tmp, root, good_db = indexed
    db, case_root, out_dir = broken(tmp, root, good_db, case)
    failures = []
    for name, args in commands(tmp, db, case_root, out_dir).items():
        if case in ("unwritable outputs", "output folder is a file") and name not in WRITES_OUTPUT:
            continue
        if case == "missing inputs" and name == "extract":
            args = [*args[:1], str(tmp / "no-such-shard.tar"), *args[2:]]
        proc = run(args)
        try:
            assert_one_clear_line(proc, f"{case} / {name}")
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


def test_a_refused_database_file_is_left_as_it_was(indexed):
    tmp, root, _good_db = indexed
    db, _, _ = broken(tmp, root, _good_db, "db is not sqlite")
    before = db.read_bytes()
    for args in commands(tmp, db, root, tmp).values():
        if args[0] != "watch":
            run(args)
    assert db.read_bytes() == before


def test_ctrl_c_says_what_was_kept(tmp_path, gen):
    root = tmp_path / "data"
    gen.make_dataset(root, 20000, faults=0.0, seed=2)
    db = tmp_path / "db.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "indexer", "index", str(root), "--db", str(db),
                             "--workers", "1"], stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None:  # interrupt once the first batch is committed
            if db.exists():
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                with contextlib.suppress(sqlite3.Error):
                    if conn.execute("SELECT count(*) FROM samples").fetchone()[0]:
                        break
                conn.close()
        proc.send_signal(signal.SIGINT)
    finally:
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert "interrupted: everything committed so far is kept" in stderr.splitlines()[-1]
    rerun = run(["index", str(root), "--db", str(db), "--json"], expect_ok=True)
    assert '"samples":20000' in rerun.stdout.replace(" ", "")
