"""`export captions`: a `<stem>.txt` beside each exported image, written only where it changed.

`caption_files` remembers every .txt this tool wrote or adopted, with its size and mtime as
written. A .txt without such a record, or one whose size/mtime moved since, belongs to the user:
it is adopted when it already holds the caption, else left alone (unless --overwrite). The .txt
path is the sample's key (its image path minus the extension) from the index, never anything a
JSON says, and its folder must resolve inside the dataset root.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from indexer import media, store
from indexer.db.counts import sample_count
from indexer.db.status import Status
from indexer.errors import IndexerError
from indexer.export import DEFAULT_CAPTIONS
from indexer.export.record import record_export
from indexer.export.select import (
    ReadSnapshot,
    caption_sql,
    check_selection,
    excluded_summary,
    execute_where,
    open_snapshot,
    options_json,
    select_rows,
)
from indexer.export.selection import Selection, make_selection
from indexer.progress import bar

RECORDS_PER_COMMIT = 5_000
NEW_FILES_PER_BATCH = 2_000
PENDING = "-1"  # size/mtime of a record whose file is being created
MAX_REPORTED_ERRORS = 10
TEMP_SUFFIX = ".indexer-tmp"
# The caption_files record of a sample's .txt, folded into one value per row.
RECORD_SQL = (
    "(SELECT c.caption_hash || ' ' || c.size || ' ' || c.mtime_ns FROM caption_files AS c"
    " WHERE c.dataset = samples.dataset AND c.path = samples.key || '.txt')"
)
# A run that would remove more than half of its caption files, and more than this many, stops
# unless the user confirms: it is far more often a wrong --caption/--where than a real change.
MASS_REMOVAL_MIN = 10
STALE_REASONS = {
    "deleted": "no longer in the index", "no_size": "without a size",
    "where": "excluded by the --where", "no_caption": "without a caption in the --caption fields",
}
COUNT_NAMES = ("written", "unchanged", "adopted", "overwritten", "removed", "left_alone", "failed")


def caption_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class RecordWriter:
    """Batches caption_files changes into short write transactions on their own connection.

    A read-only database records nothing: files are then written only where no file is, or
    where the records it already holds say so, and nothing new becomes this tool's to remove.
    """

    def __init__(self, db_path: str | os.PathLike[str], dataset: str) -> None:
        self.conn = None if media.read_only_reason(db_path) else store.connect(db_path)
        self.dataset = dataset
        self.upserts: list[tuple] = []
        self.deletes: list[tuple] = []

    def upsert(self, path: str, key: str, digest: str, size: int, mtime_ns: int) -> None:
        self.upserts.append((self.dataset, path, key, digest, size, mtime_ns))
        self._maybe_flush()

    def delete(self, path: str) -> None:
        self.deletes.append((self.dataset, path))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self.upserts) + len(self.deletes) >= RECORDS_PER_COMMIT:
            self.flush()

    def flush(self) -> None:
        if self.conn is None:  # a read-only database: nothing is recorded
            self.upserts.clear()
            self.deletes.clear()
            return
        if not self.upserts and not self.deletes:
            return
        with store.transaction(self.conn):
            self.conn.executemany("DELETE FROM caption_files WHERE dataset = ? AND path = ?", self.deletes)
            self.conn.executemany(
                "INSERT INTO caption_files (dataset, path, sample_key, caption_hash, size, mtime_ns)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dataset, path) DO UPDATE SET"
                " sample_key = excluded.sample_key, caption_hash = excluded.caption_hash,"
                " size = excluded.size, mtime_ns = excluded.mtime_ns",
                self.upserts,
            )
        self.upserts.clear()
        self.deletes.clear()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class CaptionRun:
    """State of one export: where to write, what was done, what failed."""

    root: str
    overwrite: bool
    records: RecordWriter
    counts: collections.Counter = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)
    safe_dirs: dict[str, bool] = field(default_factory=dict)
    new_files: list[tuple[str, str, str, bytes, str]] = field(default_factory=list)

    def inside_root(self, rel_path: str) -> bool:
        """The .txt's folder resolves inside the root (a symlinked folder could lead elsewhere)."""
        folder = rel_path.rpartition("/")[0]
        known = self.safe_dirs.get(folder)
        if known is None:
            real = os.path.realpath(os.path.join(self.root, folder))
            known = real == self.root or real.startswith(self.root + os.sep)
            self.safe_dirs[folder] = known
        return known

    def fail(self, rel_path: str, exc: OSError, *, removing: bool = False) -> None:
        """Count a file that could not be written (or removed); its record says what is really
        there, so the next run tries it again."""
        self.counts["failed"] += 1
        if not removing:
            self.counts["not_written"] += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(f"{rel_path}: {exc.strerror or exc}")


