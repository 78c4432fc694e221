"""`export webshart`: one index per tar shard, for SimpleTuner 4.x's `type: webshart` datasets.

webshart (0.6.0) pairs each `X.tar` with an index `X.json` beside it, or at the same relative
path under a separate metadata folder: `{"path": "X.tar", "filesize": N, "files": {member:
{"offset", "length", "width", "height", "captions"}}}`. SimpleTuner takes width/height only from
the index (a sample without them is dropped, no image is opened to bucket it), and captions only
from the index's `captions` (DALLE-3's `short_caption` is not a key webshart looks for). So every
selected image gets its size and captions here, and a --where filters the training set without
rewriting a tar. Sizes are plain ints: a float or a string makes webshart reject the whole index.

Each image also gets the place of its JSON sidecar in the tar (`json_path`, `json_offset`,
`json_length`, as webshart's own extract-metadata writes them): SimpleTuner's
`webshart.caption_key` reads its captions from that sidecar, through webshart's
`load_sample_json`, and finds nothing without it.

Nothing is written inside a tar; each index is written beside the shard (or under --metadata, at
the shard's path under the root, or for a Hub dataset at its path in the repo, where webshart looks)
atomically, and only when its bytes change. A shard whose selection is now empty gets an index
with no files, so an old index can never keep stale samples alive. When an index changes, what
SimpleTuner and webshart cached from the old one is removed (webshart_cache.py), before the new
index is written (a removal that fails leaves the old index, so the next run tries again) and
after (whatever a running trainer cached from the old index in between goes too).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from indexer.atomic import AtomicBatch
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
from indexer.export.webshart_cache import WebshartCache, clear_caches, find_caches
from indexer.export.webshart_source import WebshartSource, readable_source, stored_root
from indexer.progress import bar

# The image member's data, then its JSON sidecar's (a sample with status ok has both).
MEMBER_SQL = ["samples.image_offset", "samples.image_size", "samples.json", "samples.json_offset",
              "samples.json_size", "samples.shard"]


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
    cleared = {"index_copies": 0, "shard_downloads": 0, "bucket_files": 0}
    with open_snapshot(db_path, dataset_id, local_files=False) as snapshot:
        root = snapshot.root
        target = metadata_folder(metadata, root, stored_root(snapshot.conn, snapshot.dataset))
        check_selection(snapshot, selection)
        shards = indexed_shards(snapshot)
        source = readable_source(stored_root(snapshot.conn, snapshot.dataset))
        caches, notes = find_caches(snapshot.conn, snapshot.dataset, source)
        batch, written_shards = AtomicBatch(), []
        with bar(progress, desc="webshart", unit=" shards", total=len(shards)) as progress_bar, \
                contextlib.ExitStack() as cleanup:
            cleanup.callback(batch.discard)  # whatever stops the loop: no temp file is left
            selected = shard_files_in_order(snapshot, selection)
            pending = next(selected, None)
            for shard, *recorded in shards:
                files: dict[str, dict] = {}
                while pending is not None and pending[0] < shard:  # samples of a shard with no row
                    pending = next(selected, None)  # (a kill between its samples and its row)
                if pending is not None and pending[0] == shard:
                    files = pending[1]
                    pending = next(selected, None)
                index = {"path": Path(shard).name, "filesize": current_size(root, shard, tuple(recorded)),
                         "files": files}
                rows += len(files)
                if write_index(index_path(target, shard, source), orjson.dumps(index), caches, shard,
                               cleared, batch):
                    written += 1
                    written_shards.append(shard)
                else:
                    unchanged += 1
                progress_bar.update(1)
            batch.commit()
        add_counts(cleared, clear_caches(caches, written_shards))
        excluded = excluded_summary(snapshot.excluded)
    summary = {
        "kind": "webshart", "dataset": snapshot.dataset, "path": str(target), "rows": rows,
        "shards": len(shards), "written": written, "unchanged": unchanged, "up_to_date": written == 0,
        "excluded": excluded, "caches": [str(cache.cache_dir) for cache in caches], "cleared": cleared,
        "notes": notes, "data_version": snapshot.data_version,
        "seconds": round(time.monotonic() - started, 3),
    }
    record_export(db_path, snapshot.dataset, "webshart", target,
                  options=options_json({**selection.options(), "metadata": str(target)}),
                  data_version=snapshot.data_version, rows=rows, summary=summary)
    return summary


def metadata_folder(metadata: str | os.PathLike[str] | None, root: Path, url: str) -> Path:
    """Where the indexes go: beside the shards, or a folder the user named (which must exist); a
    remote dataset's (its root a URL) only to such a folder."""
    if metadata is None and not root.is_absolute():
        raise IndexerError(f"the shards of {url} cannot get their indexes beside them (nothing is written "
                           "to a bucket, the Hub or a web server): give --metadata DIR, a local folder; "
                           "`export config --backend webshart` then points SimpleTuner at both")
    if metadata is None:
        return root
    folder = Path(metadata).expanduser().absolute()
    if not folder.is_dir():
        raise IndexerError(f"--metadata {folder} is not a folder: create it first (the indexes go there,"
                           " at the shards' relative paths)")
    return folder


