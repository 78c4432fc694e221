"""Where a selected sample's bytes come from, fetched and checked before anything is written.

Four origins, one rule: only the files' own bytes are read. A member of a tar shard (local or
remote) is one ranged read at its recorded offset, the JSON and image of a pair in one read when
only tar headers lie between them; a loose file or object is read whole. A shard must still be
the one indexed (its record in tar_shards: size, times, inode or version), else its offsets would
point at other bytes; a loose object must still have the version the index saw. Every file must
have its indexed size, and an image whose JSON gives `md5_file_hash` must hash to it, or the
sample is not placed. Reading is latency-bound (round trips): many tasks fetch at once.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from indexer.errors import DataProblem
from indexer.ingest.change import ShardRecord, object_record, object_shard_record, shard_record
from indexer.ingest.guard import describe, raise_if_environment
from indexer.ingest.remote import ObjectInfo, RemoteRoot
from indexer.materialize.plan import Source, Wanted, WantedFile

COALESCE_GAP = 4096  # bytes between two members still read as one range: their headers, a pax record
RERUN = "run `indexer index` on the source, then materialize again"
Pread = Callable[[int, int], bytes]


@dataclass
class Fetched:
    """One sample's fetched files (or why they could not be), and what fetching them took."""

    wanted: Wanted
    files: tuple[WantedFile, ...]  # the files asked for (those DIR lacks)
    data: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    requests: int = 0
    bytes: int = 0


class Reader:
    """Fetches samples from one source; `stale` names the shards (and why) that changed since
    they were indexed: their samples are not read."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.stale: dict[str, str] = {}

    def fetch(self, wanted: Wanted, files: tuple[WantedFile, ...]) -> Fetched:
        """The sample's files, checked; never raises for the data or the network (the environment
        still stops the run)."""
        fetched = Fetched(wanted, files)
        try:
            unknown = [f.name for f in files if f.size is None]
            if unknown:
                raise DataProblem(f"{', '.join(unknown)}: not read by the index (see its error); {RERUN}")
            if wanted.shard is not None:
                if wanted.shard in self.stale:
                    raise DataProblem(self.stale[wanted.shard])
                self._members(wanted.shard, files, fetched)
            else:
                for wanted_file in files:
                    fetched.data[wanted_file.name] = self._loose(wanted_file, fetched)
            verify(fetched)
        except Exception as exc:
            raise_if_environment(exc)
            fetched.data, fetched.error = {}, str(exc) if isinstance(exc, DataProblem) else describe(exc)
        return fetched

    def for_task(self, samples: list[Wanted]) -> Reader:
        """A copy holding only what these samples need: a Ray task's arguments are copied to it,
        and the whole selection (or listing) would go with every task."""
        slim = copy.copy(self)
        slim.source = dataclasses.replace(self.source, wanted=[], shards={})
        shards = {wanted.shard for wanted in samples if wanted.shard in self.stale}
        slim.stale = {shard: self.stale[shard] for shard in shards}  # type: ignore[index]
        return slim

    def _members(self, shard: str, files: tuple[WantedFile, ...], fetched: Fetched) -> None:
        raise NotImplementedError

    def _loose(self, wanted_file: WantedFile, fetched: Fetched) -> bytes:
        raise NotImplementedError


class LocalReader(Reader):
    """A source in a local folder: shards read by offset, loose files whole."""

    def __init__(self, source: Source) -> None:
        super().__init__(source)
        for shard in {w.shard for w in source.wanted if w.shard is not None}:
            try:
                now: ShardRecord | None = shard_record(os.stat(os.path.join(source.root, shard)))
            except OSError:
                now = None
            self.stale.update(_stale_shard(source, shard, now))

    def _members(self, shard: str, files: tuple[WantedFile, ...], fetched: Fetched) -> None:
        fd = os.open(os.path.join(self.source.root, shard), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)

        def pread(count: int, offset: int) -> bytes:
            chunk = os.pread(fd, count, offset)
            fetched.requests += 1
            fetched.bytes += len(chunk)
            return chunk

        try:
            read_members(pread, shard, files, fetched)
        finally:
            os.close(fd)

    def _loose(self, wanted_file: WantedFile, fetched: Fetched) -> bytes:
        """The file whole: one byte more than indexed is asked for, so a file that grew shows."""
        path = os.path.join(self.source.root, wanted_file.name)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DataProblem(f"{path}: not a regular file any more; {RERUN}")
            data = os.pread(fd, (wanted_file.size or 0) + 1, 0)
        finally:
            os.close(fd)
        fetched.requests += 1
        fetched.bytes += len(data)
        return data


class RemoteReader(Reader):
    """A source in a bucket, on the Hub or behind https URLs: one listing (all or nothing) tells
    each object's current version; members are read by range requests, loose objects whole."""

    def __init__(self, source: Source, root: RemoteRoot) -> None:
        super().__init__(source)
        self.root = root
        self.objects: dict[str, ObjectInfo] = {info.path: info for info in root.listing()}
        for shard in {w.shard for w in source.wanted if w.shard is not None}:
            info = self.objects.get(shard)
            now = object_shard_record(info.size, info.version, info.mtime_ns) if info is not None else None
            self.stale.update(_stale_shard(source, shard, now))

    def for_task(self, samples: list[Wanted]) -> Reader:
        slim = super().for_task(samples)
        assert isinstance(slim, RemoteReader)
        names = {wanted.shard for wanted in samples} | {f.name for wanted in samples for f in wanted.files}
        slim.objects = {name: self.objects[name] for name in names if name in self.objects}
        return slim

    def _members(self, shard: str, files: tuple[WantedFile, ...], fetched: Fetched) -> None:
        source = self.root.open(self.objects[shard])
        try:
            read_members(source.pread, source.name, files, fetched)
        finally:
            fetched.requests, fetched.bytes = source.requests, source.bytes

    def _loose(self, wanted_file: WantedFile, fetched: Fetched) -> bytes:
        info = self.objects.get(wanted_file.name)
        if info is None:
            raise DataProblem(f"{wanted_file.name}: no longer in {self.root.display}; {RERUN}")
        if object_record(info.path, info.size, info.version, info.mtime_ns).signature != wanted_file.sig:
            raise DataProblem(f"{wanted_file.name}: changed since it was indexed; {RERUN}")
        source = self.root.open(info)
        try:
            return source.read_all()
        finally:
            fetched.requests += source.requests
            fetched.bytes += source.bytes