def export_captions(
    db_path: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    captions: Sequence[str] = DEFAULT_CAPTIONS,
    where: str | None = None,
    overwrite: bool = False,
    allow_mass_removal: bool = False,
    progress: bool = False,
    caption_mode: str = "first",
) -> dict:
    """Bring the .txt files under the dataset root in line with the selection; return the counts.

    Everything that could refuse the run (a field no sample has, a mass removal not confirmed
    with allow_mass_removal) is decided before the first file is touched. With caption_mode
    "all" a .txt holds one caption a line, as SimpleTuner splits it.
    """
    started = time.monotonic()
    selection = make_selection(captions, where, caption_mode=caption_mode)
    with open_snapshot(db_path, dataset_id) as snapshot:
        root = os.path.realpath(snapshot.root)
        if not os.path.isdir(root):
            raise IndexerError(f"dataset root {snapshot.root} is missing: mount or restore it, then rerun")
        check_selection(snapshot, selection, refuse_empty_where=False)
        owned, stale = count_stale(snapshot, selection)
        if not allow_mass_removal:
            check_mass_removal(snapshot, selection, owned, stale)
        run = CaptionRun(root, overwrite, RecordWriter(db_path, snapshot.dataset))
        try:
            exported = _write_selected(snapshot, selection, run, progress)
            if stale:
                _remove_stale(snapshot, selection, run)
            run.records.flush()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # keep the records of what was written
                run.records.flush()
            raise
        finally:
            run.records.close()
    in_place = exported - run.counts["not_written"]
    summary = {
        "kind": "captions",
        "dataset": snapshot.dataset,
        "root": str(snapshot.root),
        "rows": in_place,
        "selected": exported,
        "complete": not run.counts["failed"],
        **{name: run.counts[name] for name in COUNT_NAMES},
        "excluded": excluded_summary(snapshot.excluded),
        "errors": run.errors,
        "data_version": snapshot.data_version,
        "seconds": round(time.monotonic() - started, 3),
    }
    record_export(db_path, snapshot.dataset, "captions", snapshot.root,
                  options=options_json(selection.options()),
                  data_version=snapshot.data_version, rows=in_place, summary=summary,
                  failed=run.counts["failed"])
    return summary


def count_stale(snapshot: ReadSnapshot, selection: Selection) -> tuple[int, collections.Counter]:
    """The caption files this tool owns, and those it would remove by reason (as _remove_stale).

    caption_sql (first mode) decides "has a caption" for both caption modes: `all` finds a caption
    exactly when first mode does.
    """
    params: dict = {"dataset": snapshot.dataset}
    excluded = f"WHEN CASE WHEN ({selection.where}) THEN 0 ELSE 1 END THEN 'where'" if selection.where else ""
    sql = (
        f"SELECT reason, count(*) FROM (SELECT coalesce((SELECT CASE WHEN samples.status != '{Status.OK}'"
        " THEN samples.status WHEN NOT coalesce(samples.width AND samples.height, 0) THEN 'no_size'"
        f" {excluded} WHEN ({caption_sql(selection.captions, params)}) IS NULL THEN 'no_caption'"
        " ELSE '' END FROM samples WHERE samples.dataset = c.dataset AND samples.key = c.sample_key),"
        " 'deleted') AS reason FROM caption_files AS c WHERE c.dataset = :dataset) GROUP BY reason"
    )
    counts = collections.Counter(dict(execute_where(snapshot.conn, sql, params, selection.where).fetchall()))
    owned = sum(counts.values())
    del counts[""]
    return owned, counts


def check_mass_removal(snapshot: ReadSnapshot, selection: Selection, owned: int,
                       stale: collections.Counter) -> None:
    removing = sum(stale.values())
    if removing <= MASS_REMOVAL_MIN or removing * 2 <= owned:
        return
    why = ", ".join(f"{count:,} {STALE_REASONS.get(reason, 'now ' + reason)}"
                    for reason, count in stale.most_common())
    raise IndexerError(
        f"export captions would remove {removing:,} of the {owned:,} caption files it wrote under "
        f"{snapshot.root} ({why}; --caption {' '.join(selection.captions)}"
        f"{', --where ' + repr(selection.where) if selection.where else ''}); nothing was changed. "
        "Check --caption and --where; if the removal is intended, rerun with --allow-mass-removal"
    )


def _write_selected(snapshot: ReadSnapshot, selection: Selection, run: CaptionRun, progress: bool) -> int:
    total = sample_count(snapshot.conn, snapshot.dataset) if progress else None
    exported = 0
    with bar(progress, desc="captions", unit=" samples", total=total) as progress_bar:
        for batch in select_rows(snapshot, selection, [RECORD_SQL]):
            for key, _image, _width, _height, caption, record in batch:
                rel_path = key + ".txt"
                if not run.inside_root(rel_path):
                    snapshot.excluded["unsafe_path"] += 1
                    continue
                exported += 1
                _sync_caption(run, key, rel_path, caption.encode("utf-8"), record)
            progress_bar.update(len(batch))
    _create_new(run)
    return exported


