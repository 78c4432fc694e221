"""What `materialize` copies: the source dataset's selected samples, each file's name under DIR,
its size as indexed and where its bytes are; and which of those files DIR already holds.

The source rows are read through the read-only connection (a user's --where runs there, as for
the exports) before anything is created, so a bad --where, an unknown dataset or a selection of
nothing is refused with DIR and the database untouched.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path

from indexer.db.readonly import connect_readonly
from indexer.errors import IndexerError
from indexer.export.selection import WHERE_EXAMPLE, clean_where
from indexer.extract.members import Refused, file_parts
from indexer.ingest.change import ShardRecord, current_signature
from indexer.ingest.records import recorded_files
from indexer.ingest.remote import is_remote
from indexer.ingest.shards import stored_shards

MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
SOURCE_COLUMNS = ("key, json_ext, image_ext, json_size, image_size, json_sig, image_sig, image_mtime_ns,"
                  " shard, json_offset, image_offset, md5_file_hash")


@dataclass(frozen=True)
class WantedFile:
    """One file of a selected sample."""

    name: str  # root-relative, '/'-separated: the same path under the source root and under DIR
    size: int | None  # as indexed (None: the index could not read the sample)
    offset: int | None  # where its data starts inside its shard (None: a loose file or object)
    sig: int | None  # the signature the index stored for a loose file or object


@dataclass(frozen=True)
class Wanted:
    """One selected sample: its files (JSON first), and what checks them."""

    key: str
    files: tuple[WantedFile, ...]
    shard: str | None  # the tar shard holding its files (None: loose files or objects)
    image: str | None  # the image's name (its md5 is checked)
    md5: str | None  # md5 of the image's bytes, from its JSON (lower case)
    mtime_ns: int | None  # the image's time as indexed: both files get it


@dataclass
class Source:
    """The dataset samples are copied from, and what was selected of it."""

    dataset: str
    root: str  # datasets.root as stored: a folder, or a remote root's URL (without credentials)
    wanted: list[Wanted]
    shards: dict[str, ShardRecord] = field(default_factory=dict)  # tar_shards records, by path

    @property
    def remote(self) -> bool:
        return is_remote(self.root)


def select_source(db_path: str | os.PathLike[str], dataset_id: str | None, where: str | None,
                  target: Path, target_id: str | None) -> Source:
    """The source dataset (named, or the only one that is not DIR's) and its selected samples."""
    if not os.path.exists(db_path):
        raise IndexerError(f"database {db_path} does not exist: index the source first with"
                           f" `indexer index ROOT --db {db_path}`")
    where = clean_where(where)
    conn, _guard = connect_readonly(db_path, upgrade=True)
    try:
        datasets = dict(conn.execute("SELECT id, root FROM datasets ORDER BY id").fetchall())
        dataset = _source_id(datasets, dataset_id, target)
        _check_roots(datasets[dataset], target)
        _check_target_id(datasets, target, target_id)
        conn.execute("BEGIN")
        wanted = [_wanted(row) for row in _selected_rows(conn, dataset, where)]
        shards = stored_shards(conn, dataset)
        conn.execute("COMMIT")
    finally:
        conn.close()
    if not wanted:
        what = f"--where {where!r} selects no sample of" if where else "there is no sample in"
        raise IndexerError(f"{what} dataset {dataset!r}; nothing was written")
    return Source(dataset, datasets[dataset], wanted, shards)


def _source_id(datasets: dict[str, str], dataset_id: str | None, target: Path) -> str:
    if dataset_id is not None:
        if dataset_id not in datasets:
            raise IndexerError(f"no dataset {dataset_id!r} in the database (known: "
                               f"{', '.join(datasets) or 'none yet'})")
        return dataset_id
    others = [name for name, root in datasets.items() if root != str(target)]
    if len(others) == 1:
        return others[0]
    if not others:
        raise IndexerError("the database holds no dataset to copy from: index the source first with"
                           " `indexer index ROOT`")
    raise IndexerError(f"the database holds several datasets ({', '.join(others)}): name the source with"
                       " --id")


def _check_roots(source_root: str, target: Path) -> None:
    """DIR must be neither the source's folder nor inside it, nor hold it: an index of either would
    then take the other's files for its own."""
    if is_remote(source_root):
        return
    source = Path(source_root)
    if target == source or source in target.parents or target in source.parents:
        raise IndexerError(f"{target} overlaps the source dataset's root {source}: materialize into a folder"
                           " outside it (and not holding it)")


def _check_target_id(datasets: dict[str, str], target: Path, target_id: str | None) -> None:
    """DIR's dataset takes DIR's folder name unless told otherwise: say which option renames it."""
    for name, root in datasets.items():
        if root == str(target):
            if target_id not in (None, name):
                raise IndexerError(f"{target} is already dataset {name!r}; pass --as {name} (or omit --as)")
            return
    name = target_id or target.name or "root"
    if name in datasets:
        raise IndexerError(f"dataset id {name!r} already names {datasets[name]}; name DIR's dataset with"
                           " --as NAME")


def _selected_rows(conn: sqlite3.Connection, dataset: str, where: str | None) -> list[tuple]:
    sql = f"SELECT {SOURCE_COLUMNS} FROM samples WHERE dataset = ?"
    if where:
        sql += f" AND ({where})"
    try:
        return conn.execute(sql + " ORDER BY key", (dataset,)).fetchall()
    except sqlite3.Error as exc:
        if where is None:
            raise
        raise IndexerError(f"--where {where!r} cannot be evaluated over samples ({exc}); use samples columns"
                           f" such as width, height, status, source or key, e.g. {WHERE_EXAMPLE}") from None


def _wanted(row: tuple) -> Wanted:
    (key, json_ext, image_ext, json_size, image_size, json_sig, image_sig, mtime_ns, shard, json_offset,
     image_offset, md5) = row
    files = []
    if json_ext is not None:
        files.append(WantedFile(f"{key}.{json_ext}", json_size, json_offset, json_sig))
    if image_ext is not None:
        files.append(WantedFile(f"{key}.{image_ext}", image_size, image_offset, image_sig))
    image = f"{key}.{image_ext}" if image_ext is not None else None
    md5 = md5.lower() if isinstance(md5, str) and MD5.match(md5) and image is not None else None
    return Wanted(key, tuple(files), shard, image, md5, mtime_ns)


def allowed(wanted: Wanted, reserved: frozenset[str]) -> tuple[Wanted, list[dict]]:
    """The sample with only the files extract's rules let be written under DIR (a name that the
    index took in but that is no path to write: backslashes, drive letters, staging names, the
    database's own files, a name not written as `tar xf` would place it), and the refusals."""
    kept, refusals = [], []
    for wanted_file in wanted.files:
        try:
            parts = file_parts(wanted_file.name, reserved)
            if "/".join(parts) != wanted_file.name:
                raise Refused(f"would land at {'/'.join(parts)!r}, not where the index names it")
        except Refused as exc:
            refusals.append({"key": wanted.key, "file": wanted_file.name, "reason": str(exc)})
            continue
        kept.append(wanted_file)
    return dataclasses.replace(wanted, files=tuple(kept)), refusals


def target_records(conn: sqlite3.Connection, dataset: str) -> dict[str, int | None]:
    """The files DIR's dataset has recorded, {path: signature}."""
    found: dict[str, int | None] = {}
    for row in conn.execute("SELECT key, json_ext, json_sig, image_ext, image_sig, other_files FROM samples"
                            " WHERE dataset = ? AND shard IS NULL", (dataset,)):
        found.update(recorded_files(*row))
    return found


def missing_files(root: Path, wanted: Wanted, recorded: dict[str, int | None]) -> tuple[WantedFile, ...]:
    """The files of a sample DIR does not hold yet: absent, not a regular file, another size, or
    not recorded as they are now (a file a killed run placed but never recorded is fetched again)."""
    missing = []
    for wanted_file in wanted.files:
        try:
            st = os.lstat(root / wanted_file.name)
        except OSError:
            missing.append(wanted_file)
            continue
        if (not stat.S_ISREG(st.st_mode) or st.st_size != wanted_file.size
                or recorded.get(wanted_file.name) != current_signature(st)):
            missing.append(wanted_file)
    return tuple(missing)
