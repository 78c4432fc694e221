"""`indexer watch`: a real watcher in a subprocess on a temp folder, plus in-thread checks of the
fallbacks (polling, overflow rescan, periodic rescan), the export hooks and the debouncer rules."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer import store
from indexer.db import lock
from indexer.errors import DatabaseLocked
from indexer.export.registry import follow_up_exports
from indexer.export.selection import SELECTION_FIELDS, make_selection
from indexer.watch import watch_root
from indexer.watch.debounce import Debouncer
from indexer.watch.events import EventInbox
from indexer.watch.observer import inotify_limit_message

POLL = 0.1


def wait_for(predicate, what: str, timeout: float = 10.0):
    """Poll until predicate() is truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


def statuses(db: Path) -> dict[str, str]:
    """key -> status, read the way another process would (read-only, short transaction)."""
    if not db.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return dict(conn.execute("SELECT key, status FROM samples").fetchall())
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the watcher has not created the schema yet
        return {}


def has(db: Path, expected: dict[str, str]):
    def check() -> bool:
        now = statuses(db)
        return all(now.get(k) == v for k, v in expected.items())
    return check


def lacks(db: Path, *keys: str):
    return lambda: not set(keys) & set(statuses(db))


# -- the real thing: a watcher process following a folder ------------------------------------


class WatchProcess:
    """`indexer watch --json` running in its own process on a folder; its output is read as it
    comes (events: the JSON lines of stdout so far)."""

    def __init__(self, root: Path, db: Path) -> None:
        self.root, self.db = root, db
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "indexer", "watch", str(root), "--db", str(db), "--json",
             "--settle", "0.5", "--workers", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def events(self) -> list[dict]:
        return [json.loads(line) for line in list(self.out)]

    def wait(self, predicate: Callable[[], object], what: str) -> None:
        """wait_for, failing at once (with the watcher's stderr) if the watcher has exited."""
        wait_for(lambda: predicate() or self.proc.poll() is not None, what)
        if self.proc.poll() is not None:
            self._join()
            raise AssertionError(f"the watcher exited ({self.proc.returncode}) while waiting for {what}: "
                                 + "".join(self.err))

    def stop(self) -> list[dict]:
        """SIGTERM, as a service manager stops it: it must exit 0; returns every event it printed."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self._join()
            raise AssertionError("the watcher did not stop within 15 s of SIGTERM; it printed:\n"
                                 + "".join(self.out + self.err)) from None
        self._join()
        assert self.proc.returncode == 0, "".join(self.err)
        return self.events

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stop()

    def _join(self) -> None:
        self.proc.wait()
        for reader in self.readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()  # type: ignore[union-attr]


@pytest.fixture
def watcher(sample_files, data_root: Path, db_path: Path) -> Iterator[WatchProcess]:
    """A watcher process on data_root, which held a0 and a1 when it started, once it has reported
    its catch-up index of them."""
    sample_files.pair(data_root, "a0")
    sample_files.pair(data_root, "a1")
    watching = WatchProcess(data_root, db_path)
    try:
        watching.wait(lambda: any(e.get("reason") == "catch-up" for e in watching.events), "the catch-up")
        yield watching
    finally:
        watching.close()


def batches(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "batch"]


def test_watch_indexes_what_is_there_when_it_starts(watcher: WatchProcess) -> None:
    first = watcher.events[0]
    assert first["event"] == "rescan" and first["reason"] == "catch-up" and first["added"] == 2
    assert statuses(watcher.db) == {"a0": "ok", "a1": "ok"}


def test_a_second_writer_is_told_who_holds_the_database(watcher: WatchProcess, cli) -> None:
    locked = cli("index", watcher.root, "--db", watcher.db)
    assert locked.exit_code == 75 and "indexer watch" in locked.stderr


def test_pairs_copied_in_are_indexed_in_batches(watcher: WatchProcess, sample_files) -> None:
    for i in range(5):
        sample_files.pair(watcher.root, f"b{i}")
    watcher.wait(has(watcher.db, {f"b{i}": "ok" for i in range(5)}), "copied pairs")
    watcher.wait(lambda: sum(batch["added"] for batch in batches(watcher.events)) == 5,
                 "batches that report the 5 pairs")


def test_a_json_written_in_pieces_is_never_recorded_as_bad_json(watcher: WatchProcess, sample_files,
                                                                gen) -> None:
    """Written over ~1.6 s, each piece landing within the settle time (0.5 s) of the one before."""
    sample_files.pair(watcher.root, "slow", json_file=False)
    text = json.dumps(gen.sample_json(random.Random(1), "slow", "png", (512, 512)))
    pieces = [text[i * len(text) // 4:(i + 1) * len(text) // 4] for i in range(4)]
    with open(watcher.root / "slow.json", "w", encoding="utf-8") as handle:
        for piece in pieces:
            handle.write(piece)
            handle.flush()
            deadline = time.monotonic() + 0.4
            while time.monotonic() < deadline:
                assert statuses(watcher.db).get("slow") != "bad_json", "half-written JSON recorded"
                time.sleep(0.05)
    watcher.wait(has(watcher.db, {"slow": "ok"}), "the JSON written in pieces")


def test_an_image_arriving_after_its_json_was_indexed_completes_the_sample(watcher: WatchProcess,
                                                                           sample_files) -> None:
    sample_files.pair(watcher.root, "late", image=False)
    watcher.wait(has(watcher.db, {"late": "missing_image"}), "the lone JSON")
    sample_files.pair(watcher.root, "late", json_file=False)
    watcher.wait(has(watcher.db, {"late": "ok"}), "the late image")


def test_a_complete_but_broken_json_is_recorded_as_such_once_it_settles(watcher: WatchProcess,
                                                                         sample_files) -> None:
    sample_files.json(watcher.root, "broken", '{"short_caption": "cut')
    watcher.wait(has(watcher.db, {"broken": "bad_json"}), "the broken JSON")


def test_deleted_and_renamed_samples_follow_their_files(watcher: WatchProcess, sample_files) -> None:
    """A rename is a delete and an add; the run's totals add up to what is left."""
    sample_files.pair(watcher.root, "gone")
    sample_files.pair(watcher.root, "moved")
    watcher.wait(has(watcher.db, {"gone": "ok", "moved": "ok"}), "the pairs to delete and rename")
    (watcher.root / "gone.json").unlink()
    (watcher.root / "gone.png").unlink()
    for ext in ("json", "png"):
        os.rename(watcher.root / f"moved.{ext}", watcher.root / f"renamed.{ext}")
    watcher.wait(lacks(watcher.db, "gone", "moved"), "deleted and renamed-away samples to go")
    watcher.wait(has(watcher.db, {"renamed": "ok"}), "the renamed sample")
    final = watcher.stop()[-1]
    assert set(statuses(watcher.db)) == {"a0", "a1", "renamed"}
    assert (final["added"], final["removed"]) == (5, 2)  # a0, a1, gone, moved, renamed; gone, moved


