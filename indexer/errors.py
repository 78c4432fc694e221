"""Errors that end a command with a clear message and a documented exit code.

Problems in the data are never errors: they are recorded as sample statuses and the run goes on.
"""

from __future__ import annotations

# Exit codes. The comment beside each is what docs/reference/exit-codes.md says it means (cog writes
# that page from these lines; tests/test_docs.py checks every code is there).
EXIT_OK = 0  # the command finished (problems in the data are recorded, not failures)
EXIT_FAILURE = 1  # a real failure: ROOT missing, the database unusable or not an indexer database (left
                  # untouched), read-only for a writing command, an invalid option value or SQL
EXIT_USAGE = 2  # command-line usage error (click's own code)
EXIT_REFUSED_MEMBERS = 3  # `extract` finished but refused unsafe tar members (`materialize`: refused
                          # unsafe names); everything else was written
EXIT_INCOMPLETE = 4  # an export finished but could not write (or remove) some of its files: they are
                     # named, the export is recorded as stale and the next run retries them; an `index`
                     # could not read some shards or objects (`unread`), or a `materialize` some
                     # samples: a rerun retries them
EXIT_INTERRUPTED = 130  # interrupted (Ctrl-C, 128 + SIGINT as shells report it): what was committed is
                        # kept; run the command again to finish
EXIT_LOCKED = 75  # another writer holds the database (EX_TEMPFAIL); try again when it is done

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
