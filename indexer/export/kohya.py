"""`export kohya OUT.jsonl`: sd-scripts' fine-tuning metadata, one JSON object per image.

sd-scripts reads a metadata file line by line only when its name ends in `.jsonl` (anything
else goes to `json.load`), aborts on a blank line, joins a relative `image_path` to
--train_data_dir, and opens no image when `image_size` is given (nor checks it). So: absolute
paths unless --relative, one caption string (several joined with "\\n"; a list crashes it), and
`image_size` only where the size is the one sd-scripts would measure itself, the stored one.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from indexer.errors import IndexerError
from indexer.export import DEFAULT_CAPTIONS
from indexer.export.exif import size_doubt
from indexer.export.jsonl import write_json_lines
from indexer.export.record import output_path
from indexer.export.select import ReadSnapshot
from indexer.export.selection import make_selection

SUFFIX = ".jsonl"


def export_kohya(
    db_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    captions: Sequence[str] = DEFAULT_CAPTIONS,
    where: str | None = None,
    caption_mode: str = "first",
    relative: bool = False,
    progress: bool = False,
) -> dict:
    """Write OUT unless the last export there already holds the same rows; return the summary.

    relative=True writes root-relative image paths: sd-scripts then needs --train_data_dir set to
    the dataset root. The default, absolute paths, work whatever train_data_dir is.
    """
    path = kohya_path(out)
    selection = make_selection(captions, where, caption_mode=caption_mode)
    lines = KohyaLines(relative)
    options = {**selection.options(), "relative": relative}
    summary = write_json_lines(db_path, path, "kohya", selection, options, lines, dataset_id=dataset_id,
                               progress=progress, counts=lines.counts)
    summary["relative"] = relative
    return summary


def kohya_path(out: str | os.PathLike[str]) -> Path:
    path = output_path(out, "jsonl")
    if not path.name.endswith(SUFFIX):
        raise IndexerError(
            f"{path}: sd-scripts reads a metadata file line by line only when its name ends in .jsonl "
            f"(any other name is parsed as one JSON document and fails); name it "
            f"{path.with_name(path.name + SUFFIX).name} or similar. Nothing was written"
        )
    return path


@dataclass
class KohyaLines:
    """Encodes batches of selected rows as sd-scripts JSONL lines, counting sizes left out."""

    relative: bool
    counts: dict = field(default_factory=lambda: {"sizes_left_out": {}})
    left_out: collections.Counter = field(default_factory=collections.Counter)

    def __call__(self, snapshot: ReadSnapshot, batch: list[tuple]) -> bytes:
        root = str(snapshot.root)
        lines = []
        for _key, image, width, height, caption in batch:
            full = os.path.join(root, image)
            line: dict = {"image_path": image if self.relative else full, "caption": caption}
            reason = size_doubt(full, image, width, height)
            if reason is None:
                line["image_size"] = [width, height]
            else:
                self.left_out[reason] += 1
            lines.append(orjson.dumps(line) + b"\n")
        self.counts["sizes_left_out"] = dict(sorted(self.left_out.items()))
        return b"".join(lines)
