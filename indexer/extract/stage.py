"""Reading one shard's members and handing every acceptable one to a sink (sinks.py: into place,
or into the shard's staging folder), JSON bytes kept for the reader. An uncompressed shard goes
through the ingest's one-pass tar reader (ingest/tar_members.py) and the kernel's copy_file_range;
a compressed one through tarfile.
"""

from __future__ import annotations

import errno
import os
import tarfile
from collections.abc import Callable

from indexer.extract.fileops import FS
from indexer.extract.members import (
    Refused,
    extracted_parts,
    member_mode,
    member_mtime_ns,
    member_parts,
    mode_of,
    printable,
)
from indexer.extract.sinks import LinkSink, StagingSink, WriteFailed
from indexer.extract.task import ShardOutcome, ShardTask, cannot_write
from indexer.ingest.change import clamp_int64
from indexer.ingest.guard import describe, raise_if_environment
from indexer.ingest.tar_members import TarCompressed, TarDamaged, TarReadError, iter_members
from indexer.ingest.walk import JSON_EXTENSION

JSON_PRELOAD_LIMIT = 64 << 20  # larger JSON members are read back from disk like `index` would
COPY_CHUNK = 1 << 20
PROGRESS_STEP = 4 << 20
Sink = LinkSink | StagingSink


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


def stage_members(
    task: ShardTask, sink: Sink, outcome: ShardOutcome, report: Callable[[int], None] | None
) -> None:
    """Hand every acceptable member to the sink: an uncompressed shard through the ingest's
    one-pass tar reader, a compressed one through tarfile."""
    try:
        _stage_uncompressed(task, sink, outcome, report)
    except TarCompressed:
        _stage_with_tarfile(task, sink, outcome, report)


def _want_json(name: str) -> int:
    """A JSON member's bytes are kept (parsed without reading the file back); others are copied
    from the shard by the kernel. One byte over the limit tells a JSON too large to keep."""
    return JSON_PRELOAD_LIMIT + 1 if name.rpartition(".")[2].lower() == JSON_EXTENSION else 0


def _stage_uncompressed(
    task: ShardTask, sink: Sink, outcome: ShardOutcome, report: Callable[[int], None] | None,
) -> None:
    """The loop over tar_members.iter_members: ~5x less Python a member than tarfile, and image
    data goes shard -> file inside the kernel (copy_file_range), never through Python."""
    reported = 0
    try:
        shard_fd = os.open(task.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        outcome.error = f"cannot read shard {task.path} ({exc.strerror}); fix its permissions"
        return
    try:
        for member in iter_members(task.path, want_data=_want_json):
            position = member.data_offset + member.size
            if report and position - reported >= PROGRESS_STEP:
                report(position - reported)
                reported = position
            try:
                parts = extracted_parts(member, task.root, task.reserved)
                if not parts:
                    continue
                if member.kind == "dir":
                    sink.folder(parts, member.name)
                    continue
                fd = sink.create(parts, mode_of(member.mode))
            except Refused as exc:
                outcome.refusals.append((member.name, str(exc)))
                continue
            data = member.data if member.data is not None and len(member.data) <= JSON_PRELOAD_LIMIT else None
            try:
                if data is not None:
                    _write_all(fd, data)
                else:
                    _copy_range(shard_fd, fd, member.data_offset, member.size)
            except BaseException:
                sink.abandon(fd)
                raise
            sink.finish(fd, parts, member.name, clamp_int64(member.mtime_ns), data)
    except TarDamaged as exc:
        outcome.error = (f"{task.path}: damaged or not a tar archive after {sink.count} good members"
                         f" ({exc.reason}, at byte {exc.offset}); the good members were kept:"
                         " re-download the shard and run extract again")
    except TarCompressed:
        raise
    except TarReadError as exc:
        outcome.error = f"cannot read shard {task.path} ({exc.reason})"
    except WriteFailed as exc:
        outcome.error = cannot_write(task.root, exc.__cause__)  # type: ignore[arg-type]
    except Exception as exc:  # a shard that shrank while copied from, or anything else in its bytes
        raise_if_environment(exc)
        outcome.error = _damaged(task.path, sink.count, exc)
    finally:
        os.close(shard_fd)
        outcome.bytes = max(outcome.bytes, reported)
        if report:
            end = os.path.getsize(task.path) if os.path.exists(task.path) else reported
            if end > reported:
                report(end - reported)
            outcome.bytes = end


def _copy_range(source_fd: int, target_fd: int, offset: int, size: int) -> None:
    """Copy in the kernel: copy_file_range (same filesystem type), else sendfile, else read/write."""
    end = offset + size
    try:
        while offset < end and FS.copy_file_range is not None:  # Linux only
            copied = FS.copy_file_range(source_fd, target_fd, end - offset, offset)
            if copied == 0:  # some filesystems copy nothing short of the end: read it instead
                break
            offset += copied
        if offset >= end:
            return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise WriteFailed from exc
    try:
        while offset < end:
            chunk = os.pread(source_fd, min(COPY_CHUNK, end - offset), offset)
            if not chunk:
                raise tarfile.ReadError("the shard ended inside a member")
            _write_all(target_fd, chunk)
            offset += len(chunk)
    except OSError as exc:
        raise WriteFailed from exc


def _stage_with_tarfile(
    task: ShardTask, sink: Sink, outcome: ShardOutcome, report: Callable[[int], None] | None
) -> None:
    """The loop for compressed shards, through tarfile's decompressing readers."""
    try:
        handle = open(task.path, "rb")  # noqa: SIM115 (closed below, after the stream)
    except OSError as exc:
        outcome.error = f"cannot read shard {task.path} ({exc.strerror}); fix its permissions"
        return
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
                    if not parts:
                        continue
                    if member.isdir():
                        sink.folder(parts, member.name)
                        continue
                    fd = sink.create(parts, member_mode(member))
                except Refused as exc:
                    outcome.refusals.append((printable(member.name), str(exc)))
                    continue
                try:
                    data = _write_member(tar, member, fd, parts[-1])
                except BaseException:
                    sink.abandon(fd)
                    raise
                sink.finish(fd, parts, member.name, member_mtime_ns(member), data)
            _check_end(tar)
    except WriteFailed as exc:
        outcome.error = cannot_write(task.root, exc.__cause__)  # type: ignore[arg-type]
    except Exception as exc:  # tarfile, gzip, bz2, lzma and zlib each raise their own errors
        raise_if_environment(exc)
        outcome.error = _damaged(task.path, sink.count, exc)
    finally:
        outcome.bytes = progress.update(force=True)
        handle.close()


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
            f"({describe(exc)}); the good members were kept: re-download the shard "
            "and run extract again")


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int, leaf: str) -> bytes | None:
    """Copy one member's data to fd; returns its bytes when it is a JSON small enough to keep."""
    keep = leaf.rpartition(".")[2].lower() == JSON_EXTENSION and member.size <= JSON_PRELOAD_LIMIT
    source = tar.extractfile(member)
    assert source is not None  # regular files always have a stream
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
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise WriteFailed from exc
