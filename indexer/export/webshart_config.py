"""`export config --backend webshart`: SimpleTuner 4.x's `type: webshart` entry for tar shards read
in place, pointing webshart at the shards where they are (a local folder, or a Hub dataset repo and
folder: webshart_source.py) and at the indexes where the last `export webshart` wrote them. An
entry webshart would read wrongly is refused before anything is written."""

from __future__ import annotations

import json
import os
from pathlib import Path

from indexer import store
from indexer.atomic import atomic_file
from indexer.db.readonly import connect_readonly
from indexer.errors import IndexerError
from indexer.export.config import ConfigOptions, merge_entries, read_existing, text_embeds_entry
from indexer.export.record import record_export
from indexer.export.select import options_json
from indexer.export.webshart_cache import clear_caches, entry_cache
from indexer.export.webshart_source import WebshartSource, same_named_shards, stored_root, webshart_source


def export_webshart_config(db_path: str | os.PathLike[str], path: Path, dataset_id: str | None,
                           options: ConfigOptions) -> dict:
    """The `type: webshart` entry for a dataset of tar shards, pointing at its webshart indexes: the
    shards where they are (a local folder, or a Hub dataset repo and folder: webshart_source.py),
    the indexes where the last `export webshart` wrote them."""
    conn, _guard = connect_readonly(db_path, upgrade=True)
    try:
        dataset, _root = store.resolve_dataset(conn, dataset_id)
        root = stored_root(conn, dataset)
        last = conn.execute(
            "SELECT e.path, e.rows, e.data_version = d.data_version FROM exports AS e JOIN datasets AS d"
            " ON d.id = e.dataset WHERE e.dataset = ? AND e.kind = 'webshart'"
            " ORDER BY e.exported_at DESC LIMIT 1", (dataset,)).fetchone()
        data_version = conn.execute(
            "SELECT data_version FROM datasets WHERE id = ?", (dataset,)).fetchone()[0]
        shards = [row[0] for row in conn.execute("SELECT path FROM tar_shards WHERE dataset = ?", (dataset,))]
    finally:
        conn.close()
    source = webshart_source(root)
    if last is None or not last[1]:
        raise IndexerError(
            f"dataset {dataset} has no webshart indexes with samples: run `indexer export webshart --db "
            f"{db_path}{' --metadata DIR' if source.hub else ''}` first (SimpleTuner takes "
            "every size and caption from them). Nothing was written")
    metadata, rows, current = last
    check_shards_found(source, shards, Path(metadata), db_path)
    entry = webshart_entry(dataset, source, path, metadata, options)
    entries, replaced = merge_entries(read_existing(path), entry, text_embeds_entry(path, options))
    with atomic_file(path) as temp:
        temp.write_text(json.dumps(entries, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    notes: list[str] = []
    cache = entry_cache(entry, source, str(path), notes)
    # The folder it names may hold what an earlier config's run cached from other indexes.
    cleared = clear_caches([cache] if cache else [], shards)
    summary = {
        "kind": "config", "dataset": dataset, "path": str(path), "caption_strategy": "webshart",
        "reason": f"webshart reads captions from the indexes ({rows:,} samples)", "replaced": replaced,
        "entries": len(entries), "entry": entry, "cleared": cleared, "notes": source_notes(source, metadata),
        "warnings": notes + ([] if current else ["the data changed since the last `export webshart`: run it "
                                                 "again"]),
    }
    record_export(db_path, dataset, "config", path, options=options_json(vars(options)),
                  data_version=data_version, rows=None, summary=summary, file_path=path)
    return summary


def webshart_entry(dataset: str, source: WebshartSource, out: Path, metadata: str,
                   options: ConfigOptions) -> dict:
    """The entry: `source` (and `subfolder`) as webshart takes them, `metadata` unless the indexes
    are beside the shards; never a token (webshart reads HF_TOKEN where SimpleTuner runs)."""
    entry: dict = {"id": dataset, "type": "webshart", **source.entry_keys()}
    if source.hub or metadata != source.source:
        entry["metadata"] = metadata
    entry.update(resolution=options.resolution, resolution_type=options.resolution_type)
    for name in ("minimum_image_size", "maximum_image_size", "target_downsample_size"):
        value = getattr(options, name)
        if value is not None:
            entry[name] = value
    entry["cache_dir_vae"] = options.cache_dir_vae or str(out.parent / "cache" / "vae" / dataset)
    entry["caption_strategy"] = "webshart"
    entry["metadata_backend"] = "webshart"
    # without an explicit cache_dir SimpleTuner puts its bucket cache in a relative cache/webshart/<id>
    entry["webshart"] = {"cache_dir": options.webshart_cache_dir
                         or str(out.parent / "cache" / "webshart" / dataset)}
    return entry


def check_shards_found(source: WebshartSource, shards: list[str], metadata: Path, db_path: object) -> None:
    """Refuse an entry webshart would read wrongly: two Hub shards of one file name (webshart keeps
    one of them, and its caches mix them), or a shard whose index is not where webshart looks (an
    index removed since, or written where an older `export webshart` put it)."""
    clashes = same_named_shards(source, shards)
    if clashes:
        first, second = clashes[0]
        raise IndexerError(
            f"{len(clashes):,} Hub shards share a file name with another (first: {first} and {second}): "
            "webshart 0.6.0 knows a Hub shard by its file name alone, keeps one of them and caches them as "
            "one. Index each folder as its own dataset (hf://datasets/.../FOLDER) or rename the shards. "
            "Nothing was written")
    missing = [shard for shard in sorted(shards)
               if not (metadata / (source.index_folder(shard) + ".json")).is_file()]
    if missing:
        where = metadata / (source.index_folder(missing[0]) + ".json")
        raise IndexerError(
            f"{len(missing):,} of {len(shards):,} shards have no index where webshart looks for it (first: "
            f"{where}): run `indexer export webshart --db {db_path}"
            f"{f' --metadata {metadata}' if source.hub or metadata != Path(source.source) else ''}` again. "
            "Nothing was written")


def source_notes(source: WebshartSource, metadata: str) -> list[str]:
    if not source.hub:
        return []
    folder = f", folder {source.subfolder}" if source.subfolder else ""
    return [f"SimpleTuner reads the shards from the Hub dataset repo {source.source} (revision main{folder}) "
            f"and their indexes from {metadata}; for a private repo set HF_TOKEN where it runs (webshart "
            "reads no saved login)"]