def _stale_shard(source: Source, shard: str, now: ShardRecord | None) -> dict[str, str]:
    """{shard: why} when the shard is gone or is no longer the one indexed, else nothing."""
    if now is None:
        return {shard: f"{shard}: the shard is gone or unreadable; {RERUN}"}
    if source.shards.get(shard) != now:
        return {shard: f"{shard}: the shard changed since it was indexed (its offsets would be wrong);"
                       f" {RERUN}"}
    return {}


def spans(files: tuple[WantedFile, ...]) -> list[list[WantedFile]]:
    """The members grouped into ranges to read: members at most COALESCE_GAP bytes apart (a pair's
    JSON and image, with the tar header between them) share one read."""
    groups: list[list[WantedFile]] = []
    end = -1
    for wanted_file in sorted(files, key=lambda f: f.offset or 0):
        offset = wanted_file.offset or 0
        if groups and offset - end <= COALESCE_GAP:
            groups[-1].append(wanted_file)
        else:
            groups.append([wanted_file])
        end = max(end, offset + (wanted_file.size or 0))
    return groups


def read_members(pread: Pread, name: str, files: tuple[WantedFile, ...], fetched: Fetched) -> None:
    """Each member's bytes, one read a span."""
    for group in spans(files):
        start = group[0].offset or 0
        end = max((f.offset or 0) + (f.size or 0) for f in group)
        chunk = pread(end - start, start)
        if len(chunk) < end - start:
            raise DataProblem(f"{name}: ends at byte {start + len(chunk)}, inside a member it was indexed"
                              f" with; {RERUN}")
        for wanted_file in group:
            at = (wanted_file.offset or 0) - start
            fetched.data[wanted_file.name] = chunk[at : at + (wanted_file.size or 0)]


def verify(fetched: Fetched) -> None:
    """Sizes as indexed; the image's md5 as its JSON gives it. Raises DataProblem."""
    wanted = fetched.wanted
    for wanted_file in fetched.files:
        got = len(fetched.data[wanted_file.name])
        if got != wanted_file.size:
            raise DataProblem(f"{wanted_file.name}: {got:,} bytes, indexed with {wanted_file.size:,};"
                              f" {RERUN}")
    image = fetched.data.get(wanted.image or "")
    if image is not None and wanted.md5 is not None:
        digest = hashlib.md5(image, usedforsecurity=False).hexdigest()
        if digest != wanted.md5:
            raise DataProblem(f"{wanted.image}: md5 {digest} differs from the md5_file_hash {wanted.md5} its"
                              " JSON gives; not placed (the stored image is not the one described)")
