"""The one guard between the data and a run: whatever a sample or a shard raises while it is read
becomes that sample's or that shard's recorded problem, and the run goes on.

Every reader (loose files, members read in place, `extract`, `watch`, and any future source or
engine) calls its per-sample and per-shard steps through here. Failures of the environment are
not the data's fault and still stop the run with their one-line error: the database (any
sqlite3 error), a full disk or quota, memory, descriptors, an interrupt, or an IndexerError that
is not a DataProblem (those name their own fix).
"""

from __future__ import annotations

import errno
import sqlite3

from indexer.db.status import Status
from indexer.errors import DataProblem, IndexerError
from indexer.ingest.read import SampleRecord
from indexer.ingest.records import unreadable_stats

# OSError numbers that say the machine, not the file, is at fault.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE,
                                errno.EROFS})
ERROR_TEXT_LIMIT = 300  # characters of an exception's text kept in a sample's error
REPORT = "an error indexer did not expect: please report it with this message"


def is_environment_failure(exc: BaseException) -> bool:
    """Whether exc must stop the run (True) or only concerns the data being read (False)."""
    if not isinstance(exc, Exception) or isinstance(exc, (MemoryError, sqlite3.Error)):
        return True
    if isinstance(exc, IndexerError):
        return not isinstance(exc, DataProblem)
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def describe(exc: BaseException) -> str:
    """An exception as one line of a recorded error: its type and (bounded) text."""
    text = " ".join(str(exc).split())
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[:ERROR_TEXT_LIMIT] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def raise_if_environment(exc: BaseException) -> None:
    """The guard of every per-sample and per-shard step, called in its `except Exception`: exc goes
    on up when the environment failed; otherwise the caller records it for that sample or shard.
    (A try/except at each step, not a wrapper: the per-sample loop is the hot loop of a first run.)"""
    if is_environment_failure(exc):
        raise exc


def failed_record(key: str, paths: list[str], exc: BaseException, shard: str | None = None) -> SampleRecord:
    """The sample of a key whose read raised: status read_failed, the error naming its files, the
    exception and what to do."""
    cut = len(key) + 1
    extensions = sorted(path[cut:] for path in paths)
    where = ", ".join(f"{shard}:{path}" if shard else path for path in sorted(paths)) or key
    json_ext = next((ext for ext in extensions if ext.lower() == "json"), None)
    image_ext = next((ext for ext in extensions if ext != json_ext), None)
    error = f"{where}: reading failed ({describe(exc)}); {REPORT}; the rest of the run went on"
    image = f"{key}.{image_ext}" if image_ext else None
    json_path = f"{key}.{json_ext}" if json_ext else None
    return SampleRecord(image, json_path, None, None, None, Status.READ_FAILED.value, error, None, None)


def failed_sample(key: str, paths: list[str], exc: BaseException, shard: str | None = None) -> tuple:
    """failed_record as the CompactResult (rows.py) a reader sends back: its files recorded with a
    signature that never matches, so the next run reads them again (and notices when they are gone)."""
    sample = failed_record(key, paths, exc, shard)
    cut = len(key) + 1
    json_ext = sample.json[cut:] if sample.json else None
    image_ext = sample.image[cut:] if sample.image else None
    stats = unreadable_stats(key, paths, json_ext, image_ext, shard)
    return key, (image_ext, json_ext, *sample[2:]), stats, 0