def _sync_caption(run: CaptionRun, key: str, rel_path: str, data: bytes, record: str | None) -> None:
    """Decide, for one exported sample, whether its .txt is written, kept, adopted or left alone."""
    digest = caption_hash(data)
    full = os.path.join(run.root, rel_path)
    try:
        st: os.stat_result | None = os.lstat(full)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        run.fail(rel_path, exc)
        return
    if record is not None:
        old_digest, old_size, old_mtime = record.split(" ")
        if old_size == PENDING and (st is None or stat.S_ISREG(st.st_mode)):
            _write(run, key, rel_path, full, data, digest, "written")  # a run died while creating it
            return
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == int(old_size) \
                and st.st_mtime_ns == int(old_mtime):
            if old_digest == digest:
                run.counts["unchanged"] += 1
            else:
                _write(run, key, rel_path, full, data, digest, "written")
            return
        if st is not None:  # edited or replaced since we wrote it: it is the user's file now
            run.records.delete(rel_path)
    if st is None:
        run.new_files.append((key, rel_path, full, data, digest))
        if len(run.new_files) >= NEW_FILES_PER_BATCH:
            _create_new(run)
    elif stat.S_ISREG(st.st_mode) and st.st_size == len(data) and _holds(full, data):
        run.records.upsert(rel_path, key, digest, st.st_size, st.st_mtime_ns)
        run.counts["adopted"] += 1
    elif run.overwrite and (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        _write(run, key, rel_path, full, data, digest, "overwritten")
    else:
        run.counts["left_alone"] += 1


def _create_new(run: CaptionRun) -> None:
    """Create missing .txt files in place (no temp + rename: half the directory operations).

    Their records are committed first as PENDING, so a run killed mid-write leaves files the next
    run knows are its own and rewrites, instead of mistaking a half-written one for the user's.
    """
    for key, rel_path, _full, _data, digest in run.new_files:
        run.records.upsert(rel_path, key, digest, int(PENDING), int(PENDING))
    run.records.flush()
    for key, rel_path, full, data, digest in run.new_files:
        try:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except FileExistsError:  # appeared since the check: someone else's file
            run.records.delete(rel_path)
            run.counts["left_alone"] += 1
            continue
        except OSError as exc:
            run.records.delete(rel_path)
            run.fail(rel_path, exc)
            continue
        try:
            st = _write_all(fd, data)
        except OSError as exc:
            raise IndexerError(f"cannot write {full}: {exc}; free space or fix permissions and rerun"
                               ) from exc
        run.records.upsert(rel_path, key, digest, st.st_size, st.st_mtime_ns)
        run.counts["written"] += 1
    run.new_files.clear()


def _write_all(fd: int, data: bytes) -> os.stat_result:
    """Write every byte (one os.write may write fewer), close fd; the stat of the written file."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return os.fstat(fd)
    finally:
        os.close(fd)


def _holds(full: str, data: bytes) -> bool:
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return os.read(fd, len(data) + 1) == data
    finally:
        os.close(fd)


def _write(run: CaptionRun, key: str, rel_path: str, full: str, data: bytes, digest: str,
           counter: str) -> None:
    """Write beside the target and rename over it: readers never see half a caption, and a
    symlink in the .txt's place is replaced, never followed."""
    temp = full + TEMP_SUFFIX
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
        st = _write_all(fd, data)
        os.replace(temp, full)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise IndexerError(f"disk full while writing {full}: free space and rerun") from exc
        run.fail(rel_path, exc)
        return
    run.records.upsert(rel_path, key, digest, st.st_size, st.st_mtime_ns)
    run.counts[counter] += 1
    if counter == "overwritten":
        run.counts["written"] += 1


def _remove_stale(snapshot: ReadSnapshot, selection: Selection, run: CaptionRun) -> None:
    """Delete the .txt files this tool wrote for samples that are no longer exported."""
    params: dict = {"dataset": snapshot.dataset}
    keep = f" AND ({selection.where})" if selection.where else ""
    sql = (
        "SELECT c.path, c.size, c.mtime_ns FROM caption_files AS c WHERE c.dataset = :dataset"
        " AND NOT EXISTS (SELECT 1 FROM samples WHERE samples.dataset = c.dataset"
        f" AND samples.key = c.sample_key AND samples.status = '{Status.OK}' AND samples.width"
        f" AND samples.height{keep} AND ({caption_sql(selection.captions, params)}) IS NOT NULL)"
    )
    for rel_path, size, mtime_ns in execute_where(snapshot.conn, sql, params, selection.where):
        full = os.path.join(run.root, rel_path)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            run.records.delete(rel_path)
            continue
        except OSError as exc:  # the record stays: the next run tries again
            run.fail(rel_path, exc, removing=True)
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (size, mtime_ns) \
                and run.inside_root(rel_path):
            try:
                os.unlink(full)
            except OSError as exc:
                run.fail(rel_path, exc, removing=True)
                continue
            run.counts["removed"] += 1
        else:
            run.counts["left_alone"] += 1
        run.records.delete(rel_path)