def test_a_folder_renamed_in_and_out_brings_and_takes_its_samples(watcher: WatchProcess, sample_files,
                                                                  tmp_path: Path) -> None:
    stage = tmp_path / "stage" / "shard"
    for i in range(3):
        sample_files.pair(stage, f"k{i}")
    sample_files.pair(stage / "inner", "deep")
    os.rename(stage, watcher.root / "shard")
    moved_in = {f"shard/k{i}": "ok" for i in range(3)} | {"shard/inner/deep": "ok"}
    watcher.wait(has(watcher.db, moved_in), "the moved-in folder's samples")
    os.rename(watcher.root / "shard", tmp_path / "gone")
    watcher.wait(lacks(watcher.db, *moved_in), "the moved-out folder's samples to go")
    assert set(statuses(watcher.db)) == {"a0", "a1"}


def test_other_processes_read_and_export_while_it_runs(watcher: WatchProcess, sample_files, cli) -> None:
    reader = store.connect(watcher.db, readonly=True)
    try:
        assert reader.execute("SELECT count(*) FROM samples").fetchone()[0] == 2
    finally:
        reader.close()
    exported = cli("export", "captions", "--db", watcher.db, "--json")
    assert exported.exit_code == 0, exported.stderr
    assert (watcher.root / "a0.txt").is_file() and (watcher.root / "a1.txt").is_file()
    # A .txt beside a sample is not a sample: no batch takes it. A pair written after the export
    # is batched after its events, so once the pair is in, those events have been seen.
    sample_files.pair(watcher.root, "last")
    watcher.wait(lambda: sum(batch["added"] for batch in batches(watcher.events)) == 1,
                 "the batch of the pair written after the export")
    assert sum(batch["paths"] for batch in batches(watcher.events)) == 2  # last.json and last.png only
    assert set(statuses(watcher.db)) == {"a0", "a1", "last"}


