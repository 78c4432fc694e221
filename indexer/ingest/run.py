"""The lifecycle of a writing run (`index`, `extract`, `watch`): one place decides what its row in
`runs` says, whatever way the run ends.

A run holds the writer lock and one connection from start to end. Ending normally records what
the run set with `Run.finish` (status `done` unless it says otherwise); an exception records the
run as `interrupted` (Ctrl-C, a stopping signal) or `failed`, with the exception's message, and
goes on up: the caller's exit code comes from it. A kill records nothing, so the row stays
`running`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer import store, unsynced
from indexer.db import lock
from indexer.errors import IndexerError
from indexer.ingest.bulk import remove_scratch


def resolve_root(root: str | os.PathLike[str]) -> Path:
    """ROOT as the absolute folder a run works on (the datasets row names it)."""
    path = Path(root).expanduser()
    if not path.exists():
        raise IndexerError(f"ROOT {path} does not exist: check the path")
    if not path.is_dir():
        raise IndexerError(f"ROOT {path} is not a folder: pass the folder that holds the samples")
    return path.resolve()


@dataclass
class Run:
    """One `runs` row in progress: its connection and dataset, and what to record at its end."""

    conn: sqlite3.Connection
    dataset: str
    id: int
    summary: dict = field(default_factory=dict)
    status: str = "done"
    error: str | None = None
    # What a run that raised records as its counts: nothing by default (an index's counts are
    # only known at its end); a watch records its session totals.
    so_far: Callable[[], dict] = dict
    # A failure whose exception has no message is recorded under the status ("failed"), or,
    # when this is set, under the exception's class name.
    name_silent_failures: bool = False

    def finish(self, summary: dict, status: str = "done", error: str | None = None) -> None:
        """What the row records when the block ends without an exception."""
        self.summary, self.status, self.error = summary, status, error

    def error_text(self, exc: BaseException, status: str) -> str:
        if str(exc):
            return str(exc)
        return type(exc).__name__ if self.name_silent_failures and status == "failed" else status


@contextlib.contextmanager
def writer_run(db_path: str | os.PathLike[str], root: Path, command: str,
               dataset_id: str | None = None) -> Iterator[Run]:
    """Open the database, take the writer lock, make sure the dataset row exists, and record the
    block as one `command` row of `runs`."""
    conn = store.connect(db_path)
    try:
        with lock.writer_lock(db_path, command):
            unsynced.settle(db_path)  # what a killed first load left unflushed, while the OS kept it
            remove_scratch(db_path)
            dataset = store.ensure_dataset(conn, dataset_id, root)
            run = Run(conn, dataset, store.start_run(conn, dataset, command))
            try:
                yield run
            except BaseException as exc:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                store.finish_run(conn, run.id, run.so_far(), status=status, error=run.error_text(exc, status))
                raise
            store.finish_run(conn, run.id, run.summary, status=run.status, error=run.error)
    finally:
        conn.close()  # the last connection to close folds the WAL into the main file
