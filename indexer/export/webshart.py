"""`export webshart`: one index per tar shard, for SimpleTuner 4.x's `type: webshart` datasets.

webshart (0.6.0) pairs each `X.tar` with an index `X.json` beside it, or at the same relative
path under a separate metadata folder: `{"path": "X.tar", "filesize": N, "files": {member:
{"offset", "length", "width", "height", "captions"}}}`. SimpleTuner takes width/height only from
the index (a sample without them is dropped, no image is opened to bucket it), and captions only
from the index's `captions` (DALLE-3's `short_caption` is not a key webshart looks for). So every
selected image gets its size and captions here, and a --where filters the training set without
rewriting a tar. Sizes are plain ints: a float or a string makes webshart reject the whole index.

Nothing is written inside a tar; each index is written beside the shard (or under --metadata)
atomically, and only when its bytes change. A shard whose selection is now empty gets an index
with no files, so an old index can never keep stale samples alive.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from indexer.atomic import atomic_file
from indexer.errors import IndexerError
from indexer.export import DEFAULT_CAPTIONS
from indexer.export.record import record_export
from indexer.export.select import (
    ReadSnapshot,
    check_selection,
    excluded_summary,
    open_snapshot,
    options_json,
    safe_relative,
    select_rows,
)
from indexer.export.selection import Selection, make_selection
from indexer.progress import bar

MEMBER_SQL = ["samples.image_offset", "samples.image_size"]


def export_webshart(
    db_path: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    captions: Sequence[str] = DEFAULT_CAPTIONS,
    where: str | None = None,
    caption_mode: str = "first",
    metadata: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> dict:
    """Write the webshart index of every indexed shard of the dataset; return the summary."""
    started = time.monotonic()
    selection = make_selection(captions, where, caption_mode=caption_mode)
    written = unchanged = rows = 0
    with open_snapshot(db_path, dataset_id) as snapshot:
        root = snapshot.root
        target = metadata_folder(metadata, root)
        check_selection(snapshot, selection)
        shards = snapshot.conn.execute(
            "SELECT path, size, mtime_ns, ctime_ns, inode FROM tar_shards WHERE dataset = ? ORDER BY path",
            (snapshot.dataset,)).fetchall()
        if not shards:
            raise IndexerError(f"dataset {snapshot.dataset} has no tar shards indexed in place: run "
                               f"`indexer index {root}` on the folder that holds the .tar files first")
        with bar(progress, desc="webshart", unit=" shards", total=len(shards)) as progress_bar:
            for shard, *recorded in shards:
                files = shard_files(snapshot, selection, shard)
                index = {"path": Path(shard).name, "filesize": current_size(root, shard, tuple(recorded)),
                         "files": files}
                rows += len(files)
                if write_if_changed(index_path(target, shard), orjson.dumps(index)):
                    written += 1
                else:
                    unchanged += 1
                progress_bar.update(1)
        excluded = excluded_summary(snapshot.excluded)
    summary = {
        "kind": "webshart", "dataset": snapshot.dataset, "path": str(target), "rows": rows,
        "shards": len(shards), "written": written, "unchanged": unchanged, "up_to_date": written == 0,
        "excluded": excluded, "data_version": snapshot.data_version,
        "seconds": round(time.monotonic() - started, 3),
    }
    record_export(db_path, snapshot.dataset, "webshart", target,
                  options=options_json({**selection.options(), "metadata": str(target)}),
                  data_version=snapshot.data_version, rows=rows, summary=summary)
    return summary


def metadata_folder(metadata: str | os.PathLike[str] | None, root: Path) -> Path:
    """Where the indexes go: beside the shards, or a folder the user named (which must exist)."""
    if metadata is None:
        return root
    folder = Path(metadata).expanduser().absolute()
    if not folder.is_dir():
        raise IndexerError(f"--metadata {folder} is not a folder: create it first (the indexes go there,"
                           " at the shards' relative paths)")
    return folder


def shard_files(snapshot: ReadSnapshot, selection: Selection, shard: str) -> dict[str, dict]:
    """The index's `files`: each selected image member of the shard with its size and captions."""
    files: dict[str, dict] = {}
    several = selection.caption_mode == "all"
    for batch in select_rows(snapshot, selection, MEMBER_SQL, in_shards=True, shard=shard):
        for _key, image, width, height, caption, offset, length in batch:
            entry: dict = {"offset": offset, "length": length, "width": int(width), "height": int(height)}
            if caption is not None:
                entry["captions"] = caption.split("\n") if several else caption
            files[image] = entry
    return files


def current_size(root: Path, shard: str, recorded: tuple[int, int, int, int]) -> int:
    """The shard's size now. A shard that changed since it was indexed (size, mtime, ctime or inode
    moved, as the index itself decides) has stale offsets."""
    try:
        st = os.stat(root / shard)
    except OSError as exc:
        raise IndexerError(f"shard {root / shard} is gone ({exc.strerror}): run `indexer index {root}`"
                           " again, then export") from exc
    if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != recorded:
        raise IndexerError(f"shard {root / shard} changed since it was indexed (its offsets would be wrong):"
                           f" run `indexer index {root}` again, then export. Nothing more was written")
    return st.st_size


def index_path(target: Path, shard: str) -> Path:
    if not safe_relative(shard):
        raise IndexerError(f"shard path {shard!r} would leave {target}: refusing to write its index")
    path = target / shard
    return path.with_name(path.name[: -len(".tar")] + ".json")


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` to path atomically unless the file already holds exactly it."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temp:
        temp.write_bytes(data)
    return True
