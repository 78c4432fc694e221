"""Errors that end a command with a clear message and a documented exit code.

Problems in the data are never errors: they are recorded as sample statuses and the run goes on.
"""

from __future__ import annotations

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_FAILURE = 1  # a real failure: ROOT missing, database unusable, bad option value
EXIT_USAGE = 2  # click's own code for bad command-line usage
EXIT_REFUSED_MEMBERS = 3  # extract (or materialize) finished but refused unsafe member names
EXIT_INCOMPLETE = 4  # an export finished but could not write (or remove) some files, a remote index
                     # could not read some objects, or materialize could not fetch some samples; a
                     # rerun retries them
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT (128 + 2, as shells report it)
EXIT_LOCKED = 75  # another writer holds the database (EX_TEMPFAIL: try again later)


class IndexerError(Exception):
    """A failure the user can act on; the message says what and how to fix it."""

    exit_code = EXIT_FAILURE


class DataProblem(IndexerError):
    """A problem in the data being read (a damaged shard, say): recorded for that sample or shard,
    never the end of a run (ingest/guard.py)."""


class DatabaseLocked(IndexerError):
    exit_code = EXIT_LOCKED


class ExportIncomplete(IndexerError):
    """The export ran to the end but some of its files could not be written; it is recorded as stale."""

    exit_code = EXIT_INCOMPLETE
