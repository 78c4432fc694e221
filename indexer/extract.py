"""The `extract` stage: unpack webdataset tar shards into a dataset root and index them in one pass.

Safety: members are read one by one from the tar stream; only regular files and folders whose
normalised name stays inside the root are written, and every write goes through directory file
descriptors opened with O_NOFOLLOW, so neither a hostile member nor a symlink already in the root
can put a byte outside it. The checks are those of PEP 706's `data` filter; the filter itself is not
called, because it resolves every member's path on disk twice (a third of extract's time), which
the O_NOFOLLOW folder descriptors make unnecessary.

Resumability: each shard is first written into its own staging folder (`.indexer-extract-*`, which
the index walk skips), then its files are renamed into place, then its samples are recorded and the
shard row is marked finished. A killed run leaves the shard unfinished, so the next run removes the
staging folder and does that shard again from the start; finished shards are skipped.

One pass: JSON members are kept in memory as they stream by and parsed by the index's own reader,
and files are stat-ed after the rename (rename changes ctime), so a following `indexer index` finds
every file unchanged and reads nothing.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import hashlib
import multiprocessing
import os
import queue
import re
import shutil
import sqlite3
import stat as stat_module
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from indexer import store
from indexer.db.counts import problem_counts
from indexer.db.fts import sync_search_index
from indexer.errors import IndexerError
from indexer.ingest.derived import defer_derived
from indexer.ingest.pipeline import Counts, compact, json_bytes, stored_files, write_results
from indexer.ingest.read import FileRecord, SampleRecord, read_sample
from indexer.ingest.run import resolve_root, writer_run
from indexer.ingest.scan import stat_signature
from indexer.ingest.walk import JSON_EXTENSION, SAMPLE_EXTENSIONS, STAGING_PREFIX, split_sample_path
from indexer.ingest.workers import default_workers, init_worker
from indexer.progress import bar

STAGING_NAME = STAGING_PREFIX + "extract-"
JSON_PRELOAD_LIMIT = 64 << 20  # larger JSON members are read back from disk like `index` would
COPY_CHUNK = 1 << 20
PROGRESS_STEP = 4 << 20
WRITE_BATCH = 4096  # keys per transaction
MAX_OPEN_FOLDERS = 256
ONLY_FILES = "only regular files and folders are extracted"
DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Result = tuple[str, SampleRecord | None, list[FileRecord], int]


class Refused(Exception):
    """A member that is not written; the message is the reason shown to the user."""


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker process needs to extract one shard (plain, picklable values)."""

    path: str
    root: str
    staging: str
    size: int
    mtime_ns: int
    reserved: frozenset[str]  # root-relative paths no member may take (the database's own files)
    scan_start_ns: int


@dataclass
class ShardOutcome:
    """What extracting one shard did; the writer records it."""

    path: str
    members: int = 0
    bytes: int = 0
    refusals: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    results: list[Result] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Member checks


def member_parts(member: tarfile.TarInfo, root: str, reserved: frozenset[str] = frozenset()) -> list[str]:
    """The member's path components under root; raises Refused for anything unsafe.

    An empty list means the member names the root itself (a `./` folder entry): nothing to do.
    """
    if member.issym():
        raise Refused(f"symbolic link (to {member.linkname!r}); {ONLY_FILES}")
    if member.islnk():
        raise Refused(f"hard link (to {member.linkname!r}); {ONLY_FILES}")
    if member.ischr() or member.isblk():
        raise Refused(f"device file; {ONLY_FILES}")
    if member.isfifo():
        raise Refused(f"FIFO (named pipe); {ONLY_FILES}")
    if not (member.isreg() or member.isdir()):
        raise Refused(f"unsupported member type {member.type!r}; {ONLY_FILES}")
    parts = _name_parts(member.name)
    if not parts and member.isreg():
        raise Refused("a file member without a name")
    if parts and "/".join(parts) in reserved:
        raise Refused("would overwrite the index database, which lives in the target folder")
    return parts


