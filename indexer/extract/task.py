"""What an extract worker is given for one shard, and what it hands back to the writer (plain,
picklable values: workers are separate processes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from indexer.ingest.change import FileRecord
from indexer.ingest.read import SampleRecord
from indexer.ingest.recorder import ScratchBatch

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
    scratch: str | None = None  # where to write the shard's complete new pairs (ingest/bulk.py)


@dataclass
class ShardOutcome:
    """What extracting one shard did; the writer records it."""

    path: str
    members: int = 0
    bytes: int = 0
    refusals: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    results: list[Result] = field(default_factory=list)  # the keys not in the scratch database
    scratch: ScratchBatch | None = None  # the keys with their JSON and image both in this shard


def cannot_write(root: str, exc: OSError) -> str:
    return (f"cannot write into {root} ({exc.strerror or exc}); free some space or fix its "
            "permissions, then run extract again")
