"""A sample row's file records: the one owner of the stat columns and of `other_files`.

A sample stores the records of its files in its own row (schema 009): its JSON's size and
signature, its image's size, mtime and signature, the rare other files (a second image, a second
spelling of the JSON) as a JSON array in `other_files`, and, for a member of a tar shard, the shard
and the members' data offsets. Every reader builds these columns here and every writer, scan and
merge reads them back here, so a new kind of origin (an object in a bucket) changes one module.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from indexer.ingest.change import INT64_MAX, INT64_MIN, NEVER_MATCHES, FileRecord, clamp_int64, stat_signature

JSON_EXT = "json"
# The samples columns a read decides, in the order of a CompactResult's sample row.
STORED_COLUMNS = ("image_ext", "json_ext", "width", "height", "size_from", "status", "error", "warning",
                  "meta")
STAT_COLUMNS = ("json_size", "json_sig", "image_size", "image_mtime_ns", "image_sig", "other_files",
                "shard", "json_offset", "image_offset")  # the last three: members of a tar shard
SCRATCH_COLUMNS = ("key", *STORED_COLUMNS, *STAT_COLUMNS)  # a sample row as readers write it ahead


class StatRow(NamedTuple):
    """A row's stat columns by name (readers send them as a plain tuple: it pickles cheaper)."""

    json_size: int | None
    json_sig: int | None
    image_size: int | None
    image_mtime_ns: int | None
    image_sig: int | None
    other_files: str | None
    shard: str | None
    json_offset: int | None
    image_offset: int | None


class OtherFile(NamedTuple):
    """One entry of `other_files`."""

    ext: str
    size: int
    mtime_ns: int | None
    sig: int


def other_files(text: str | None) -> list[OtherFile]:
    """The entries of an `other_files` value (None: there are none)."""
    return [OtherFile(*entry) for entry in orjson.loads(text)] if text else []


def encode_other_files(entries: list[OtherFile] | list[list]) -> str | None:
    if not entries:
        return None
    listed = sorted(list(entry) for entry in entries)
    return orjson.dumps(listed).decode() if listed else None


def recorded_files(key: str, json_ext: str | None, json_sig: int | None, image_ext: str | None,
                   image_sig: int | None, others: str | None) -> dict[str, int | None]:
    """The loose files a sample row records, {path: stored signature} (the `files` view's rows)."""
    found: dict[str, int | None] = {}
    if json_ext is not None:
        found[f"{key}.{json_ext}"] = json_sig
    if image_ext is not None:
        found[f"{key}.{image_ext}"] = image_sig
    for entry in other_files(others):
        found[f"{key}.{entry.ext}"] = entry.sig
    return found


def file_stats(key: str, json_path: str | None, image_path: str | None, files: list[FileRecord]) -> tuple:
    """The stat columns (a StatRow as a plain tuple) of a loose sample from its files' records.
    (FileRecord.signature and .stored_mtime_ns, unrolled: this runs for every file of a first run.)"""
    json_size = json_sig = image_size = image_mtime_ns = image_sig = None
    others = []
    for path, size, mtime_ns, ctime_ns, inode, racy in files:
        sig = NEVER_MATCHES if racy else stat_signature(size, mtime_ns, ctime_ns, inode)
        stored_mtime = mtime_ns if INT64_MIN <= mtime_ns <= INT64_MAX else clamp_int64(mtime_ns)
        if path == json_path:
            json_size, json_sig = size, sig
        elif path == image_path:
            image_size, image_mtime_ns, image_sig = size, stored_mtime, sig
        else:
            others.append([path[len(key) + 1:], size, stored_mtime, sig])
    return (json_size, json_sig, image_size, image_mtime_ns, image_sig, encode_other_files(others),
            None, None, None)


def member_stats(shard: str, json_size: int | None, json_offset: int | None, image_size: int | None,
                 image_mtime_ns: int | None, image_offset: int | None) -> tuple:
    """The stat columns of a sample read from a tar shard's members (no signatures: the shard's
    own record in tar_shards decides whether it changed)."""
    return (json_size, None, image_size, image_mtime_ns, None, None, shard, json_offset, image_offset)


def unreadable_stats(key: str, paths: list[str], json_ext: str | None, image_ext: str | None,
                     shard: str | None) -> tuple:
    """The stat columns of a key whose read failed: its files recorded with a signature that never
    matches, so the next run reads them again (and notices when they are gone)."""
    cut = len(key) + 1
    others = [OtherFile(path[cut:], 0, None, NEVER_MATCHES) for path in paths
              if path[cut:] not in (json_ext, image_ext)]
    return (None, NEVER_MATCHES if json_ext else None, None, None, NEVER_MATCHES if image_ext else None,
            encode_other_files(others), shard, None, None)


_JSON_SIZE_AT = STAT_COLUMNS.index("json_size")
_OTHER_FILES_AT = STAT_COLUMNS.index("other_files")


def json_bytes_in(stats: tuple) -> int:
    """The JSON bytes a stat row records: its JSON, plus any other spelling of one (x.JSON).
    (By position: it runs once a row in a first run's readers.)"""
    total = stats[_JSON_SIZE_AT] or 0
    if stats[_OTHER_FILES_AT]:
        total += sum(entry.size for entry in other_files(stats[_OTHER_FILES_AT])
                     if entry.ext.lower() == JSON_EXT)
    return total
