"""`export jsonl`: Hugging Face `imagefolder` metadata (`file_name` + `text`), one JSON object a line.

`file_name` is the image path relative to the dataset root, so the file works as
ROOT/metadata.jsonl for `datasets.load_dataset("imagefolder", data_dir=ROOT)`. `write_json_lines`
is the shared body of every one-object-a-line export (this one and `export kohya`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from indexer.export.record import (
    atomic_file,
    is_up_to_date,
    output_path,
    previous_export,
    record_export,
)
from indexer.export.select import (
    DEFAULT_CAPTIONS,
    ReadSnapshot,
    Selection,
    check_selection,
    excluded_summary,
    make_selection,
    open_snapshot,
    options_json,
    select_rows,
)
from indexer.progress import bar

# Turns one batch of selected rows into the lines to write (each ending in b"\n").
LineEncoder = Callable[[ReadSnapshot, list[tuple]], bytes]


def export_jsonl(
    db_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    captions: Sequence[str] = DEFAULT_CAPTIONS,
    where: str | None = None,
    progress: bool = False,
    caption_mode: str = "first",
) -> dict:
    """Write OUT unless the last export there already holds the same rows; return the summary.

    With caption_mode "all", `text` stays one string: the captions joined with "\\n".
    """
    selection = make_selection(captions, where, caption_mode=caption_mode)
    return write_json_lines(db_path, output_path(out, "jsonl"), "jsonl", selection, selection.options(),
                            _imagefolder_lines, dataset_id=dataset_id, progress=progress)


def _imagefolder_lines(_snapshot: ReadSnapshot, batch: list[tuple]) -> bytes:
    return b"".join(orjson.dumps({"file_name": image, "text": caption}) + b"\n"
                    for _key, image, _width, _height, caption in batch)


def write_json_lines(
    db_path: str | os.PathLike[str],
    path: Path,
    kind: str,
    selection: Selection,
    options: dict,
    encode: LineEncoder,
    *,
    dataset_id: str | None,
    progress: bool,
    counts: dict | None = None,
) -> dict:
    """Write the selected rows through `encode` to PATH (atomically), unless the last export of
    this kind there holds the same rows (same options, data and file); return the summary.

    `counts` is what the encoder tallies while it writes; it goes into the summary (and comes back
    from the recorded one when nothing had to be written).
    """
    counts = {} if counts is None else counts
    started = time.monotonic()
    recorded = options_json(options)
    with open_snapshot(db_path, dataset_id) as snapshot:
        check_selection(snapshot, selection)
        previous = previous_export(snapshot.conn, snapshot.dataset, kind, path)
        up_to_date = is_up_to_date(previous, recorded, snapshot.data_version, path)
        if up_to_date and previous is not None:
            rows, excluded = previous["rows"], previous["summary"].get("excluded", {})
            counts.update({name: previous["summary"].get(name, value) for name, value in counts.items()})
        else:
            rows = 0
            with atomic_file(path) as temp, open(temp, "wb") as handle, \
                    bar(progress, desc=kind, unit=" rows") as progress_bar:
                for batch in select_rows(snapshot, selection):
                    handle.write(encode(snapshot, batch))
                    rows += len(batch)
                    progress_bar.update(len(batch))
            excluded = excluded_summary(snapshot.excluded)
    summary = {
        "kind": kind, "dataset": snapshot.dataset, "path": str(path), "rows": rows,
        "up_to_date": up_to_date, "excluded": excluded, "data_version": snapshot.data_version,
        **counts, "seconds": round(time.monotonic() - started, 3),
    }
    if not up_to_date:
        record_export(db_path, snapshot.dataset, kind, path, options=recorded,
                      data_version=snapshot.data_version, rows=rows, summary=summary, file_path=path)
    return summary