def printable(name: str) -> str:
    """A member name fit for JSON and the database: undecodable bytes shown as \\xNN."""
    if name.isascii():
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _name_parts(name: str) -> list[str]:
    if "\x00" in name:
        raise Refused("name contains a NUL byte")
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused("name is not valid UTF-8 (the index stores text paths)") from None
    if "\\" in name:
        raise Refused("name contains a backslash (a Windows path separator)")
    if name.startswith("/"):
        raise Refused("absolute path; members must be relative to the target folder")
    if DRIVE_LETTER.match(name):
        raise Refused("name starts with a drive letter")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Refused("name contains '..' and could escape the target folder")
    if any(part.startswith(STAGING_PREFIX) for part in parts):
        raise Refused(f"names starting with {STAGING_PREFIX!r} are reserved for extract's staging folders")
    return parts


def _member_mode(member: tarfile.TarInfo) -> int:
    """PEP 706 data-filter permissions: no setuid/sticky bits, no group/other write, owner rw."""
    mode = member.mode & 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def _mtime_ns(member: tarfile.TarInfo) -> int:
    mtime = member.mtime
    return mtime * 1_000_000_000 if isinstance(mtime, int) else int(mtime * 1_000_000_000)


# ---------------------------------------------------------------------------------------------
# Worker side: stage, place, read


class _Progress:
    """Reports how far into the shard file the reader is (compressed bytes), in coarse steps."""

    def __init__(self, handle, report: Callable[[int], None] | None) -> None:
        self.handle = handle
        self.report = report
        self.reported = 0

    def update(self, force: bool = False) -> int:
        position = self.handle.tell()
        if self.report and (force or position - self.reported >= PROGRESS_STEP) and position > self.reported:
            self.report(position - self.reported)
            self.reported = position
        return position


