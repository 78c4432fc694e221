"""`export aitk`: ai-toolkit's image size cache, `<folder_path>/.aitk_size.json`, from the index.

ai-toolkit (toolkit/data_loader.py) keeps the cache only when its `__version__` is exactly
"0.1.2", looks each image up under `path.replace(folder_path, "")` for the paths
`os.walk(folder_path)` yields (hidden folders and files, and `_controls` folders, left out), and
uses an entry `[width, height, "<st_size>:<int(st_mtime)>"]` only while its third item equals
the file's signature now; on a miss it measures `exif_transpose(Image.open(path)).size` and
rewrites the whole file at the end of the load.

So keys are computed from the folder_path string exactly as ai-toolkit will get it, the
signature comes from the stat the index recorded (a file changed since is a miss, never a wrong
size), and an image goes in only when its size is the one ai-toolkit would measure: JPEGs whose
orientation swaps the axes, whose stored size differs from the index's or that cannot be parsed
are left out for ai-toolkit to measure. Existing entries for other files are kept only while
their signature still matches the file.
"""

from __future__ import annotations

import collections
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from indexer.atomic import atomic_file
from indexer.errors import IndexerError
from indexer.export.exif import size_doubt
from indexer.export.record import is_up_to_date, previous_export, record_export
from indexer.export.select import (
    ReadSnapshot,
    check_selection,
    excluded_summary,
    image_file_stat_sql,
    open_snapshot,
    options_json,
    select_rows,
)
from indexer.export.selection import Selection, size_selection
from indexer.progress import bar

CACHE_NAME = ".aitk_size.json"
CACHE_VERSION = "0.1.2"
VERSION_KEY = "__version__"
CONTROLS_FOLDER = "_controls"


def st_mtime_seconds(mtime_ns: int) -> int:
    """`int(os.stat(path).st_mtime)` from st_mtime_ns, rounded exactly as CPython rounds it.

    CPython builds st_mtime as the double `sec + nsec * 1e-9`, which rounds up to the next
    second for nsec close to 1e9; `int(mtime_ns / 1e9)` disagrees with it in some of those cases.
    """
    seconds, nanoseconds = divmod(mtime_ns, 1_000_000_000)
    return int(float(seconds) + nanoseconds * 1e-9)


def signature(size: int, mtime_ns: int) -> str:
    """ai-toolkit's get_quick_signature_string for a file of that size and mtime."""
    return f"{size}:{st_mtime_seconds(mtime_ns)}"


@dataclass
class CacheBuild:
    """The entries made from the index for one folder, and why the other images were left out."""

    folder: str  # ai-toolkit's folder_path, character for character
    prefix: str  # the folder relative to the dataset root: "" or "sub/dir/"
    root: str  # the dataset root, resolved
    entries: dict[str, list] = field(default_factory=dict)
    collided: set[str] = field(default_factory=set)
    left_out: collections.Counter = field(default_factory=collections.Counter)

    def add(self, image: str, width: int, height: int, size: int | None, mtime_ns: int | None,
            racy: int | None) -> None:
        reason = self.reason(image, width, height, size, racy)
        if reason is not None:
            self.left_out[reason] += 1
            return
        assert size is not None and mtime_ns is not None
        key = os.path.join(self.folder, image[len(self.prefix):]).replace(self.folder, "")
        if key in self.collided or key in self.entries:  # ai-toolkit could not tell the files apart
            self.left_out["same_key"] += 1 + (key in self.entries)
            self.entries.pop(key, None)
            self.collided.add(key)
            return
        self.entries[key] = [width, height, signature(size, mtime_ns)]

    def skipped_by_walk(self, inner: str) -> bool:
        """ai-toolkit's walk of the folder never yields this path: a hidden folder or file on the
        way, or a file directly in a `_controls` folder."""
        full = os.path.join(self.folder, inner)
        return any(part.startswith(".") for part in inner.split(os.sep)) \
            or os.path.basename(os.path.dirname(full)) == CONTROLS_FOLDER

    def reason(self, image: str, width: int, height: int, size: int | None, racy: int | None) -> str | None:
        if not image.startswith(self.prefix):
            return "outside_folder"
        if self.skipped_by_walk(image[len(self.prefix):]):
            return "not_loaded"
        if size is None:
            return "no_file_record"
        if racy:
            return "recently_changed"  # its recorded stat may predate a same-second rewrite
        return size_doubt(os.path.join(self.root, image), image, width, height)


