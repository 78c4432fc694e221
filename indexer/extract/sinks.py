"""Where the staging loops (stage.py) put a shard's members: straight into place, or through a
staging folder.

`LinkSink` (Linux, on filesystems with O_TMPFILE: ext4, xfs, btrfs, tmpfs): each file is written
unnamed in the folder it belongs to and linked under its name only once it is whole, so nobody
ever sees half a file, a killed run leaves no partial file behind, and the file's final stat comes
from the open descriptor. Per file that is one directory entry and no path lookup, against three
(create, rename out of staging, stat) for `StagingSink`, which is what other filesystems get:
numbered files in the shard's staging folder, renamed into place by `place_staged` afterwards.

Both write only through folder descriptors opened with O_NOFOLLOW (`Folders`), so no symlink in
the root can lead a byte outside it; a later member of the same name replaces an earlier one.
Both use the shard's staging folder (created in the root, removed after the shard): StagingSink
for every file, LinkSink for replacements and for folders on filesystems without O_TMPFILE.
"""

from __future__ import annotations

import contextlib
import errno
import os

from indexer.extract.fileops import FS
from indexer.extract.members import Refused, printable
from indexer.extract.task import ShardOutcome, cannot_write
from indexer.ingest.walk import STAGING_PREFIX

MAX_OPEN_FOLDERS = 256
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TMPFILE_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | os.O_CLOEXEC
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)  # the root's problem: stop the shard, say so
NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)  # a folder on a filesystem without it


class WriteFailed(Exception):
    """Writing into the root failed: the root's problem (space, permissions), not the shard's."""


class Folders:
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
                try:
                    FS.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    if exc.errno in OUT_OF_SPACE:
                        raise WriteFailed from exc
                    raise Refused(f"cannot create folder {path} in the target folder: "
                                  f"{exc.strerror or exc}") from None
                try:
                    cached = FS.open(part, DIR_FLAGS, dir_fd=fd)
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


