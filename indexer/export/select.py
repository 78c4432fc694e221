"""Which samples an export writes, and with what caption: shared by every export kind (the
Selection itself, the user's choice, is built in selection.py).

Selection happens in one read transaction (a snapshot), so the rows and the data_version recorded
with the export agree even while `index` or `watch` writes to the same database. The snapshot is
the read-only connection of db/readonly.py, and a user's `--where` is checked before it runs, so
an export never writes through it.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa

from indexer import store
from indexer.db.readonly import connect_readonly
from indexer.db.status import Status
from indexer.errors import IndexerError
from indexer.export.selection import WHERE_EXAMPLE, Selection, json_path

BATCH_ROWS = 20_000
SNAPSHOT_CACHE_KIB = 8192
# Characters stripped from both ends of a caption: a trailing newline would otherwise become an
# empty extra caption in a SimpleTuner .txt file.
TRIM = "char(32, 9, 10, 13)"
STRIP = " \t\n\r"  # the same characters, for captions joined in Python
# Output columns read straight from a samples column, with their Arrow type (--column NAME).
SAMPLE_COLUMN_TYPES: dict[str, pa.DataType] = {
    "id": pa.int64(), "key": pa.string(), "image": pa.string(), "json": pa.string(),
    "size_from": pa.string(), "warning": pa.string(), "data_version": pa.int64(),
}
FIELD_SAMPLE_ROWS = 1000  # rows whose top-level keys are counted to suggest a field name
CLOSE_FIELDS = 3
COMMON_FIELDS = 8


@dataclass
class ReadSnapshot:
    """A read transaction over one dataset: the rows an export holds and the data_version it
    records come from the same moment (not scan.Snapshot, the stored file records of a scan)."""

    conn: sqlite3.Connection
    dataset: str
    root: Path
    data_version: int
    excluded: collections.Counter = field(default_factory=collections.Counter)


def caption_sql(captions: Sequence[str], params: dict) -> str:
    """First non-empty caption among the fields; a list field gives its first non-empty item."""
    parts = []
    for number, name in enumerate(captions):
        param = f"caption{number}"
        params[param] = json_path(name, "--caption")
        parts.append(
            f"CASE json_type(samples.meta, :{param})"
            f" WHEN 'text' THEN nullif(trim(samples.meta ->> :{param}, {TRIM}), '')"
            f" WHEN 'array' THEN (SELECT trim(item.value, {TRIM}) FROM json_each(samples.meta, :{param})"
            f" AS item WHERE item.type = 'text' AND trim(item.value, {TRIM}) != '' LIMIT 1) END"
        )
    return parts[0] if len(parts) == 1 else "coalesce(" + ", ".join(parts) + ")"


def all_captions_sql(captions: Sequence[str], params: dict) -> str:
    """The raw value of every --caption field as one JSON array, for join_captions to flatten."""
    parts = []
    for number, name in enumerate(captions):
        param = f"caption{number}"
        params[param] = json_path(name, "--caption")
        parts.append(f"samples.meta -> :{param}")
    return f"json_array({', '.join(parts)})"


def caption_items(values_json: str) -> list[str] | None:
    """`--caption-mode all`: every non-empty text of the fields in order (list items included,
    nested lists and non-text values skipped, as in first mode), each stripped like first mode's
    caption, duplicates dropped. A line break inside one field is kept, as in first mode. None when
    there is none, so a sample is excluded as `no_caption` exactly when first mode excludes it."""
    found: dict[str, None] = {}
    for value in orjson.loads(values_json):
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, str) and (text := item.strip(STRIP)):
                found.setdefault(text)
    return list(found) or None


def join_captions(values_json: str) -> str | None:
    """caption_items joined with "\n": the caption of every export that takes one string (a
    SimpleTuner caption .txt holds one caption a line)."""
    items = caption_items(values_json)
    return "\n".join(items) if items else None


def caption_column_sql(selection: Selection, params: dict) -> str:
    if not selection.captions:
        return "NULL"
    if selection.caption_mode == "all":
        return all_captions_sql(selection.captions, params)
    return caption_sql(selection.captions, params)


def column_sql(name: str, number: int, params: dict) -> tuple[str, pa.DataType]:
    """SQL and Arrow type of an extra output column: a samples column or any JSON field as text."""
    if name in SAMPLE_COLUMN_TYPES:
        return f"samples.{name}", SAMPLE_COLUMN_TYPES[name]
    if name == "aspect_ratio":
        return "round(CAST(samples.width AS REAL) / samples.height, 4)", pa.float64()
    param = f"column{number}"
    params[param] = json_path(name, "--column")
    # Strings as they are, numbers and lists as their JSON text, so a column never mixes types.
    sql = (f"CASE json_type(samples.meta, :{param}) WHEN 'text' THEN samples.meta ->> :{param}"
           f" WHEN 'null' THEN NULL ELSE samples.meta -> :{param} END")
    return sql, pa.string()


@contextlib.contextmanager
def open_snapshot(db_path: str | os.PathLike[str], dataset_id: str | None, *,
                  local_files: bool = True) -> Iterator[ReadSnapshot]:
    """A query-only connection holding one read transaction for the whole selection.

    local_files: the export writes files beside the samples, or paths a trainer opens, so it
    refuses a dataset indexed in place in a bucket, on the Hub or behind URLs (its root is a URL:
    a relative path of it would land in the current folder) and says what to do instead."""
    if not os.path.exists(db_path):
        raise IndexerError(
            f"database {db_path} does not exist: run `indexer index ROOT --db {db_path}` first"
        )
    conn, _guard = connect_readonly(db_path, upgrade=True, cache_kib=SNAPSHOT_CACHE_KIB)
    try:
        dataset, root = store.resolve_dataset(conn, dataset_id)
        if local_files and not root.is_absolute():  # local roots are stored resolved; URLs are not
            [(url,)] = conn.execute("SELECT root FROM datasets WHERE id = ?", (dataset,)).fetchall()
            raise IndexerError(
                f"dataset {dataset} lives at {url}: this export needs the files on a local disk; fetch"
                f" the samples you want with `indexer materialize DIR --id {dataset} [--where ...]` and"
                " export DIR's dataset (`export parquet` and `export jsonl`, whose paths are relative,"
                " work here as they are)")
        conn.execute("BEGIN")
        version = conn.execute("SELECT data_version FROM datasets WHERE id = ?", (dataset,)).fetchone()[0]
        yield ReadSnapshot(conn, dataset, root, int(version))
        conn.execute("COMMIT")
    finally:
        conn.close()


def check_selection(snapshot: ReadSnapshot, selection: Selection, *, refuse_empty_where: bool = True) -> None:
    """Refuse a selection that is a mistake before anything is written.

    A --caption or --column field that no selected sample has would silently export nothing (and
    make `export captions` remove its files); a --where matching none of the exportable samples
    would write an empty file. Each probe stops at its first matching row, so a selection that is
    fine costs a few row reads.
    """
    params: dict = {"dataset": snapshot.dataset}
    within = f" AND ({selection.where})" if selection.where else ""
    ok = f"SELECT 1 FROM samples WHERE samples.dataset = :dataset AND samples.status = '{Status.OK}'"
    exportable = ok + " AND samples.width AND samples.height"
    if not _exists(snapshot, exportable + within, params, selection.where):
        if selection.where and refuse_empty_where:
            count = snapshot.conn.execute(f"SELECT count(*) FROM ({exportable})", params).fetchone()[0]
            if count:
                raise IndexerError(
                    f"--where {selection.where!r} matches none of the {count:,} exportable samples "
                    f"(status ok, with a size) of dataset {snapshot.dataset!r}; nothing was written. "
                    "Check the condition, e.g. with `indexer query \"SELECT count(*) FROM samples "
                    "WHERE ...\"`"
                )
        return  # nothing selected: there is no field to look for
    fields = [("--caption", name) for name in selection.captions]
    fields += [("--column", name) for name in selection.columns
               if name not in SAMPLE_COLUMN_TYPES and name != "aspect_ratio"]
    missing = [(option, name) for option, name in fields
               if not _exists(snapshot, ok + within + " AND json_type(samples.meta, :field) IS NOT NULL",
                              {**params, "field": json_path(name, option)}, selection.where)]
    if missing:
        raise IndexerError(missing_fields_message(snapshot, missing, selection.where))


def sample_reasons(conn: sqlite3.Connection, dataset: str) -> collections.Counter:
    """Every sample of the dataset by why it can or cannot be exported: its status when not ok,
    `no_size`, or `exportable` (status ok with a size: what any export can hold)."""
    rows = conn.execute(
        f"SELECT CASE WHEN status != '{Status.OK}' THEN status WHEN NOT coalesce(width AND height, 0)"
        " THEN 'no_size' ELSE 'exportable' END AS reason, count(*) FROM samples WHERE dataset = ?"
        " GROUP BY reason", (dataset,),
    ).fetchall()
    return collections.Counter(dict(rows))


def _exists(snapshot: ReadSnapshot, sql: str, params: dict, where: str | None) -> bool:
    return execute_where(snapshot.conn, sql + " LIMIT 1", params, where).fetchone() is not None


def common_fields(snapshot: ReadSnapshot) -> list[str]:
    """Top-level JSON keys of the dataset, most common first, counted over a bounded sample."""
    rows = snapshot.conn.execute(
        f"SELECT field.key FROM (SELECT meta FROM samples WHERE dataset = ? AND status = '{Status.OK}'"
        " LIMIT ?) AS s, json_each(s.meta) AS field GROUP BY field.key ORDER BY count(*) DESC, field.key",
        (snapshot.dataset, FIELD_SAMPLE_ROWS),
    ).fetchall()
    return [row[0] for row in rows]


def missing_fields_message(snapshot: ReadSnapshot, missing: Sequence[tuple[str, str]],
                           where: str | None) -> str:
    known = common_fields(snapshot)
    named = []
    for option, name in missing:
        close = difflib.get_close_matches(name, known, n=CLOSE_FIELDS, cutoff=0.6)
        if name in known:
            named.append(f"{option} {name} (only samples the --where excludes have it)")
        else:
            named.append(f"{option} {name}" + (f" (closest: {', '.join(close)})" if close else ""))
    scope = " matching the --where" if where else ""
    return (
        f"no ok sample of dataset {snapshot.dataset!r}{scope} has the JSON field {'; '.join(named)}: "
        "a misspelt field would export nothing, so nothing was written or removed. Most common fields: "
        f"{', '.join(known[:COMMON_FIELDS]) or 'none'}"
    )


def execute_where(conn: sqlite3.Connection, sql: str, params: dict, where: str | None) -> sqlite3.Cursor:
    """Run SQL holding the user's --where on the snapshot (whose guard allows reading only); an
    SQL error names the --where."""
    try:
        return conn.execute(sql, params)
    except sqlite3.Error as exc:
        raise where_error(where, exc) from exc


def where_error(where: str | None, exc: Exception) -> IndexerError:
    if where is None:
        return IndexerError(f"reading the samples failed: {exc}; check the database with `indexer index`")
    return IndexerError(
        f"--where {where!r} cannot be evaluated over samples ({exc}); use samples columns such as width, "
        f"height, status, source, short_caption, key or meta ->> '$.field', e.g. {WHERE_EXAMPLE}"
    )


def select_rows(
    snapshot: ReadSnapshot, selection: Selection, extra_sql: Sequence[str] = (),
    extra_params: dict | None = None, in_shards: bool = False, by_shard: bool = False,
    caption_lists: bool = False,
) -> Iterator[list[tuple]]:
    """Batches of exported rows: (key, image, width, height, caption, *extra) in key order.

    Excluded samples are counted into snapshot.excluded by the first reason that applies. The
    caption follows selection.caption_mode (None in a selection without captions); in all mode it
    is one string, the captions joined with "\n", or with `caption_lists` the list itself, for
    formats that hold several captions apart (a caption may hold a line break). Samples inside
    tar shards have no file a trainer could open by path: only an export for tar readers
    (in_shards=True, webshart) takes them, and it takes nothing else. by_shard: only samples in
    shards, in (shard, key) order: one ordered pass serves every shard (a query per shard would
    read the table once a shard: samples x shards)."""
    params: dict = {"dataset": snapshot.dataset, **(extra_params or {})}
    keep = f"CASE WHEN ({selection.where}) THEN 1 ELSE 0 END" if selection.where else "1"
    sql = (
        f"SELECT samples.status, {keep}, {caption_column_sql(selection, params)}, samples.shard IS NOT NULL,"
        " samples.key, samples.image, samples.width, samples.height"
        + "".join(f", {expr}" for expr in extra_sql)
        + " FROM samples WHERE samples.dataset = :dataset"
        + (" AND samples.shard IS NOT NULL ORDER BY samples.shard, samples.key" if by_shard
           else " ORDER BY samples.key")
    )
    cursor = execute_where(snapshot.conn, sql, params, selection.where)
    excluded = snapshot.excluded
    joined = selection.caption_mode == "all" and bool(selection.captions)
    several = caption_items if caption_lists else join_captions
    caption_needed = bool(selection.captions)
    while True:
        try:
            rows = cursor.fetchmany(BATCH_ROWS)
        except sqlite3.Error as exc:
            raise where_error(selection.where, exc) from exc
        if not rows:
            return
        batch = []
        for status, kept, caption, in_shard, key, image, width, height, *extra in rows:
            if in_shard != in_shards:
                excluded["in_tar_shard" if in_shard else "not_in_tar_shard"] += 1
            elif status != Status.OK:
                excluded[status] += 1
            elif not width or not height:
                excluded["no_size"] += 1
            elif not kept:
                excluded["where"] += 1
            elif (caption := several(caption) if joined else caption) is None and caption_needed:
                excluded["no_caption"] += 1
            elif not safe_relative(image):
                excluded["unsafe_path"] += 1
            else:
                batch.append((key, image, width, height, caption, *extra))
        if batch:
            yield batch


def image_file_stat_sql() -> list[str]:
    """Extra select_rows columns: the image file's size, mtime_ns and racy flag, as the index
    recorded them when it last looked at the file.

    This is the ONLY place an export reads file stat data (columns of the sample row since
    schema 009; image_sig -1 marks a racy record).
    """
    return ["samples.image_size", "samples.image_mtime_ns", "samples.image_sig = -1"]


def safe_relative(path: str | None) -> bool:
    """A root-relative, '/'-separated path that cannot climb out of the root."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return ".." not in path or ".." not in path.split("/")


def options_json(options: dict) -> str:
    return orjson.dumps(options, option=orjson.OPT_SORT_KEYS).decode()


def excluded_summary(excluded: collections.Counter) -> dict[str, int]:
    return dict(sorted(excluded.items()))
