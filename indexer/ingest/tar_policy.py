"""Which tar members are refused, and in what words: one policy for members read in place (the
one-pass reader, tar_members.py) and members `indexer extract` writes (extract/members.py), so
both refuse the same member for the same reason.

Refused everywhere (stricter than PEP 706's `data` filter, which strips a leading `/`, allows `..`
that stays inside and links that point inside; an index of files wants none of that): absolute
names, any `..` component, a NUL in the name, names that are not valid UTF-8, symbolic and hard
links, devices, FIFOs, sparse files and unknown member types. Refused only where a file is
written (`extract`): backslashes and drive letters, which GNU tar on POSIX takes as ordinary name
characters and a reader by offset never turns into a path.
"""

from __future__ import annotations

import re

ONLY_FILES = "only regular files and folders are read"
NOT_UTF8 = "name is not valid UTF-8 (shown with \\x escapes)"
NUL_IN_NAME = "name contains a NUL byte"
ABSOLUTE = "absolute path; members must be relative to the archive"
PARENT = "name contains '..' and could escape the target folder"
SPARSE = "sparse file: its bytes in the tar are not the file's contents"
NO_NAME = "a file member without a name"
BACKSLASH = "name contains a backslash (a Windows path separator)"
DRIVE = "name starts with a drive letter"
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_KINDS = {"device": "device file", "fifo": "FIFO (named pipe)"}


def kind_refusal(kind: str, type_label: str, link_target: str | None = None) -> str | None:
    """Why a member of this kind is refused (None for files and folders). type_label: the raw
    type flag, shown for unknown types; link_target: where a link points, shown for links."""
    if kind in ("file", "dir"):
        return None
    if kind in ("symlink", "hardlink"):
        return f"{'symbolic' if kind == 'symlink' else 'hard'} link (to {link_target!r}); {ONLY_FILES}"
    if kind in _KINDS:
        return f"{_KINDS[kind]}; {ONLY_FILES}"
    return f"unsupported member type {type_label!r}; {ONLY_FILES}"


def placed_name(text: str) -> tuple[str, str | None]:
    """A decoded member name as `tar xf` would place it (`./`, empty and `.` components and
    trailing slashes dropped; the archive's own root named `.`), and why it is refused (None
    when it is not)."""
    if "\x00" in text:
        return text.replace("\x00", "\\x00"), NUL_IN_NAME
    if text.startswith("/"):
        return text, ABSOLUTE
    if text.startswith(".") or "/." in text or "//" in text or text.endswith("/"):
        parts = text.split("/")
        if ".." in parts:
            return text, PARENT
        text = "/".join(part for part in parts if part not in ("", ".")) or "."
    elif not text:
        text = "."
    return text, None


def raw_name(raw: bytes) -> tuple[str, str | None]:
    """placed_name for the bytes of a header (undecodable bytes shown with \\x escapes)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), NOT_UTF8
    return placed_name(text)


def written_name_refusal(text: str) -> str | None:
    """What `extract` refuses on top of placed_name, since it makes a path of the name."""
    if "\\" in text:
        return BACKSLASH
    if _DRIVE_LETTER.match(text):
        return DRIVE
    return None
