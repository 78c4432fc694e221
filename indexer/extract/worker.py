"""The worker side of `extract`: one shard into its staging folder, into place, and read.

Every write goes through directory file descriptors opened with O_NOFOLLOW, so neither a hostile
member nor a symlink already in the root can put a byte outside it. Runs in a worker process (one
shard each), so it takes and returns plain, picklable values.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat as stat_module
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from indexer.extract.members import Refused, member_mode, member_mtime_ns, member_parts, printable
from indexer.ingest.read import FileRecord, SampleRecord, read_sample
from indexer.ingest.walk import JSON_EXTENSION, split_sample_path
from indexer.ingest.workers import init_worker

JSON_PRELOAD_LIMIT = 64 << 20  # larger JSON members are read back from disk like `index` would
COPY_CHUNK = 1 << 20
PROGRESS_STEP = 4 << 20
MAX_OPEN_FOLDERS = 256
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Result = tuple[str, SampleRecord | None, list[FileRecord], int]


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
        fd = os.open(name, NEW_FILE_FLAGS, member_mode(member), dir_fd=staging_fd)
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
        mtime = member_mtime_ns(member)
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
        results.append((key, sample, [not_racy(record) for record in files], files_read))
    return results


def not_racy(record: FileRecord) -> FileRecord:
    """This run wrote the file and stat-ed it after the rename: its content is known."""
    return (*record[:5], 0)  # type: ignore[return-value]


# The worker process's end of the progress queue (bytes read), set by its pool initializer.
_progress_queue = None


def init_extract_worker(progress_queue) -> None:
    """Drop the writer lock and die with the parent, as index's readers do; report bytes read."""
    global _progress_queue
    init_worker()
    _progress_queue = progress_queue


def extract_in_worker(task: ShardTask) -> ShardOutcome:
    """extract_shard in a pool process, its progress going to the parent through the queue."""
    report = _progress_queue.put if _progress_queue is not None else None
    return extract_shard(task, report)
