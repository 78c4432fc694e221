"""`export jsonl`: Hugging Face `imagefolder` metadata (`file_name` + `text`), one JSON object a line.

`file_name` is the image path relative to the dataset root, so the file works as
ROOT/metadata.jsonl for `datasets.load_dataset("imagefolder", data_dir=ROOT)`. `write_json_lines`
is the shared body of every one-object-a-line export (this one and `export kohya`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from indexer.export import DEFAULT_CAPTIONS
from indexer.export.one_file import export_file
from indexer.export.record import output_path
from indexer.export.select import ReadSnapshot, select_rows
from indexer.export.selection import Selection, make_selection
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
                            _imagefolder_lines, dataset_id=dataset_id, progress=progress, local_files=False)


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
    local_files: bool = True,
) -> dict:
    """Write the selected rows through `encode` to PATH (atomically), unless the last export of
    this kind there holds the same rows (same options, data and file); return the summary.

    `counts` is what the encoder tallies while it writes (see one_file.export_file). An encoder
    may leave a row out (it then counts why into snapshot.excluded): the rows are the lines
    written, counted by their ends (JSON escapes any line break inside a value).
    """

    def write(snapshot: ReadSnapshot, temp: Path) -> int:
        rows = 0
        with open(temp, "wb") as handle, bar(progress, desc=kind, unit=" rows") as progress_bar:
            for batch in select_rows(snapshot, selection):
                lines = encode(snapshot, batch)
                handle.write(lines)
                rows += lines.count(b"\n")
                progress_bar.update(len(batch))
        return rows

    return export_file(db_path, path, kind, selection, options, write, dataset_id=dataset_id, counts=counts,
                       local_files=local_files)
