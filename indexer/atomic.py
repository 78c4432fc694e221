"""Output files replaced whole: whoever reads one (a trainer, a browser, the next export) sees the
old file or the new one, never half of one, and a write that fails leaves the old one as it was.

Both the exports and `indexer report` write their files through here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import IndexerError

TEMP_MARK = ".tmp-"  # in every temp file's name: `.<name>.tmp-<pid>-<random>` beside the output


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a new, empty temp file beside `path` for the block to fill; it is synced and renamed
    over `path` only when the block succeeds, and removed in every other case.

    The temp file is created exclusively, so an existing file or a link planted under its name is
    never written through, and with the mode any new file gets under the umask, so the output's
    permissions do not depend on how it was written.
    """
    temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise IndexerError(f"cannot write {path}: {exc.strerror or exc}; pick a folder you can write to "
                           "(the previous file, if any, is unchanged)") from exc
    try:
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        raise IndexerError(f"cannot write {path}: {exc.strerror or exc}; the previous file (if any) is "
                           "unchanged") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


class AtomicBatch:
    """Many output files replaced whole, with one sync for all of them: each temp file is written,
    then the filesystems they are on are synced once (syncfs), then each is renamed over its
    output. A thousand small files (webshart's index a shard) otherwise pay a thousand fsyncs."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temp, output)

    def add(self, path: Path, data: bytes) -> None:
        temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise IndexerError(f"cannot write {path}: {exc.strerror or exc}; pick a folder you can write "
                               "to (the previous file, if any, is unchanged)") from exc
        self.pending.append((temp, path))
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            raise IndexerError(f"cannot write {path}: {exc.strerror or exc}; the previous file (if any) "
                               "is unchanged") from exc

    def commit(self) -> list[Path]:
        """Sync every temp file, then rename each over its output; returns the outputs."""
        _sync([temp for temp, _path in self.pending])
        done = []
        for temp, path in self.pending:
            try:
                os.replace(temp, path)
            except OSError as exc:
                raise IndexerError(f"cannot write {path}: {exc.strerror or exc}; the previous file (if any)"
                                   " is unchanged") from exc
            done.append(path)
        self.pending = []
        return done

    def discard(self) -> None:
        for temp, _path in self.pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        self.pending = []


def _sync(files: list[Path]) -> None:
    """Make files durable: syncfs once per filesystem where Linux has it, else fsync each."""
    try:
        _sync_all(files)
    except OSError as exc:
        raise IndexerError(f"cannot sync {files[0].parent if files else 'the output'} to disk"
                           f" ({exc.strerror or exc}); the previous files are unchanged") from exc


def _sync_all(files: list[Path]) -> None:
    syncfs = getattr(_libc(), "syncfs", None)
    devices: dict[int, Path] = {}
    for file in files:
        devices.setdefault(os.stat(file).st_dev, file)
    if syncfs is None:
        for file in files:
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())
        return
    for file in devices.values():
        fd = os.open(file, os.O_RDONLY)
        try:
            if syncfs(fd) != 0:
                raise IndexerError(f"cannot sync {file.parent} to disk; the previous files are unchanged")
        finally:
            os.close(fd)


@functools.cache
def _libc() -> object | None:
    try:
        import ctypes
        import ctypes.util

        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