class LinkSink:
    """Members written unnamed (O_TMPFILE) in their folder and linked into place whole.

    A file that replaces another is linked first into the shard's staging folder and renamed over
    it from there (atomic, and what a kill leaves in between goes with the staging folder). In a
    folder whose filesystem has no O_TMPFILE (a mount under the root), the file is written under a
    name in the staging folder and renamed into place, as StagingSink does.
    """

    def __init__(self, root_fd: int, staging_fd: int, outcome: ShardOutcome) -> None:
        self.folders = Folders(root_fd)
        self.staging_fd = staging_fd
        self.outcome = outcome
        self.placed: dict[str, None] = {}
        self.json_data: dict[str, bytes] = {}
        self.stats: dict[str, os.stat_result] = {}
        self._open: dict[int, tuple[int, str | None]] = {}  # fd -> (parent fd, staged name or None)
        self._spare = 0

    @property
    def count(self) -> int:
        return self.outcome.members

    def folder(self, parts: list[str], member: str) -> None:
        self.folders.open(parts)
        self.outcome.members += 1

    def create(self, parts: list[str], mode: int) -> int:
        parent = self.folders.open(parts[:-1])  # Refused when a symlink or file is in the way
        try:
            fd = FS.open(".", TMPFILE_FLAGS, mode, dir_fd=parent)
            self._open[fd] = (parent, None)
        except OSError as exc:
            if exc.errno in OUT_OF_SPACE:
                raise WriteFailed from exc
            if exc.errno not in NO_TMPFILE:
                raise Refused(f"cannot write in its folder: {exc.strerror or exc}") from None
            # another filesystem mounted under the root: a hidden name in the folder itself
            # (a rename out of the staging folder would cross filesystems)
            name = self._local_spare_name()
            try:
                fd = FS.open(name, NEW_FILE_FLAGS, mode, dir_fd=parent)
            except OSError as named_exc:
                raise WriteFailed from named_exc
            self._open[fd] = (parent, name)
        return fd

    def finish(self, fd: int, parts: list[str], member: str, mtime_ns: int, data: bytes | None) -> None:
        """Give the written file its mtime and its name; record its final stat."""
        parent, staged = self._open.pop(fd)
        try:
            with contextlib.suppress(OSError, OverflowError, ValueError):
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            try:
                if staged is None:
                    self._link(fd, parent, parts[-1])
                else:
                    FS.rename(staged, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
            except OSError as exc:
                reason = f"cannot put it in place: {exc.strerror or exc}"
                self.outcome.refusals.append((printable(member), reason))
                return
            path = "/".join(parts)
            self.stats[path] = os.fstat(fd)  # after the link or rename, which changed its ctime
        finally:
            os.close(fd)
        self.placed[path] = None
        if data is not None:
            self.json_data[path] = data
        else:
            self.json_data.pop(path, None)
        self.outcome.members += 1

    def abandon(self, fd: int) -> None:
        """A file that could not be written whole: closed, and gone (unnamed, or its hidden name
        removed)."""
        parent, staged = self._open.pop(fd, (None, None))
        os.close(fd)
        if staged is not None:
            with contextlib.suppress(OSError):
                os.unlink(staged, dir_fd=parent)

    def _spare_name(self) -> str:
        self._spare += 1
        return f"{self._spare:08d}"

    def _local_spare_name(self) -> str:
        """A name for a file on its way in, in its own folder: hidden, and never a sample."""
        return f"{STAGING_PREFIX}{os.getpid()}-{self._spare_name()}"

    def _link(self, fd: int, parent: int, name: str) -> None:
        source = f"/proc/self/fd/{fd}"
        try:
            FS.link(source, name, dst_dir_fd=parent, follow_symlinks=True)
            return
        except FileExistsError:  # replace what is there (a file, or a planted symlink) atomically
            pass
        spare, spare_dir = self._spare_name(), self.staging_fd  # goes with the staging folder
        try:
            FS.link(source, spare, dst_dir_fd=spare_dir, follow_symlinks=True)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            spare, spare_dir = self._local_spare_name(), parent  # another filesystem under the root
            FS.link(source, spare, dst_dir_fd=spare_dir, follow_symlinks=True)
        FS.rename(spare, name, src_dir_fd=spare_dir, dst_dir_fd=parent)

    def close(self) -> None:
        self.folders.close()


def links_in_place(staging_fd: int) -> bool:
    """Whether the filesystem (of the shard's staging folder, in the root) takes LinkSink's
    unnamed files and links (and /proc is there to link them by)."""
    if not TMPFILE_FLAGS & getattr(os, "O_TMPFILE", 0):
        return False
    try:
        fd = FS.open(".", TMPFILE_FLAGS, 0o600, dir_fd=staging_fd)
    except OSError:
        return False
    try:
        FS.link(f"/proc/self/fd/{fd}", "probe", dst_dir_fd=staging_fd, follow_symlinks=True)
        os.unlink("probe", dir_fd=staging_fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


# (staged file name or None for a folder, parts, member name)
StagedMember = tuple[str | None, list[str], str]


class StagingSink:
    """Members written as numbered files in the shard's staging folder, for place_staged."""

    def __init__(self, staging_fd: int) -> None:
        self.staging_fd = staging_fd
        self.staged: list[StagedMember] = []
        self.preloaded: dict[str, bytes] = {}
        self._names: dict[int, str] = {}

    @property
    def count(self) -> int:
        return len(self.staged)

    def folder(self, parts: list[str], member: str) -> None:
        self.staged.append((None, parts, member))

    def create(self, parts: list[str], mode: int) -> int:
        name = f"{len(self.staged) + len(self._names):08d}"
        try:
            fd = FS.open(name, NEW_FILE_FLAGS, mode, dir_fd=self.staging_fd)
        except OSError as exc:
            raise WriteFailed from exc
        self._names[fd] = name
        return fd

    def finish(self, fd: int, parts: list[str], member: str, mtime_ns: int, data: bytes | None) -> None:
        name = self._names.pop(fd)
        try:
            with contextlib.suppress(OSError, OverflowError, ValueError):
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        if data is not None:
            self.preloaded[name] = data
        self.staged.append((name, parts, member))

    def abandon(self, fd: int) -> None:
        self._names.pop(fd, None)
        os.close(fd)


def place_staged(root_fd: int, root: str, sink: StagingSink, outcome: ShardOutcome
                 ) -> tuple[list[str], dict[str, bytes]]:
    """Rename staged files to their place (in member order, so a later duplicate wins); a full
    disk stops it, what was placed so far being returned to be recorded."""
    folders = Folders(root_fd)
    placed: dict[str, None] = {}
    json_data: dict[str, bytes] = {}
    try:
        for staged_name, parts, member_name in sink.staged:
            try:
                if staged_name is None:
                    folders.open(parts)
                else:
                    parent = folders.open(parts[:-1])
                    FS.rename(staged_name, parts[-1], src_dir_fd=sink.staging_fd, dst_dir_fd=parent)
                    path = "/".join(parts)
                    placed[path] = None
                    if staged_name in sink.preloaded:
                        json_data[path] = sink.preloaded.pop(staged_name)
                    else:
                        json_data.pop(path, None)
                outcome.members += 1
            except Refused as exc:
                outcome.refusals.append((printable(member_name), str(exc)))
            except WriteFailed as exc:
                outcome.error = cannot_write(root, exc.__cause__)  # type: ignore[arg-type]
                break
            except OSError as exc:
                reason = f"cannot put it in place: {exc.strerror or exc}"
                outcome.refusals.append((printable(member_name), reason))
    finally:
        folders.close()
    return list(placed), json_data
