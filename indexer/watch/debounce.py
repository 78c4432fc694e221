"""Holding touched paths until a sample's files are quiet and stable, so a file still being
written is never read (a half-written JSON would be recorded as bad_json)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from indexer.ingest.walk import split_sample_path

StatLook = tuple[int, int, int, int] | None  # size, mtime_ns, ctime_ns, inode; None = not a file


def stat_look(path: str) -> StatLook:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


@dataclass(slots=True)
class Pending:
    key: str
    last_event: float
    look: StatLook = None
    looked_at: float | None = None  # None: no look since the last event


class Debouncer:
    """Holds touched paths until each key's files are quiet and their stat is stable.

    A path is looked at (stat) once it has been quiet for settle/2 and again once quiet for
    settle; it is ready when the two looks agree. A key is released only when all its touched
    paths are ready, so a pair copied file by file is read once, complete.
    """

    def __init__(self, settle: float, look: Callable[[str], StatLook]) -> None:
        self.settle = settle
        self.look = look
        self.paths: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def touch(self, path: str, when: float) -> None:
        entry = self.paths.get(path)
        if entry is None:
            self.paths[path] = Pending(split_sample_path(path)[0], when)  # type: ignore[index]
        elif when >= entry.last_event:
            entry.last_event = when
            entry.looked_at = None

    def pop_ready(self, now: float) -> list[str]:
        settled: dict[str, bool] = {}  # key -> all of its touched paths ready
        for path, entry in self.paths.items():
            ready = self._is_settled(path, entry, now)
            settled[entry.key] = settled.get(entry.key, True) and ready
        out = [path for path, entry in self.paths.items() if settled[entry.key]]
        for path in out:
            del self.paths[path]
        return out

    def _is_settled(self, path: str, entry: Pending, now: float) -> bool:
        quiet = now - entry.last_event
        if quiet < self.settle / 2:
            return False
        if entry.looked_at is None:
            entry.look, entry.looked_at = self.look(path), now
            return False
        if quiet < self.settle or entry.looked_at >= now:
            return False
        current = self.look(path)
        if current == entry.look:
            return True
        entry.look, entry.looked_at = current, now  # still changing: wait for the next agreement
        return False
