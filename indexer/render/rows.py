"""`indexer query` output: the rows of one read-only statement streamed as table, CSV, JSON or JSONL.

Rows are written as they are fetched (inspect/query.py pulls FETCH_ROWS at a time), so csv/json/jsonl
hold one batch in memory whatever the result size; the table format sizes its columns from the
first TABLE_PREVIEW_ROWS rows.
"""

from __future__ import annotations

import base64
import csv
import os
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson

from indexer.db.readonly import connect_readonly
from indexer.errors import IndexerError
from indexer.inspect.query import column_names, execute_readonly, iter_rows

FORMATS = ("table", "csv", "json", "jsonl")
TABLE_PREVIEW_ROWS = 1000  # the table format sizes its columns from this many rows
TABLE_MAX_WIDTH = 60  # longer cells are cut with "…" in the table format (csv/json keep them whole)


def run_query(db_path: str | os.PathLike[str], sql: str, out: TextIO, *, fmt: str = "table",
              params: dict[str, str] | None = None) -> int:
    """Run SQL read-only against the database and write its rows to out; returns the row count."""
    if fmt not in FORMATS:
        raise IndexerError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    conn, guard = connect_readonly(db_path)
    try:
        cursor = execute_readonly(conn, guard, sql, params or {})
        names = column_names(cursor)
        return WRITERS[fmt](names, iter_rows(cursor), out)
    finally:
        conn.close()


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": True, "encoded": base64.b64encode(value).decode()}
    return value


def _dumps(names: list[str], row: tuple) -> str:
    return orjson.dumps(dict(zip(names, map(_json_value, row), strict=True))).decode()


def write_jsonl(names: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(_dumps(names, row) + "\n")
        count += 1
    return count


def write_json(names: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    """A JSON array written row by row, so it streams like jsonl."""
    count = 0
    out.write("[")
    for row in rows:
        out.write(("\n " if count == 0 else ",\n ") + _dumps(names, row))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def write_csv(names: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    count = 0
    for row in rows:
        writer.writerow(["" if v is None else base64.b64encode(v).decode() if isinstance(v, bytes)
                         else v for v in row])
        count += 1
    return count


def table_cell(value: Any) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= TABLE_MAX_WIDTH else text[: TABLE_MAX_WIDTH - 1] + "…"


def write_table(names: list[str], rows: Iterable[tuple], out: TextIO) -> int:
    """Columns sized from the first TABLE_PREVIEW_ROWS rows; later rows stream with those widths."""
    iterator = iter(rows)
    preview = []
    for row in iterator:
        preview.append(tuple(map(table_cell, row)))
        if len(preview) >= TABLE_PREVIEW_ROWS:
            break
    widths = [len(name) for name in names]
    numeric = [True] * len(names)
    for cells in preview:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], len(cell))
    for row in preview:
        for i, cell in enumerate(row):
            numeric[i] = numeric[i] and (cell == "NULL" or _looks_numeric(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if num else cell.ljust(w)
                         for cell, w, num in zip(cells, widths, numeric, strict=True)).rstrip()

    out.write(line(names) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for cells in preview:
        out.write(line(cells) + "\n")
    count = len(preview)
    for row in iterator:
        out.write(line(tuple(map(table_cell, row))) + "\n")
        count += 1
    return count


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


WRITERS = {"table": write_table, "csv": write_csv, "json": write_json, "jsonl": write_jsonl}