class _Folders:
    """Folder fds under the root, opened component by component without following symlinks."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.fds: dict[str, int] = {}

    def open(self, parts: list[str]) -> int:
        if len(self.fds) >= MAX_OPEN_FOLDERS:
            self.close()
        fd = self.root_fd
        path = ""
        for part in parts:
            path = f"{path}/{part}" if path else part
            cached = self.fds.get(path)
            if cached is None:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                try:
                    cached = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    raise Refused(
                        f"{path} in the target folder is a symlink or a file, not a folder; "
                        "nothing is written through it"
                    ) from None
                self.fds[path] = cached
            fd = cached
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def extract_shard(task: ShardTask, report: Callable[[int], None] | None = None) -> ShardOutcome:
    """Stage one shard, move its files into place and read their samples (runs in a worker).

    Never raises for a bad shard or an unwritable root: the reason goes to outcome.error.
    """
    outcome = ShardOutcome(task.path)
    placed: list[str] = []
    json_data: dict[str, bytes] = {}
    try:
        root_fd = os.open(task.root, DIR_FLAGS)
        try:
            remove_staging(root_fd, task.root, task.staging)
            os.mkdir(task.staging, 0o700, dir_fd=root_fd)
            staging_fd = os.open(task.staging, DIR_FLAGS, dir_fd=root_fd)
            try:
                staged, preloaded = _stage_members(task, staging_fd, outcome, report)
                placed, json_data = _place_members(root_fd, staging_fd, staged, preloaded, outcome)
            finally:
                os.close(staging_fd)
            remove_staging(root_fd, task.root, task.staging)
        finally:
            os.close(root_fd)
    except OSError as exc:
        outcome.error = _cannot_write(task.root, exc)
    outcome.results = read_placed(task.root, placed, json_data, task.scan_start_ns)
    return outcome


def _cannot_write(root: str, exc: OSError) -> str:
    return (f"cannot write into {root} ({exc.strerror or exc}); free some space or fix its "
            "permissions, then run extract again")


class _WriteFailed(Exception):
    """Writing into the staging folder failed: the root's problem, not the shard's."""


def remove_staging(root_fd: int, root: str, name: str) -> None:
    """Remove a staging folder left by an earlier (killed) run; a symlink in its place is unlinked."""
    try:
        st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat_module.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=root_fd)  # fd-based on Linux: never follows symlinks inside
    else:
        os.unlink(name, dir_fd=root_fd)


StagedMember = tuple[str | None, list[str], str]  # (staged file name or None for a folder, parts, member)


def _stage_members(
    task: ShardTask, staging_fd: int, outcome: ShardOutcome, report: Callable[[int], None] | None
) -> tuple[list[StagedMember], dict[str, bytes]]:
    """Write every acceptable member into the staging folder under a numbered name."""
    staged: list[StagedMember] = []
    preloaded: dict[str, bytes] = {}
    try:
        handle = open(task.path, "rb")  # noqa: SIM115 (closed below, after the stream)
    except OSError as exc:
        outcome.error = f"cannot read shard {task.path} ({exc.strerror}); fix its permissions"
        return staged, preloaded
    progress = _Progress(handle, report)
    try:
        # "r:*" reads compressed shards through gzip/bz2/lzma file objects, which buffer well;
        # tarfile's "r|*" stream re-copies its whole decompressed buffer on every read.
        with tarfile.open(fileobj=handle, mode="r:*", tarinfo=_HeaderKeeper) as tar:
            while (member := tar.next()) is not None:
                tar.members = []  # members are read in order, never looked up: keep memory flat
                progress.update()
                try:
                    parts = member_parts(member, task.root, task.reserved)
                except Refused as exc:
                    outcome.refusals.append((printable(member.name), str(exc)))
                    continue
                if not parts:
                    continue
                if member.isdir():
                    staged.append((None, parts, member.name))
                    continue
                name = f"{len(staged):08d}"
                data = _write_member(tar, member, staging_fd, name, parts[-1])
                if data is not None:
                    preloaded[name] = data
                staged.append((name, parts, member.name))
            _check_end(tar)
    except _WriteFailed as exc:
        outcome.error = _cannot_write(task.root, exc.__cause__)  # type: ignore[arg-type]
    except Exception as exc:  # tarfile, gzip, bz2, lzma and zlib each raise their own errors
        outcome.error = _damaged(task.path, len(staged), exc)
    finally:
        outcome.bytes = progress.update(force=True)
        handle.close()
    return staged, preloaded


class _HeaderKeeper(tarfile.TarInfo):
    """TarInfo that keeps the last header block read, so the end of the archive can be checked
    without seeking back (a backward seek in a gzip stream decompresses it again from the start)."""

    @classmethod
    def fromtarfile(cls, tarfile_obj: tarfile.TarFile) -> tarfile.TarInfo:
        buf = tarfile_obj.fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[union-attr]
        tarfile_obj.last_header = buf  # type: ignore[attr-defined]
        obj = cls.frombuf(buf, tarfile_obj.encoding, tarfile_obj.errors)
        obj.offset = tarfile_obj.fileobj.tell() - tarfile.BLOCKSIZE  # type: ignore[union-attr]
        return obj._proc_member(tarfile_obj)  # type: ignore[attr-defined]


def _check_end(tar: tarfile.TarFile) -> None:
    """tarfile ends iteration quietly at a cut or garbled header; a whole archive ends in zeros."""
    block = getattr(tar, "last_header", b"")
    if len(block) < tarfile.BLOCKSIZE:
        raise tarfile.ReadError("no end-of-archive marker: the file is cut short")
    if block != tarfile.NUL * tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"invalid member header at byte {tar.offset}")


def _damaged(path: str, members: int, exc: BaseException) -> str:
    return (f"{path}: damaged or not a tar archive after {members} good members "
            f"({type(exc).__name__}: {exc}); the good members were kept: re-download the shard "
            "and run extract again")


def _write_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, staging_fd: int, name: str, leaf: str
) -> bytes | None:
    """Copy one member to staging; returns its bytes when it is a JSON small enough to keep."""
    keep = leaf.rpartition(".")[2].lower() == JSON_EXTENSION and member.size <= JSON_PRELOAD_LIMIT
    source = tar.extractfile(member)
    assert source is not None  # regular files always have a stream
    try:
        fd = os.open(name, NEW_FILE_FLAGS, _member_mode(member), dir_fd=staging_fd)
    except OSError as exc:
        raise _WriteFailed from exc
    try:
        if keep:
            data = source.read()
            _write_all(fd, data)
            copied = len(data)
        else:
            data = None
            copied = 0
            while chunk := source.read(COPY_CHUNK):
                _write_all(fd, chunk)
                copied += len(chunk)
        if copied != member.size:
            raise tarfile.ReadError(f"member {member.name!r} is cut short ({copied} of {member.size} bytes)")
        mtime = _mtime_ns(member)
        with contextlib.suppress(OSError, OverflowError, ValueError):
            os.utime(fd, ns=(mtime, mtime))
    finally:
        os.close(fd)
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise _WriteFailed from exc


def _place_members(
    root_fd: int,
    staging_fd: int,
    staged: list[StagedMember],
    preloaded: dict[str, bytes],
    outcome: ShardOutcome,
) -> tuple[list[str], dict[str, bytes]]:
    """Rename staged files to their place (in member order, so a later duplicate wins)."""
    folders = _Folders(root_fd)
    placed: dict[str, None] = {}
    json_data: dict[str, bytes] = {}
    try:
        for staged_name, parts, member_name in staged:
            try:
                if staged_name is None:
                    folders.open(parts)
                else:
                    parent = folders.open(parts[:-1])
                    os.rename(staged_name, parts[-1], src_dir_fd=staging_fd, dst_dir_fd=parent)
                    path = "/".join(parts)
                    placed[path] = None
                    if staged_name in preloaded:
                        json_data[path] = preloaded.pop(staged_name)
                    else:
                        json_data.pop(path, None)
                outcome.members += 1
            except Refused as exc:
                outcome.refusals.append((printable(member_name), str(exc)))
            except OSError as exc:
                reason = f"cannot put it in place: {exc.strerror or exc}"
                outcome.refusals.append((printable(member_name), reason))
    finally:
        folders.close()
    return list(placed), json_data


def read_placed(
    root: str, placed: Iterable[str], json_data: dict[str, bytes], scan_start_ns: int
) -> list[Result]:
    """Sample records for the placed files, from the bytes already in hand and a fresh stat."""
    by_key: dict[str, list[str]] = {}
    for path in placed:
        parts = split_sample_path(path)
        if parts is not None:
            by_key.setdefault(parts[0], []).append(path)
    results: list[Result] = []
    for key in sorted(by_key):
        sample, files, files_read = read_sample(root, key, by_key[key], scan_start_ns, json_bytes=json_data)
        results.append((key, sample, [_not_racy(record) for record in files], files_read))
    return results


def _not_racy(record: FileRecord) -> FileRecord:
    """This run wrote the file and stat-ed it after the rename: its content is known."""
    return (*record[:5], 0)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Writer side: plan, record, summarise


_progress_queue = None


def _init_worker(progress_queue) -> None:
    """Drop the writer lock and die with the parent, as index's readers do; report bytes read."""
    global _progress_queue
    init_worker()
    _progress_queue = progress_queue


