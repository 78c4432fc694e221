"""`export jsonl`: Hugging Face `imagefolder` metadata (`file_name` + `text`), one JSON object a line.

`file_name` is the image path relative to the dataset root, so the file works as
ROOT/metadata.jsonl for `datasets.load_dataset("imagefolder", data_dir=ROOT)`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

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
    check_selection,
    excluded_summary,
    make_selection,
    open_snapshot,
    options_json,
    select_rows,
)
from indexer.progress import bar


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

    With caption_mode "all", `text` stays one string: the captions joined with "\n".
    """
    started = time.monotonic()
    path = output_path(out, "jsonl")
    selection = make_selection(captions, where, caption_mode=caption_mode)
    options = options_json(selection.options())
    with open_snapshot(db_path, dataset_id) as snapshot:
        check_selection(snapshot, selection)
        previous = previous_export(snapshot.conn, snapshot.dataset, "jsonl", path)
        up_to_date = is_up_to_date(previous, options, snapshot.data_version, path)
        if up_to_date and previous is not None:
            rows, excluded = previous["rows"], previous["summary"].get("excluded", {})
        else:
            rows = 0
            with atomic_file(path) as temp, open(temp, "wb") as handle, \
                    bar(progress, desc="jsonl", unit=" rows") as progress_bar:
                for batch in select_rows(snapshot, selection):
                    handle.write(b"".join(
                        orjson.dumps({"file_name": image, "text": caption}) + b"\n"
                        for _key, image, _width, _height, caption in batch
                    ))
                    rows += len(batch)
                    progress_bar.update(len(batch))
            excluded = excluded_summary(snapshot.excluded)
    summary = {
        "kind": "jsonl", "dataset": snapshot.dataset, "path": str(path), "rows": rows,
        "up_to_date": up_to_date, "excluded": excluded, "data_version": snapshot.data_version,
        "seconds": round(time.monotonic() - started, 3),
    }
    if not up_to_date:
        record_export(db_path, snapshot.dataset, "jsonl", path, options=options,
                      data_version=snapshot.data_version, rows=rows, summary=summary, file_path=path)
    return summary