def indexed_shards(snapshot: ReadSnapshot) -> list[tuple]:
    """(path, size, mtime_ns, ctime_ns, inode) of every shard of the dataset indexed in place."""
    shards = snapshot.conn.execute(
        "SELECT path, size, mtime_ns, ctime_ns, inode FROM tar_shards WHERE dataset = ? ORDER BY path",
        (snapshot.dataset,)).fetchall()
    if not shards:
        raise IndexerError(f"dataset {snapshot.dataset} has no tar shards indexed in place: run "
                           f"`indexer index {snapshot.root}` on the folder that holds the .tar files first")
    return shards


def shard_files_in_order(snapshot: ReadSnapshot,
                         selection: Selection) -> Iterator[tuple[str, dict[str, dict]]]:
    """(shard, the index's `files`) for every shard with selected samples, in shard path order, from
    one pass over the table: each selected image member with its size, its captions (a list in all
    mode, each caption as it is, line breaks kept) and where its JSON sidecar is."""
    shard: str | None = None
    files: dict[str, dict] = {}
    batches = select_rows(snapshot, selection, MEMBER_SQL, in_shards=True, by_shard=True, caption_lists=True)
    for batch in batches:
        for _key, image, width, height, caption, offset, length, json_path, json_offset, json_length, \
                row_shard in batch:
            if row_shard != shard:
                if shard is not None:
                    yield shard, files
                shard, files = row_shard, {}
            entry: dict = {"offset": offset, "length": length, "width": int(width), "height": int(height)}
            if caption is not None:
                entry["captions"] = caption
            if json_offset is not None:
                entry.update(json_path=json_path, json_offset=json_offset, json_length=json_length)
            files[image] = entry
    if shard is not None:
        yield shard, files


def current_size(root: Path, shard: str, recorded: tuple[int, int, int, int]) -> int:
    """The shard's size now. A shard that changed since it was indexed (size, mtime, ctime or inode
    moved, as the index itself decides) has stale offsets. A remote shard (the root is a URL) has
    the size its listing gave when it was indexed: `indexer index URL` right before the export
    checks it against the listing again."""
    if not root.is_absolute():
        return recorded[0]
    try:
        st = os.stat(root / shard)
    except OSError as exc:
        raise IndexerError(f"shard {root / shard} is gone ({exc.strerror}): run `indexer index {root}`"
                           " again, then export") from exc
    if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != recorded:
        raise IndexerError(f"shard {root / shard} changed since it was indexed (its offsets would be wrong):"
                           f" run `indexer index {root}` again, then export. Nothing more was written")
    return st.st_size


def index_path(target: Path, shard: str, source: WebshartSource | None) -> Path:
    """Where webshart looks for the shard's index under the metadata folder: at the shard's path
    under the root, or for a Hub repo at its path in the repo (webshart_source.py)."""
    if not safe_relative(shard):
        raise IndexerError(f"shard path {shard!r} would leave {target}: refusing to write its index")
    place = source.index_folder(shard) if source else shard[: -len(".tar")]
    return target / (place + ".json")


def write_index(path: Path, data: bytes, caches: list[WebshartCache], shard: str,
                cleared: dict[str, int], batch: AtomicBatch) -> bool:
    """Queue the shard's index in the batch (written whole at its commit) unless the file already
    holds exactly `data`; what the caches hold of the old index goes now, and again after the
    commit (counted into `cleared`)."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    add_counts(cleared, clear_caches(caches, [shard]))
    path.parent.mkdir(parents=True, exist_ok=True)
    batch.add(path, data)
    return True


def add_counts(total: dict[str, int], counts: dict[str, int]) -> None:
    for name, count in counts.items():
        total[name] = total.get(name, 0) + count