def test_a_stopped_watch_exits_cleanly_and_records_its_run(watcher: WatchProcess, sample_files) -> None:
    sample_files.pair(watcher.root, "last")
    watcher.wait(has(watcher.db, {"last": "ok"}), "the last pair")
    final = watcher.stop()[-1]  # exit status 0 is checked by stop()
    assert final["event"] == "stopped" and final["status"] == "done"
    assert final["added"] - final["removed"] == len(statuses(watcher.db)) == 3
    conn = sqlite3.connect(watcher.db)
    try:
        run = conn.execute("SELECT command, status, finished_at FROM runs ORDER BY id DESC").fetchone()
    finally:
        conn.close()
    assert run[0] == "watch" and run[1] == "done" and run[2]


# -- in-thread sessions: fallbacks, rescans and export hooks ---------------------------------


class SilentObserver:
    """An observer that never reports anything: only rescans can find changes."""

    def schedule(self, *args, **kwargs) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


EXPORT_OPTIONS = ("export_parquet", "export_captions", "allow_mass_removal", "exporters")


def watch(db: Path, root: Path, **options):
    """watch_root with the exports the CLI would build from the same options (the selection ones,
    captions, where and caption_mode, made into one Selection as the CLI does)."""
    exports = {name: options.pop(name) for name in EXPORT_OPTIONS if name in options}
    chosen = make_selection(**{name: options.pop(name) for name in SELECTION_FIELDS if name in options})
    return watch_root(db, root, after_change=follow_up_exports(db, chosen, **exports), **options)


@contextlib.contextmanager
def session(db: Path, root: Path, **options):
    """Run watch_root in a thread; yields the list of events it reports."""
    events: list[dict] = []
    stop = threading.Event()
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["summary"] = watch(db, root, on_batch=events.append, stop_event=stop,
                                       workers=1, **options)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(e.get("reason") == "catch-up" for e in events) or "error" in outcome,
                 "the catch-up scan")
        yield events
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    events.append(outcome["summary"])


def test_export_hooks_run_after_changing_batches_only(sample_files, data_root, db_path, tmp_path):
    calls: list[tuple[str, dict]] = []

    def fake_parquet(db, **options):
        calls.append(("parquet", options))
        return {"rows": len(statuses(Path(db)))}

    def failing_captions(db, **options):
        calls.append(("captions", options))
        raise RuntimeError("disk full")

    out = tmp_path / "out.parquet"
    with session(db_path, data_root, settle=0.2, export_parquet=str(out), export_captions=True,
                 captions=("long_caption", "short_caption"), where="width >= 512",
                 exporters={"parquet": fake_parquet, "captions": failing_captions}) as events:
        wait_for(lambda: len(calls) == 2, "the exports at start")
        sample_files.pair(data_root, "x")
        wait_for(lambda: len(calls) == 4, "the exports after a batch")
        assert calls[2] == ("parquet", {"out": str(out), "dataset_id": "data",
                                        "captions": ("long_caption", "short_caption"),
                                        "where": "width >= 512", "progress": False,
                                        "columns": (), "caption_mode": "first"})
        assert calls[3][1]["overwrite"] is False
        os.utime(data_root / "x.json")  # touched, same content: re-read, nothing changed
        wait_for(lambda: sum(e["event"] == "batch" for e in events) == 2, "the touch batch")
    # The session has ended, so the loop iteration that wrote the touch batch is over: had the
    # batch made the exports due, they would have run in that iteration, before the next tick.
    assert len(calls) == 4
    exported = [e for e in events if e["event"] == "export"]
    assert [e["result"] for e in exported] == [{"rows": 0}, {"rows": 1}]
    assert sum("export captions failed: disk full" in e.get("message", "") for e in events) == 2
    assert events[-1]["exports"] == 2


def test_inotify_limit_falls_back_to_polling_with_advice(sample_files, data_root, db_path):
    def exhausted():
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    with session(db_path, data_root, settle=0.1, observer_factory=exhausted) as events:
        warning = next(e["message"] for e in events if e["event"] == "warning")
        assert "fs.inotify.max_user_watches" in warning and "polling" in warning
        sample_files.pair(data_root, "polled")
        wait_for(has(db_path, {"polled": "ok"}), "the polled pair")


def test_queue_overflow_triggers_a_rescan(sample_files, data_root, db_path):
    with session(db_path, data_root, settle=0.1, observer_factory=SilentObserver) as events:
        sample_files.pair(data_root, "unseen")
        assert "unseen" not in statuses(db_path)  # no events, no periodic scan yet
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        wait_for(has(db_path, {"unseen": "ok"}), "the overflow rescan")
    assert [e["reason"] for e in events if e["event"] == "rescan"][:2] == ["catch-up", "overflow"]
    # Nothing but the overflow rescan found it: no batch came before, and that rescan added it.
    overflow = next(e for e in events if e.get("reason") == "overflow")
    assert overflow["added"] == 1
    assert not any(e["event"] == "batch" for e in events[:events.index(overflow)])


