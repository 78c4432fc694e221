"""`export parquet`: the samples SimpleTuner's parquet metadata backend reads, streamed from SQLite.

Rows go from the snapshot cursor to Arrow in batches and out as ~128k-row zstd row groups, so
memory stays flat in the row count. The file is written beside OUT and renamed over it.

With --caption-mode all the caption column is `list<string>`, one item a caption, never null or
empty (a sample without a caption is not exported). SimpleTuner 3.1.6 and 4.10.1 take a list-valued
caption cell as several captions all along the training path: the parquet check accepts arrays
(it rejects null and empty ones), the caption cache turns the array into a list, the text embeds
are computed for every item, and the sampler draws one item at random for each step. (What both
crash on is `caption_column` given as a list of column NAMES, which this never writes.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from indexer.db.counts import sample_count
from indexer.export import DEFAULT_CAPTIONS
from indexer.export.one_file import export_file
from indexer.export.record import output_path
from indexer.export.select import ReadSnapshot, column_sql, select_rows
from indexer.export.selection import Selection, make_selection
from indexer.progress import bar

ROW_GROUP_ROWS = 131_072
CAPTION_TYPES = {"first": pa.string(), "all": pa.list_(pa.string())}


def export_parquet(
    db_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    captions: Sequence[str] = DEFAULT_CAPTIONS,
    where: str | None = None,
    columns: Sequence[str] = (),
    progress: bool = False,
    caption_mode: str = "first",
) -> dict:
    """Write OUT unless the last export there already holds the same rows; return the summary."""
    selection = make_selection(captions, where, columns, caption_mode)
    return export_file(db_path, output_path(out, "parquet"), "parquet", selection, selection.options(),
                       lambda snapshot, temp: write_parquet(snapshot, selection, temp, progress),
                       dataset_id=dataset_id, sized=True, local_files=False)


def parquet_schema(snapshot: ReadSnapshot, selection: Selection) -> tuple[pa.Schema, list[str], dict]:
    params: dict = {}
    caption = CAPTION_TYPES[selection.caption_mode]
    fields = [("width", pa.int64()), ("height", pa.int64()), ("caption", caption), ("filename", pa.string())]
    extra_sql = []
    for number, name in enumerate(selection.columns):
        sql, arrow_type = column_sql(name, number, params)
        fields.append((name, arrow_type))
        extra_sql.append(sql)
    return pa.schema(fields), extra_sql, params


def write_parquet(snapshot: ReadSnapshot, selection: Selection, temp: Path, progress: bool) -> int:
    """Each fetched batch becomes compact Arrow data at once; row groups are cut at ROW_GROUP_ROWS."""
    schema, extra_sql, params = parquet_schema(snapshot, selection)
    total = sample_count(snapshot.conn, snapshot.dataset) if progress else None
    written = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    with pq.ParquetWriter(temp, schema, compression="zstd") as writer, \
            bar(progress, desc="parquet", unit=" rows", total=total) as progress_bar:
        for rows in select_rows(snapshot, selection, extra_sql, params, caption_lists=True):
            pending.append(_record_batch(schema, rows))
            pending_rows += len(rows)
            progress_bar.update(len(rows))
            if pending_rows >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=pending_rows)
                written += pending_rows
                pending, pending_rows = [], 0
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=pending_rows)
            written += pending_rows
    return written


def _record_batch(schema: pa.Schema, rows: list[tuple]) -> pa.RecordBatch:
    """(key, image, width, height, caption, *extra) rows -> the file's column order."""
    columns = list(zip(*rows, strict=True))
    ordered = [columns[2], columns[3], columns[4], columns[1], *columns[5:]]
    arrays = [pa.array(values, type=field.type) for values, field in zip(ordered, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