def _extract_in_worker(task: ShardTask) -> ShardOutcome:
    report = _progress_queue.put if _progress_queue is not None else None
    return extract_shard(task, report)


def extract_shards(
    db_path: str | os.PathLike[str],
    shards: Iterable[str | os.PathLike[str]],
    to: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Extract the shards into `to` and record their samples; returns the run summary.

    Refused members and damaged shards are reported in the summary (`refusals`, `failures`),
    never raised: the caller picks the exit code after everything else was done.
    """
    started = time.monotonic()
    shard_paths = check_shards(shards)
    root = prepare_root(to)
    with writer_run(db_path, root, "extract", dataset_id) as run:
        summary = _extract_all(
            run.conn, run.dataset, root, shard_paths, reserved_paths(db_path, root),
            workers=workers or default_workers(), progress=progress,
        )
        summary.update(run_id=run.id, seconds=round(time.monotonic() - started, 3))
        run.finish(summary, status="failed" if summary["failures"] else "done", error=_run_error(summary))
    return summary


def _run_error(summary: dict) -> str | None:
    notes = []
    if summary["failures"]:
        notes.append(f"{len(summary['failures'])} shard(s) failed")
    if summary["refused"]:
        notes.append(f"{summary['refused']} member(s) refused")
    return "; ".join(notes) or None


def check_shards(shards: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Resolved shard paths in the order given, duplicates dropped; all must be readable files."""
    found: dict[Path, None] = {}
    for shard in shards:
        path = Path(shard).expanduser()
        if not path.exists():
            raise IndexerError(f"shard {path} does not exist: check the path")
        if not path.is_file():
            raise IndexerError(f"shard {path} is not a file: pass the .tar/.tar.gz/.tgz files themselves")
        if not os.access(path, os.R_OK):
            raise IndexerError(f"shard {path} is not readable: fix its permissions")
        found[path.resolve()] = None
    if not found:
        raise IndexerError("no shard given: pass one or more .tar files before --to DIR")
    return list(found)


def prepare_root(to: str | os.PathLike[str]) -> Path:
    """The target folder, created if missing (like `mkdir data` before `tar xf -C data`)."""
    path = Path(to).expanduser()
    if not path.exists() and not path.is_symlink():
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise IndexerError(f"cannot create target folder {path}: {exc.strerror}") from exc
    return resolve_root(path)


def reserved_paths(db_path: str | os.PathLike[str], root: Path) -> frozenset[str]:
    """Root-relative paths of the database's own files, when the database lives inside the root."""
    base = os.fspath(Path(db_path).resolve())
    reserved = set()
    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        with contextlib.suppress(ValueError):
            reserved.add(Path(base + suffix).relative_to(root).as_posix())
    return frozenset(reserved)


def staging_name(shard: Path) -> str:
    return STAGING_NAME + hashlib.sha1(os.fsencode(shard)).hexdigest()[:16]


def _extract_all(
    conn: sqlite3.Connection,
    dataset: str,
    root: Path,
    shard_paths: list[Path],
    reserved: frozenset[str],
    *,
    workers: int,
    progress: bool,
) -> dict:
    scan_start_ns = time.time_ns()
    tasks, skipped = plan(conn, dataset, root, shard_paths, reserved, scan_start_ns)
    if tasks and not conn.execute("SELECT 1 FROM samples WHERE dataset = ? LIMIT 1", (dataset,)).fetchone():
        defer_derived(conn)  # a first extract is a bulk write: build them on first use instead
    _remove_orphan_staging(conn, dataset, root, {task.staging for task in tasks})
    counts = Counts()
    outcomes: list[ShardOutcome] = []
    with bar(progress, desc="extract", unit="B", unit_scale=True, unit_divisor=1024,
             total=sum(task.size for task in tasks)) as bytes_bar:
        for outcome in _run_tasks(conn, dataset, tasks, workers, bytes_bar.update):
            record_shard(conn, dataset, root, outcome, counts, scan_start_ns)
            outcome.results = []  # recorded: free the memory
            outcomes.append(outcome)
    return _summary(conn, dataset, root, shard_paths, skipped, outcomes, counts)


def plan(
    conn: sqlite3.Connection,
    dataset: str,
    root: Path,
    shard_paths: list[Path],
    reserved: frozenset[str],
    scan_start_ns: int,
) -> tuple[list[ShardTask], list[str]]:
    """Shards to extract, and the finished ones (same path, size and mtime) to skip."""
    tasks: list[ShardTask] = []
    skipped: list[str] = []
    for path in shard_paths:
        st = path.stat()
        row = conn.execute(
            "SELECT status, size, mtime_ns FROM shards WHERE dataset = ? AND path = ?",
            (dataset, str(path)),
        ).fetchone()
        if row == ("finished", st.st_size, st.st_mtime_ns):
            skipped.append(str(path))
            continue
        tasks.append(ShardTask(str(path), str(root), staging_name(path), st.st_size, st.st_mtime_ns,
                               reserved, scan_start_ns))
    return tasks, skipped


def _remove_orphan_staging(conn: sqlite3.Connection, dataset: str, root: Path, keep: set[str]) -> None:
    """Staging folders of unfinished shards not given this time: a killed run's leftovers."""
    names = [row[0] for row in conn.execute(
        "SELECT staging FROM shards WHERE dataset = ? AND status != 'finished'", (dataset,))]
    root_fd = os.open(root, DIR_FLAGS)
    try:
        for name in names:
            if name not in keep and name.startswith(STAGING_NAME) and "/" not in name:
                remove_staging(root_fd, str(root), name)
    finally:
        os.close(root_fd)


def _run_tasks(
    conn: sqlite3.Connection,
    dataset: str,
    tasks: list[ShardTask],
    workers: int,
    report: Callable[[int], object],
) -> Iterator[ShardOutcome]:
    """Extract shards (in worker processes when there are several), yielding as each finishes.

    Each shard is marked 'extracting' before its worker starts, so a kill at any later instant
    leaves it unfinished and the next run does it again.
    """
    workers = min(workers, len(tasks))
    if workers <= 1:
        for task in tasks:
            begin_shard(conn, dataset, task)
            yield extract_shard(task, report)
        return
    context = multiprocessing.get_context("fork")
    progress_queue = context.Queue()
    pending = collections.deque(tasks)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                initargs=(progress_queue,)) as pool:
        in_flight: set[cf.Future] = set()
        while pending or in_flight:
            while pending and len(in_flight) < workers:
                task = pending.popleft()
                begin_shard(conn, dataset, task)
                in_flight.add(pool.submit(_extract_in_worker, task))
            done, in_flight = cf.wait(in_flight, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            _drain(progress_queue, report)
            for future in done:
                yield future.result()
        _drain(progress_queue, report)


def _drain(progress_queue, report: Callable[[int], object]) -> None:
    while True:
        try:
            report(progress_queue.get_nowait())
        except queue.Empty:
            return


def begin_shard(conn: sqlite3.Connection, dataset: str, task: ShardTask) -> None:
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO shards (dataset, path, size, mtime_ns, status, staging, started_at)"
            " VALUES (?, ?, ?, ?, 'extracting', ?, ?) ON CONFLICT (dataset, path) DO UPDATE SET"
            " size = excluded.size, mtime_ns = excluded.mtime_ns, status = 'extracting',"
            " staging = excluded.staging, started_at = excluded.started_at, members = NULL,"
            " refused = NULL, refusals = NULL, error = NULL, finished_at = NULL",
            (dataset, task.path, task.size, task.mtime_ns, task.staging, store.now_iso()),
        )