def test_periodic_rescan_catches_what_events_missed(sample_files, data_root, db_path):
    with session(db_path, data_root, settle=0.1, rescan_every=0.3,
                 observer_factory=SilentObserver) as events:
        sample_files.pair(data_root, "missed")
        wait_for(has(db_path, {"missed": "ok"}), "the periodic rescan")
    assert "periodic" in [e.get("reason") for e in events]


def test_a_second_writer_cannot_start_a_watch(data_root, db_path):
    store.connect(db_path).close()
    with lock.writer_lock(db_path, "index"), pytest.raises(DatabaseLocked, match="indexer index"):
        watch_root(db_path, data_root, settle=0.1)


# -- the rules, without a filesystem ---------------------------------------------------------


class FakeFiles:
    def __init__(self) -> None:
        self.looks: dict[str, tuple | None] = {}

    def look(self, path: str):
        return self.looks.get(path)


def test_debouncer_waits_for_quiet_and_stable_stat():
    files = FakeFiles()
    debouncer = Debouncer(1.0, files.look)
    files.looks["a.json"] = (10, 1, 1, 1)
    debouncer.touch("a.json", 0.0)
    assert debouncer.pop_ready(0.4) == []  # not quiet long enough to look
    assert debouncer.pop_ready(0.6) == []  # first look
    files.looks["a.json"] = (20, 2, 2, 1)  # grew without an event reaching us
    assert debouncer.pop_ready(1.1) == []  # the second look disagrees
    assert debouncer.pop_ready(1.3) == ["a.json"]
    assert len(debouncer) == 0


def test_debouncer_releases_a_key_only_when_all_its_files_are_ready():
    files = FakeFiles()
    debouncer = Debouncer(1.0, files.look)
    debouncer.touch("k.json", 0.0)
    debouncer.touch("k.png", 0.9)
    debouncer.touch("other.png", 0.0)  # a missing file settles too (a deletion)
    assert debouncer.pop_ready(0.6) == []
    assert debouncer.pop_ready(1.2) == ["other.png"]
    assert debouncer.pop_ready(1.5) == []
    assert sorted(debouncer.pop_ready(2.0)) == ["k.json", "k.png"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.booleans()), min_size=1, max_size=30),
       st.floats(0.1, 2.0))
def test_debouncer_never_releases_before_settle(steps, settle):
    """Whatever the event times and stat changes, a path comes out only after `settle` of quiet
    and with its last two looks equal."""
    files = FakeFiles()
    debouncer = Debouncer(settle, files.look)
    now, last_event, size = 0.0, None, 0
    for gap, is_event in steps:
        now += gap
        if is_event:
            size += 1
            files.looks["p.json"] = (size, size, size, 1)
            debouncer.touch("p.json", now)
            last_event = now
        released = debouncer.pop_ready(now)
        if released:
            assert last_event is not None and now - last_event >= settle
            last_event = None
    if last_event is not None:  # once the writes stop, the path comes out within two looks
        first = debouncer.pop_ready(now + settle)
        assert first + debouncer.pop_ready(now + settle + 0.01) == ["p.json"]


def test_inbox_keeps_sample_paths_and_folders_only(tmp_path):
    from watchdog.events import DirMovedEvent, FileCreatedEvent, FileModifiedEvent, FileMovedEvent

    root = tmp_path / "root"
    inbox = EventInbox(root)
    inbox.on_any_event(FileCreatedEvent(f"{root}/a.json"))
    inbox.on_any_event(FileModifiedEvent(f"{root}/a.txt"))  # caption export output: not a sample
    inbox.on_any_event(FileCreatedEvent(f"{root}/.indexer-tmp/x.json"))  # extract's staging
    inbox.on_any_event(FileCreatedEvent(f"{tmp_path}/elsewhere/y.json"))
    inbox.on_any_event(FileMovedEvent(f"{root}/b.png", f"{root}/sub/c.PNG"))
    inbox.on_any_event(DirMovedEvent(f"{root}/.indexer-stage/s1", f"{root}/s1"))
    files, added, removed = inbox.drain()
    assert sorted(files) == ["a.json", "b.png", "sub/c.PNG"]
    assert list(added) == ["s1"] and removed == {}
    assert inbox.drain() == ({}, {}, {})


