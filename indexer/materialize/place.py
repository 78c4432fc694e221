"""Fetched files into DIR, whole, by extract's own means, and recorded as extract records them.

Each file goes through extract's sinks (sinks.py): written unnamed and linked into place once
whole (O_TMPFILE), or written in DIR's staging folder and renamed into place; every write goes
through folder descriptors opened with O_NOFOLLOW, so a symlink in DIR leads nothing outside it.
Then the placed files are stat-ed (after the link or rename) and their samples built from the
bytes in hand (extract's read_placed), with trusted records: a following `indexer index DIR`
finds every file unchanged and reads nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.extract.members import Refused
from indexer.extract.sinks import LinkSink, StagingSink, WriteFailed, links_in_place, place_staged
from indexer.extract.task import ShardOutcome
from indexer.extract.worker import DIR_FLAGS, read_placed, remove_staging
from indexer.extract.writer import with_partners
from indexer.ingest.recorder import Recorder
from indexer.ingest.rows import compact
from indexer.ingest.walk import STAGING_PREFIX, split_sample_path
from indexer.materialize.fetch import Fetched

STAGING = STAGING_PREFIX + "materialize"  # skipped by `index`; what a killed run left goes next run
FILE_MODE = 0o644


@dataclass
class Target:
    """DIR open for writing: its folder descriptor, its staging folder, and how files land."""

    root: Path
    root_fd: int
    staging_fd: int
    linking: bool  # LinkSink (O_TMPFILE) or StagingSink

    def clear_staging(self) -> None:
        """What a batch left in the staging folder (a file that could not be put in place)."""
        for name in os.listdir(self.staging_fd):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.staging_fd)


@contextlib.contextmanager
def opened_target(root: Path) -> Iterator[Target]:
    """DIR with a fresh staging folder, removed at the end (a killed run's is removed first)."""
    root_fd = os.open(root, DIR_FLAGS)
    try:
        remove_staging(root_fd, str(root), STAGING)
        os.mkdir(STAGING, 0o700, dir_fd=root_fd)
        staging_fd = os.open(STAGING, DIR_FLAGS, dir_fd=root_fd)
        try:
            yield Target(root, root_fd, staging_fd, links_in_place(staging_fd))
        finally:
            os.close(staging_fd)
        remove_staging(root_fd, str(root), STAGING)
    finally:
        os.close(root_fd)


@dataclass
class Placed:
    """What placing one batch did."""

    files: list[str] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)
    error: str | None = None  # DIR could not be written (a full disk): the run stops after recording


def place_batch(target: Target, recorder: Recorder, batch: list[Fetched], scan_start_ns: int) -> Placed:
    """Write the batch's files into place, then record their samples (what was placed before a
    write failed is recorded too)."""
    outcome = ShardOutcome(str(target.root))
    sink: LinkSink | StagingSink = (LinkSink(target.root_fd, target.staging_fd, outcome) if target.linking
                                    else StagingSink(target.staging_fd))
    stats: dict[str, os.stat_result] | None = None
    try:
        error = _write_files(sink, batch, outcome, str(target.root))
        if isinstance(sink, LinkSink):
            placed, json_data, stats = list(sink.placed), sink.json_data, sink.stats
        else:
            placed, json_data = place_staged(target.root_fd, str(target.root), sink, outcome)
            if outcome.error is not None:  # extract's words: say it in ours
                error = error or cannot_write(str(target.root), None)
    finally:
        if isinstance(sink, LinkSink):
            sink.close()
        target.clear_staging()
    root = str(target.root)
    results = with_partners(recorder, root, read_placed(root, placed, json_data, scan_start_ns, stats),
                            scan_start_ns)
    recorder.record([compact(*result) for result in results])
    refusals = [{"key": (split_sample_path(name) or (name,))[0], "file": name, "reason": reason}
                for name, reason in outcome.refusals]
    return Placed(placed, refusals, error)


def _write_files(sink: LinkSink | StagingSink, batch: list[Fetched], outcome: ShardOutcome,
                 root: str) -> str | None:
    """Every fetched file to the sink; a refused one (a symlink or file where its folder should
    be) is counted and the rest go on; a failed write stops the batch (its message returned)."""
    now = time.time_ns()
    for fetched in batch:
        mtime_ns = fetched.wanted.mtime_ns if fetched.wanted.mtime_ns is not None else now
        for wanted_file in fetched.files:
            name = wanted_file.name
            try:
                _write(sink, name, fetched.data[name], mtime_ns, keep=name != fetched.wanted.image)
            except Refused as exc:
                outcome.refusals.append((name, str(exc)))
            except WriteFailed as exc:
                return cannot_write(root, exc.__cause__)
    return None


def cannot_write(root: str, exc: BaseException | None) -> str:
    reason = getattr(exc, "strerror", None) or exc or "a write failed"
    return (f"cannot write into {root} ({reason}); free some space or fix its permissions, then run"
            " materialize again")


def _write(sink: LinkSink | StagingSink, name: str, data: bytes, mtime_ns: int, keep: bool) -> None:
    """One file, whole, through the sink (keep: its bytes are a JSON the reader parses as is)."""
    parts = name.split("/")
    fd = sink.create(parts, FILE_MODE)
    try:
        with open(fd, "wb", closefd=False) as handle:
            handle.write(data)
    except OSError as exc:
        sink.abandon(fd)
        raise WriteFailed from exc
    except BaseException:
        sink.abandon(fd)
        raise
    sink.finish(fd, parts, name, mtime_ns, data if keep else None)