def record_shard(
    conn: sqlite3.Connection,
    dataset: str,
    root: Path,
    outcome: ShardOutcome,
    counts: Counts,
    scan_start_ns: int,
) -> None:
    """Record a shard's samples in sorted batches, then mark the shard finished (or failed)."""
    results = outcome.results
    for start in range(0, len(results), WRITE_BATCH):
        batch = with_partners(conn, dataset, str(root), results[start : start + WRITE_BATCH], scan_start_ns)
        write_results(conn, dataset, [compact(*result) for result in batch], counts)
    # Captions into the full-text index now: a key split across shards is written again by a later
    # shard, and the search triggers expect every sample to be synced before it changes again.
    sync_search_index(conn)
    with store.transaction(conn):
        conn.execute(
            "UPDATE shards SET status = ?, members = ?, refused = ?, refusals = ?, error = ?,"
            " finished_at = ? WHERE dataset = ? AND path = ?",
            ("failed" if outcome.error else "finished", outcome.members, len(outcome.refusals),
             orjson.dumps(outcome.refusals).decode(), outcome.error, store.now_iso(), dataset,
             outcome.path),
        )


def with_partners(
    conn: sqlite3.Connection, dataset: str, root: str, results: list[Result], scan_start_ns: int
) -> list[Result]:
    """Complete keys whose other files came from elsewhere (another shard, or already in the root).

    write_results replaces a key's whole stat record, so a key is re-read with every file it has:
    the recorded ones, and, when the shard brought only its JSON or only its image, a partner
    already on disk. Pairs inside one shard (the webdataset norm) need none of this.
    """
    stored = stored_files(conn, dataset, [result[0] for result in results])
    completed: list[Result] = []
    for key, sample, files, files_read in results:
        own = {record[0] for record in files}
        extra = set(stored.get(key, ())) - own
        if sample is None or sample.json is None or sample.image is None:
            extra.update(path for path in _partner_paths(key) if path not in own
                         and os.path.lexists(os.path.join(root, path)))
        if not extra:
            completed.append((key, sample, files, files_read))
            continue
        sample, reread, read_count = read_sample(root, key, sorted(own | extra), scan_start_ns)
        completed.append((key, sample, [_keep_known(r, own, stored.get(key, {})) for r in reread],
                          files_read + read_count))
    return completed


