"""List a dataset root: its sample files, folder by folder in chunks, and what is not one.

Apart from the diff (scan.py), since `watch` lists a folder that appeared with it too, and every
stage uses the names here for what a sample file is.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat as stat_module
from collections.abc import Iterator

JSON_EXTENSION = "json"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")  # preference order when a key has several images
SAMPLE_EXTENSIONS = frozenset((JSON_EXTENSION, *IMAGE_EXTENSIONS))
STAGING_PREFIX = ".indexer-"  # folders that `extract` stages shards in; never part of a dataset
CHUNK = 4096


def split_sample_path(path: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a sample file path, or None for files that are not samples.

    Hidden files (a name starting with '.') are never samples: tools keep their own files there
    (ai-toolkit's `.aitk_size.json`, macOS's `._x.png` resource forks).
    """
    dot = path.rfind(".")
    name_start = path.rfind("/") + 1
    if dot <= name_start or path[name_start] == ".":  # no extension, or a hidden file
        return None
    extension = path[dot + 1 :].lower()
    if extension not in SAMPLE_EXTENSIONS:
        return None
    return path[:dot], extension


# Names that may be tar shards (case variants spelled out: endswith with a tuple is one C call).
ARCHIVE_ENDINGS = (".tar", ".TAR", ".Tar", ".tgz", ".TGZ", ".gz", ".GZ", ".bz2", ".xz", ".zst")


def walk(
    root: str, unreadable: list[tuple[str, str]], bad_names: list[str] | None = None,
    not_files: list[str] | None = None, archives: list[str] | None = None,
) -> Iterator[tuple[int, str, list[str]]]:
    """Yield (dir fd, relative folder prefix, chunk of sample file names) for every real folder.

    Symlinked folders are never entered (so a symlink loop cannot hang the walk); symlinked files
    are followed. Folders that cannot be listed are reported in `unreadable` and skipped; names that
    are not valid UTF-8 (SQLite text cannot hold them) are reported in `bad_names` and skipped.
    Entries named like sample files that are not regular files (a FIFO would block the reader that
    opens it forever; a folder named `x.json`, a socket, a device, a dangling symlink) are reported
    in `not_files` and never yielded. Regular files that look like tar archives are listed in
    `archives` (relative paths), for the shards read in place.
    """
    bad_names = [] if bad_names is None else bad_names
    not_files = [] if not_files is None else not_files
    stack = [""]
    while stack:
        prefix = stack.pop()
        try:
            fd = os.open(os.path.join(root, prefix) if prefix else root,
                         os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            unreadable.append((prefix, f"cannot open folder: {exc.strerror}"))
            continue
        try:
            names: list[str] = []
            try:
                with os.scandir(fd) as entries:
                    while chunk := list(itertools.islice(entries, CHUNK)):
                        # list comprehensions, not a loop: ~3x less Python per entry
                        folders = [name for name in _real_dirs(chunk)
                                   if not name.startswith(STAGING_PREFIX)]
                        candidates = [
                            entry for entry in chunk
                            if (dot := entry.name.rfind(".")) > 0 and entry.name[0] != "."
                            and entry.name[dot + 1 :].lower() in SAMPLE_EXTENSIONS
                        ]
                        files = [entry.name for entry in candidates if _is_file(entry)]
                        if archives is not None:
                            found = [entry.name for entry in chunk
                                     if entry.name.endswith(ARCHIVE_ENDINGS) and entry.name[0] != "."
                                     and _is_file(entry)]
                            archives += [prefix + name for name in _utf8(found, prefix, bad_names)]
                        if len(files) < len(candidates):
                            not_files += [f"{prefix}{entry.name}: {what_it_is(entry)}"
                                          for entry in candidates if not _is_file(entry)]
                        stack += [prefix + name + "/" for name in _utf8(folders, prefix, bad_names)]
                        names += _utf8(files, prefix, bad_names)
                        if len(names) >= CHUNK:
                            yield fd, prefix, names
                            names = []
            except OSError as exc:
                unreadable.append((prefix, f"cannot list folder: {exc.strerror}"))
            if names:
                yield fd, prefix, names
        finally:
            os.close(fd)


def is_utf8(name: str) -> bool:
    """Whether a name os decoded is valid UTF-8 (os decodes other bytes as surrogate escapes,
    which the database, a text column, cannot hold)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8(names: list[str], prefix: str, bad_names: list[str]) -> list[str]:
    """The names that are valid UTF-8; report the rest."""
    if all(name.isascii() for name in names):
        return names
    good = []
    for name in names:
        if is_utf8(name):
            good.append(name)
        else:
            bad_names.append(os.fsencode(prefix + name).decode("utf-8", "backslashreplace"))
    return good


def _is_file(entry: os.DirEntry) -> bool:
    """A regular file, or a symlink to one (d_type answers without a syscall for plain files)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def what_it_is(entry: os.DirEntry) -> str:
    """Why a sample-named entry is not read, for the user who has to fix it."""
    try:
        mode = entry.stat().st_mode
    except OSError:
        return "a symlink to nothing; skipped (fix or remove the link)"
    kinds = ((stat_module.S_ISDIR, "a folder"), (stat_module.S_ISFIFO, "a named pipe (FIFO)"),
             (stat_module.S_ISSOCK, "a socket"), (stat_module.S_ISCHR, "a character device"),
             (stat_module.S_ISBLK, "a block device"))
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{kind}, not a regular file; skipped (a sample file must be a regular file)"


def _real_dirs(entries: list[os.DirEntry]) -> list[str]:
    """Names of the folders that are not symlinks (from d_type: no syscall, as a rule)."""
    try:
        return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:  # d_type unknown and the entry vanished meanwhile: check one by one
        found = []
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    found.append(entry.name)
        return found
