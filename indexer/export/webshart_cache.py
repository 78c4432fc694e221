"""What SimpleTuner keeps about a webshart dataset between runs, and removing it when an index changes.

SimpleTuner 4.10.1 always opens a `type: webshart` dataset with webshart's metadata cache on
(`enable_metadata_cache(location=...)`, the location being `webshart.metadata_cache_dir`, by
default `<webshart.cache_dir>/metadata_cache`). webshart 0.6.0 then keeps a copy of each shard's
index at `<location>/<dataset key>/<shard name>.json` (webshart_source.py: for a local folder the
source with "/" written "_" and the shard's path without .tar; for a Hub repo `ORG_NAME__folder`
and the shard's file name without .tar), and once that copy exists it never reads the index again:
the copy is compared with nothing. For a Hub repo SimpleTuner also turns webshart's shard cache on
(unless `webshart.shard_cache_gb` is 0): a whole copy of each shard read, at
`<webshart.shard_cache_dir, default <cache_dir>/shard_cache>/<file name>`, never checked against the
Hub either. SimpleTuner's own bucket cache beside them (`aspect_ratio_bucket_indices_<id>.json`,
its `..._captions.json`, and `aspect_ratio_bucket_metadata_<id>.json`; `_captions_<digest>` comes
before the id when `webshart.caption_key` is set) names samples by shard number and sample number
and keeps their sizes and captions; a refresh only adds samples it has not seen. After an index
changed, all of them would go on serving the old shard: the offsets webshart reads at, the bytes it
reads them from, and the samples, sizes and captions SimpleTuner trains on. Removing them is
enough: they are rebuilt from the indexes (and the shards) on the next start.

The folders are named in the SimpleTuner configs `export config --backend webshart` wrote for the
dataset, so that is where they are looked for: each config as the file is now (a user may have
edited the cache folder), and as it was written when the file is gone or unreadable.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from indexer.errors import IndexerError
from indexer.export.webshart_source import WebshartSource

METADATA_CACHE = "metadata_cache"  # SimpleTuner's defaults under webshart.cache_dir
SHARD_CACHE = "shard_cache"
BUCKET_CACHE = re.compile(r"aspect_ratio_bucket_(?:indices|metadata)(?:_captions_[0-9a-f]{16})?"
                          r"_(?P<suffix>.+?)\.json(?:_captions\.json)?")


@dataclass(frozen=True)
class WebshartCache:
    """The cache folders of one SimpleTuner webshart entry for the dataset."""

    config: str  # the multidatabackend file that names them
    cache_dir: Path  # SimpleTuner's bucket cache
    shard_copies: Path  # webshart's copies of the shard indexes: <metadata cache>/<dataset key>
    suffix: str  # SimpleTuner's cache_file_suffix: the entry's id unless the entry sets one
    source: WebshartSource
    shard_downloads: Path | None = None  # webshart's whole copies of Hub shards (None: not kept)

    def shard_copy(self, shard: str) -> Path:
        """webshart's copy of a shard's index: keyed by its name for webshart."""
        return self.shard_copies / (self.source.shard_name(shard) + ".json")

    def shard_download(self, shard: str) -> Path | None:
        """webshart's whole copy of a Hub shard: keyed by its file name."""
        return self.shard_downloads / PurePosixPath(shard).name if self.shard_downloads else None

    def bucket_files(self) -> list[Path]:
        try:
            names = os.listdir(self.cache_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise IndexerError(f"cannot list SimpleTuner's cache {self.cache_dir} ({exc.strerror}): its "
                               "bucket cache may hold samples of the old indexes; fix the permissions and "
                               "rerun") from exc
        return [self.cache_dir / name for name in sorted(names)
                if (found := BUCKET_CACHE.fullmatch(name)) and found["suffix"] == self.suffix]


def find_caches(conn: sqlite3.Connection, dataset: str,
                source: WebshartSource | None) -> tuple[list[WebshartCache], list[str]]:
    """The caches of every webshart entry for the source in the configs written for the dataset,
    and a note for each entry whose cache cannot be located (no absolute cache folder); none for
    a dataset webshart cannot read (source None)."""
    if source is None:
        return [], []
    rows = conn.execute("SELECT path, summary FROM exports WHERE dataset = ? AND kind = 'config'"
                        " ORDER BY path", (dataset,)).fetchall()
    caches: dict[tuple[Path, Path, str], WebshartCache] = {}
    notes: list[str] = []
    for path, summary in rows:
        for entry in config_entries(path, summary):
            cache = entry_cache(entry, source, path, notes)
            if cache is not None:
                caches.setdefault((cache.cache_dir, cache.shard_copies, cache.suffix, cache.shard_downloads),
                                  cache)
    return list(caches.values()), notes


def config_entries(path: str, summary: str | None) -> list[dict]:
    """The config's entries as the file is now; its entry as written when the file cannot be read."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        entries = None
    if isinstance(entries, list):
        return [entry for entry in entries if isinstance(entry, dict)]
    written = (json.loads(summary) if summary else {}).get("entry")
    return [written] if isinstance(written, dict) else []


def entry_cache(entry: dict, source: WebshartSource, config: str, notes: list[str]) -> WebshartCache | None:
    """Where SimpleTuner keeps this entry's caches, read as SimpleTuner reads the entry; None when
    the entry is not a webshart dataset of this source or its folders depend on where SimpleTuner
    runs."""
    block = entry.get("webshart") if isinstance(entry.get("webshart"), dict) else {}
    if entry.get("type") != "webshart" or not names_source(entry, block, source):
        return None
    cache_dir = block.get("cache_dir", entry.get("cache_dir"))
    absolute = isinstance(cache_dir, str) and os.path.isabs(cache_dir)
    default = os.path.join(cache_dir, METADATA_CACHE) if absolute else None
    copies = block.get("metadata_cache_dir") or default
    if not (absolute and isinstance(copies, str) and os.path.isabs(copies)):
        notes.append(f"{config}: entry {entry.get('id')!r} names no absolute webshart.cache_dir (and "
                     "metadata_cache_dir), so its caches depend on where SimpleTuner runs: remove their "
                     f"metadata_cache folder{', shard_cache folder' if source.hub else ''} and "
                     "aspect_ratio_bucket_* files yourself after an index changed")
        return None
    downloads = shard_downloads(block, entry, cache_dir) if source.hub else None
    if downloads is not None and not downloads.is_absolute():
        notes.append(f"{config}: entry {entry.get('id')!r} names a relative webshart.shard_cache_dir: remove "
                     "its copies of changed shards yourself after an index changed")
        downloads = None
    return WebshartCache(config, Path(cache_dir), Path(copies) / source.cache_key(),
                         str(entry.get("cache_file_suffix", entry.get("id"))), source, downloads)


def names_source(entry: dict, block: dict, source: WebshartSource) -> bool:
    """Whether the entry reads this source (as SimpleTuner reads `source` and `subfolder`: the
    entry's own key first, then the webshart block's)."""
    named = entry.get("source", block.get("source"))
    subfolder = entry.get("subfolder", block.get("subfolder"))
    if not isinstance(named, str):
        return False
    if not source.hub:
        return os.path.normpath(named) == source.source
    return named == source.source and (subfolder or None) == source.subfolder


def shard_downloads(block: dict, entry: dict, cache_dir: str) -> Path | None:
    """SimpleTuner's shard cache folder for a Hub source (None when `shard_cache_gb` is 0)."""
    size = block.get("shard_cache_gb", entry.get("shard_cache_gb"))
    try:
        if size is not None and float(size) == 0:
            return None
    except (TypeError, ValueError):
        pass  # SimpleTuner refuses the entry: its folder is still the one it names
    return Path(block.get("shard_cache_dir") or os.path.join(cache_dir, SHARD_CACHE))


def clear_caches(caches: list[WebshartCache], shards: list[str]) -> dict[str, int]:
    """Remove webshart's copies of these shards' indexes (and of the Hub shards themselves) and
    SimpleTuner's bucket cache from every cache; returns how many files of each went. A file that
    cannot be removed stops the export: it would keep serving the old index."""
    removed = {"index_copies": 0, "shard_downloads": 0, "bucket_files": 0}
    for cache in caches:
        removed["index_copies"] += sum(remove(cache.shard_copy(shard)) for shard in shards)
        downloads = [cache.shard_download(shard) for shard in shards]
        removed["shard_downloads"] += sum(remove(path) for path in downloads if path is not None)
        if shards:
            removed["bucket_files"] += sum(remove(path) for path in cache.bucket_files())
    return removed


def remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise IndexerError(f"cannot remove {path} ({exc.strerror}): SimpleTuner would go on reading the old "
                           "index through it; fix the permissions (or remove it yourself) and rerun the "
                           "export") from exc
    return True