def _partner_paths(key: str) -> list[str]:
    return [f"{key}.{ext}" for ext in sorted(SAMPLE_EXTENSIONS)]


def _keep_known(record: FileRecord, own: set[str], stored: dict[str, int | None]) -> FileRecord:
    """Files this shard wrote are not racy; a stored file that did not change stays trusted (a
    racy one is stored with a signature that never matches, so it keeps being re-checked)."""
    path, size, mtime_ns, ctime_ns, inode, _racy = record
    if path in own or stored.get(path) == stat_signature(size, mtime_ns, ctime_ns, inode):
        return _not_racy(record)
    return record


def _summary(
    conn: sqlite3.Connection,
    dataset: str,
    root: Path,
    shard_paths: list[Path],
    skipped: list[str],
    outcomes: list[ShardOutcome],
    counts: Counts,
) -> dict:
    samples = conn.execute("SELECT count(*) FROM samples WHERE dataset = ?", (dataset,)).fetchone()[0]
    refusals = [{"shard": o.path, "member": member, "reason": reason}
                for o in outcomes for member, reason in o.refusals]
    failures = [{"shard": o.path, "error": o.error} for o in outcomes if o.error]
    return {
        "dataset": dataset,
        "root": str(root),
        "shards": len(shard_paths),
        "shards_done": sum(1 for o in outcomes if not o.error),
        "shards_skipped": len(skipped),
        "shards_failed": len(failures),
        "skipped": skipped,
        "members": sum(o.members for o in outcomes),
        "bytes": sum(o.bytes for o in outcomes),
        "refused": len(refusals),
        "refusals": refusals,
        "failures": failures,
        "added": counts.added,
        "changed": counts.changed,
        "removed": counts.removed,
        "unchanged": samples - counts.added - counts.changed,
        "samples": samples,
        "problems": problem_counts(conn, dataset),
        "files_read": counts.files_read,
        "json_bytes": json_bytes(conn, dataset),
    }