def export_aitk(
    db_path: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    where: str | None = None,
    folder: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> dict:
    """Write (or merge into) FOLDER/.aitk_size.json the sizes of the selected images under FOLDER.

    FOLDER is ai-toolkit's folder_path: the dataset root (default) or a folder under it, given as
    ai-toolkit will be given it, since its keys are that string cut off each image path.
    """
    started = time.monotonic()
    selection = size_selection(where)
    with open_snapshot(db_path, dataset_id) as snapshot:
        root = os.path.realpath(snapshot.root)
        if not os.path.isdir(root):
            raise IndexerError(f"dataset root {snapshot.root} is missing: mount or restore it, then rerun")
        folder_text, prefix = folder_path(folder, snapshot.root, root)
        path = cache_path(folder_text)
        options = options_json({**selection.options(), "folder": folder_text})
        check_selection(snapshot, selection)
        previous = previous_export(snapshot.conn, snapshot.dataset, "aitk", path)
        if is_up_to_date(previous, options, snapshot.data_version, path):
            assert previous is not None
            return {**previous["summary"], "up_to_date": True,
                    "seconds": round(time.monotonic() - started, 3)}
        build = collect(snapshot, selection, CacheBuild(folder_text, prefix, root), progress)
        excluded = excluded_summary(snapshot.excluded + build.left_out)
    rows = len(build.entries)
    existing, kept, dropped = merge_existing(path, build)
    with atomic_file(path) as temp:
        document = {VERSION_KEY: CACHE_VERSION, **dict(sorted(build.entries.items()))}
        temp.write_text(json.dumps(document), encoding="ascii")  # ASCII: read right under any locale
    summary = {
        "kind": "aitk", "dataset": snapshot.dataset, "path": str(path), "folder": folder_text,
        "rows": rows, "existing": existing, "kept": kept, "dropped": dropped, "up_to_date": False,
        "excluded": excluded, "data_version": snapshot.data_version,
        "seconds": round(time.monotonic() - started, 3),
    }
    record_export(db_path, snapshot.dataset, "aitk", path, options=options,
                  data_version=snapshot.data_version, rows=rows, summary=summary, file_path=path)
    return summary


def folder_path(folder: str | os.PathLike[str] | None, root_text: Path, root: str) -> tuple[str, str]:
    """ai-toolkit's folder_path as text, and that folder relative to the resolved root ("" or "a/")."""
    if folder is None:
        return str(root_text), ""
    text = os.fspath(folder)
    if not os.path.isabs(text):
        text = os.path.abspath(text) + ("/" if text.endswith("/") else "")
    real = os.path.realpath(text)
    if not os.path.isdir(real):
        raise IndexerError(f"--folder {text} is not a folder: give ai-toolkit's folder_path, the dataset "
                           f"root {root_text} or a folder under it")
    if real != root and not real.startswith(root + os.sep):
        raise IndexerError(
            f"--folder {text} is outside the dataset root {root_text}: the cache is written into the "
            "folder and nothing outside the root is; give the root or a folder under it"
        )
    relative = os.path.relpath(real, root)
    return text, "" if relative == "." else relative.replace(os.sep, "/") + "/"


def cache_path(folder_text: str) -> Path:
    path = Path(os.path.join(folder_text, CACHE_NAME))
    if path.is_dir():
        raise IndexerError(f"{path} is a folder: ai-toolkit keeps its size cache in a file of that name; "
                           "move the folder away")
    return path


def collect(snapshot: ReadSnapshot, selection: Selection, build: CacheBuild, progress: bool) -> CacheBuild:
    with bar(progress, desc="aitk", unit=" images") as progress_bar:
        for batch in select_rows(snapshot, selection, image_file_stat_sql()):
            for _key, image, width, height, _caption, size, mtime_ns, racy in batch:
                build.add(image, width, height, size, mtime_ns, racy)
            progress_bar.update(len(batch))
    return build


def merge_existing(path: Path, build: CacheBuild) -> tuple[str, int, int]:
    """Add the existing file's entries for images not built here while their signature still
    matches the file; return what the file was, how many entries were kept and dropped."""
    existing, why = read_cache(path)
    kept = dropped = 0
    for key, value in existing.items():
        if key == VERSION_KEY or key in build.entries:
            continue
        if key not in build.collided and still_valid(key, value, build):
            build.entries[key] = value
            kept += 1
        else:
            dropped += 1
    return why, kept, dropped


def read_cache(path: Path) -> tuple[dict, str]:
    """The entries of an existing cache ai-toolkit would use, and a word on what the file was."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {}, "none"
    except OSError as exc:
        raise IndexerError(f"cannot look at {path}: {exc.strerror or exc}; fix permissions, rerun") from exc
    if not stat.S_ISREG(st.st_mode):
        return {}, "replaced (not a regular file)"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}, "replaced (unreadable, as ai-toolkit would treat it)"
    if not isinstance(data, dict) or data.get(VERSION_KEY) != CACHE_VERSION:
        return {}, f"replaced (not version {CACHE_VERSION}, which ai-toolkit discards)"
    return data, "merged"


def still_valid(key: str, value: object, build: CacheBuild) -> bool:
    """An entry ai-toolkit would still use for a file inside the root (nothing outside is looked at)."""
    if not isinstance(value, list) or len(value) < 3 or not isinstance(value[2], str):
        return False
    if not all(isinstance(number, int) and not isinstance(number, bool) and number > 0
               for number in value[:2]):
        return False
    full = build.folder + key  # the path ai-toolkit cut the key from
    inner = os.path.relpath(full, build.folder)
    if inner.startswith("..") or os.path.join(build.folder, inner) != full \
            or full.replace(build.folder, "") != key or build.skipped_by_walk(inner):
        return False  # not a path ai-toolkit's walk yields, so never looked up
    real = os.path.realpath(full)
    if not real.startswith(build.root + os.sep):
        return False
    try:
        st = os.stat(full)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and f"{st.st_size}:{int(st.st_mtime)}" == value[2]