def test_inotify_limit_message_names_the_setting():
    assert "fs.inotify.max_user_watches" in inotify_limit_message(OSError(errno.ENOSPC, "limit"))
    assert "fs.inotify.max_user_instances" in inotify_limit_message(OSError(errno.EMFILE, "limit"))


def test_real_exports_follow_the_index(sample_files, data_root, db_path, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "dataset.parquet"
    sample_files.pair(data_root, "first")
    with session(db_path, data_root, settle=0.2, export_parquet=str(out), export_captions=True):
        wait_for(lambda: out.exists() and (data_root / "first.txt").exists(), "the first exports")
        sample_files.pair(data_root, "second")

        def exported_both() -> bool:
            table = pq.read_table(out) if out.exists() else None
            return table is not None and sorted(table.column("filename").to_pylist()) == [
                "first.png", "second.png"] and (data_root / "second.txt").exists()
        wait_for(exported_both, "the exports after the second pair")
    caption = json.loads((data_root / "second.json").read_text(encoding="utf-8"))["short_caption"]
    assert (data_root / "second.txt").read_text(encoding="utf-8") == caption


def test_a_bad_export_option_stops_the_watch_at_once(sample_files, data_root, db_path, tmp_path):
    from indexer.errors import IndexerError

    sample_files.pair(data_root, "a")
    with pytest.raises(IndexerError):
        watch(db_path, data_root, settle=0.1, workers=1, where="no_such_column >",
                   export_parquet=str(tmp_path / "out.parquet"), observer_factory=SilentObserver)
    assert statuses(db_path) == {"a": "ok"}  # the catch-up was committed before the export failed
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT status FROM runs").fetchone() == ("failed",)
    conn.close()


def test_the_mass_removal_guard_stops_the_watch_at_start_and_warns_later(sample_files, data_root, db_path):
    from indexer.errors import IndexerError
    from indexer.export.captions import export_captions

    for number in range(24):
        sample_files.pair(data_root, f"m{number:02d}")
    with session(db_path, data_root, settle=0.2, export_captions=True) as events:
        wait_for(lambda: any(e["event"] == "export" for e in events), "the export at start")
        for number in range(13):
            (data_root / f"m{number:02d}.json").unlink()
            (data_root / f"m{number:02d}.png").unlink()
        warning = wait_for(lambda: next((e["message"] for e in events if e["event"] == "warning"), None),
                           "the refused removal")
        assert "would remove 13 of the 24 caption files" in warning
        assert "--allow-mass-removal" in warning
    assert len(list(data_root.glob("*.txt"))) == 24  # nothing removed
    assert [e["event"] for e in events].count("export") == 1

    with pytest.raises(IndexerError, match="would remove 13 of the 24"):
        watch(db_path, data_root, settle=0.1, workers=1, export_captions=True,
                   observer_factory=SilentObserver)
    assert len(list(data_root.glob("*.txt"))) == 24
    with session(db_path, data_root, settle=0.1, export_captions=True, allow_mass_removal=True) as events:
        wait_for(lambda: any(e["event"] == "export" for e in events), "the confirmed export")
    assert sorted(p.stem for p in data_root.glob("*.txt")) == [f"m{n:02d}" for n in range(13, 24)]
    assert export_captions(db_path)["removed"] == 0


def test_export_results_are_told_in_words_and_an_incomplete_one_warns(sample_files, data_root, db_path,
                                                                      tmp_path):
    from indexer.render.runs import format_event

    def incomplete_captions(db, **options):
        return {"kind": "captions", "root": str(data_root), "rows": 0, "written": 0, "overwritten": 0,
                "unchanged": 0, "adopted": 0, "removed": 0, "left_alone": 0, "failed": 1,
                "complete": False, "errors": ["a.txt: Permission denied"]}

    sample_files.pair(data_root, "a")
    out = tmp_path / "out.parquet"
    with session(db_path, data_root, settle=0.1, export_parquet=str(out), export_captions=True,
                 exporters={"captions": incomplete_captions}) as events:
        wait_for(lambda: sum(e["event"] == "export" for e in events) == 2, "the exports at start")
        warning = wait_for(lambda: next((e["message"] for e in events if e["event"] == "warning"), None),
                           "the incomplete export's warning")
    assert "export captions incomplete: 1 files" in warning and "a.txt: Permission denied" in warning
    parquet, captions = (format_event(e) for e in events if e["event"] == "export")
    assert f"export parquet: wrote 1 rows to {out}" in parquet and "excluded: none" in parquet
    assert "{" not in parquet + captions
    assert f"export captions: 0 captions under {data_root}; written 0" in captions and "FAILED 1" in captions
