"""Where webshart 0.6.0 finds a dataset's shards, told as SimpleTuner's `type: webshart` entry tells it.

SimpleTuner 4.10.1 hands the entry's `source`, `subfolder` and `metadata` to
`webshart.discover_dataset` as they are. webshart reads shards from two places only:
- a local folder (`source` is a folder that exists): every `*.tar` below it, each one's index at
  `<metadata>/<its path under source>.json` (beside it without `metadata`);
- a Hugging Face dataset repo (any other `source`, taken for a repo id ORG/NAME): the repo info's
  files (`GET https://huggingface.co/api/datasets/ORG/NAME`, `siblings`) ending in `.tar`, under
  `subfolder/` when one is given, read by range from `.../datasets/ORG/NAME/resolve/main/PATH`; each
  one's index at `<metadata>/<the tar's folder in the repo>/<its name>.json` for a local metadata
  folder. The Hub's address is written into webshart (`HF_ENDPOINT` only moves its Xet reads, and
  then off the repo's files), so is the revision (`main`), and a Hub shard is known by its file name
  alone: discovery keeps one shard per name, and both caches are keyed by it.
So an S3 bucket or https URLs cannot be a webshart source at all (they would be taken for a repo
id), and a Hub dataset must be given as its repo id and folder, never as an hf:// URL.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import PurePosixPath

from indexer.errors import IndexerError

HUB = "hf://"


@dataclass(frozen=True)
class WebshartSource:
    """A dataset's root as webshart is told it: a local folder, or a Hub dataset repo and folder."""

    source: str  # the absolute folder, or the Hub repo id ORG/NAME
    subfolder: str | None = None  # the folder in the repo (Hub only; None: the whole repo)
    hub: bool = False

    def index_folder(self, shard: str) -> str:
        """The index's path under the metadata folder, without `.json`: the shard's path under the
        root for a local folder, its path in the repo for the Hub."""
        path = shard[: -len(".tar")]
        return f"{self.subfolder}/{path}" if self.subfolder else path

    def cache_key(self) -> str:
        """webshart's folder for the dataset in its metadata cache (its get_cache_key)."""
        key = self.source.replace("/", "_")
        return f"{key}__{self.subfolder.replace('/', '_')}" if self.subfolder else key

    def shard_name(self, shard: str) -> str:
        """webshart's name for a shard (what its caches are keyed by): the path under the folder
        without `.tar`; on the Hub the file name alone."""
        name = PurePosixPath(shard).name if self.hub else shard
        return name[: -len(".tar")]

    def entry_keys(self) -> dict[str, str]:
        """The keys of SimpleTuner's entry that name the source."""
        return {"source": self.source, **({"subfolder": self.subfolder} if self.subfolder else {})}


def webshart_source(root: str) -> WebshartSource:
    """The source webshart reads for a dataset root as stored (a folder, or a remote root's URL);
    IndexerError (what, why, what to do) for a root webshart cannot read."""
    if root.startswith("/"):
        return WebshartSource(root)
    if root.startswith(HUB):
        return hub_source(root)
    scheme = root.split("://", 1)[0]
    raise IndexerError(
        f"webshart cannot read shards at {root}: webshart 0.6.0 reads a local folder or a Hugging Face "
        f"dataset repo, nothing else (it would take {scheme}://... for a Hub repo name), so "
        "SimpleTuner cannot train from it in place. Copy the shards to a local folder (or upload them "
        "to a Hub dataset repo), index that and export again; or fetch the samples you want with "
        "`indexer materialize DIR` and use `export config` without --backend webshart. Nothing was "
        "written")


def hub_source(root: str) -> WebshartSource:
    """hf://datasets/ORG/NAME[@main][/folder] -> repo id ORG/NAME and folder."""
    parts = [part for part in root[len(HUB):].split("/") if part]
    if len(parts) < 3 or parts[0] != "datasets" or {".", ".."} & set(parts):
        raise IndexerError(
            f"webshart cannot read {root}: webshart 0.6.0 reads Hugging Face dataset repos only, named "
            "ORG/NAME (hf://datasets/ORG/NAME[/folder]); index the shards from such a repo. Nothing was "
            "written")
    name, _, revision = parts[2].partition("@")
    if revision and urllib.parse.unquote(revision) != "main":
        raise IndexerError(
            f"webshart cannot read {root}: webshart 0.6.0 reads a Hub repo's `main` revision only (its "
            f"URLs are .../resolve/main/...), and the indexes hold offsets into revision "
            f"{urllib.parse.unquote(revision)!r}. Index hf://datasets/{parts[1]}/{name}"
            f"{'/' + '/'.join(parts[3:]) if parts[3:] else ''} (main) and export again. Nothing was "
            "written")
    return WebshartSource(f"{parts[1]}/{name}", "/".join(parts[3:]) or None, hub=True)


def same_named_shards(source: WebshartSource, shards: list[str]) -> list[tuple[str, str]]:
    """Pairs of Hub shards webshart would take for one (the same file name in two folders)."""
    if not source.hub:
        return []
    first: dict[str, str] = {}
    clashes = []
    for shard in sorted(shards):
        name = source.shard_name(shard)
        if name in first:
            clashes.append((first[name], shard))
        else:
            first[name] = shard
    return clashes


def readable_source(root: str) -> WebshartSource | None:
    """The dataset's webshart source, or None for a root webshart cannot read (an export of its
    indexes still has a use: for a copy of the shards)."""
    try:
        return webshart_source(root)
    except IndexerError:
        return None


def stored_root(conn: sqlite3.Connection, dataset: str) -> str:
    """The dataset's root as stored: a resolved folder, or a remote root's URL (which a Path would
    spoil: `hf://x` becomes `hf:/x`)."""
    return conn.execute("SELECT root FROM datasets WHERE id = ?", (dataset,)).fetchone()[0]
