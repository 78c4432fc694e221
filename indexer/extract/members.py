"""Which tar members `extract` writes, and where: the checks of PEP 706's `data` filter, by name.

The filter itself is not called: it resolves every member's path on disk twice (a third of
extract's time), which the worker's O_NOFOLLOW folder descriptors make unnecessary.
"""

from __future__ import annotations

import tarfile

from indexer.ingest import tar_policy
from indexer.ingest.change import NS_PER_SECOND, clamp_int64
from indexer.ingest.tar_members import Member
from indexer.ingest.walk import STAGING_PREFIX, is_utf8

# tarfile's member types as the policy's kinds
_TARFILE_KINDS = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "device",
                  tarfile.BLKTYPE: "device", tarfile.FIFOTYPE: "fifo"}


class Refused(Exception):
    """A member that is not written; the message is the reason shown to the user."""


def member_parts(member: tarfile.TarInfo, root: str, reserved: frozenset[str] = frozenset()) -> list[str]:
    """The member's path components under root; raises Refused for anything unsafe.

    An empty list means the member names the root itself (a `./` folder entry): nothing to do.
    """
    kind = "file" if member.isreg() else "dir" if member.isdir() else _TARFILE_KINDS.get(member.type, "other")
    refusal = tar_policy.kind_refusal(kind, member.type.decode("latin-1"), member.linkname)
    if refusal is not None:
        raise Refused(refusal)
    parts = _name_parts(member.name)
    if not parts and member.isreg():
        raise Refused(tar_policy.NO_NAME)
    _refuse_reserved(parts, reserved)
    return parts


def extracted_parts(member: Member, root: str, reserved: frozenset[str] = frozenset()) -> list[str]:
    """member_parts for a member of the one-pass tar reader (ingest/tar_members.py), which has
    already refused links, devices, FIFOs, absolute names and `..`; the extract's own checks on
    top (backslashes, drive letters, staging names, the database's files)."""
    if member.refusal is not None:
        raise Refused(member.refusal)
    if member.kind not in ("file", "dir"):
        raise Refused(tar_policy.kind_refusal(member.kind, member.kind) or tar_policy.ONLY_FILES)
    parts = [] if member.name == "." else _name_parts(member.name)
    _refuse_reserved(parts, reserved)
    return parts


def file_parts(name: str, reserved: frozenset[str] = frozenset()) -> list[str]:
    """The path components a file named `name` (root-relative, '/'-separated) is written at, by the
    rules members are written by; raises Refused. For writers that take names from elsewhere than a
    tar header (`materialize` takes them from the index)."""
    parts = _name_parts(name)
    if not parts:
        raise Refused(tar_policy.NO_NAME)
    _refuse_reserved(parts, reserved)
    return parts


def _refuse_reserved(parts: list[str], reserved: frozenset[str]) -> None:
    """The database's files and its scratch folder (and anything under it) are never written,
    whatever the case of the member's name (a case-insensitive folder takes `DB.SQLITE` for it)."""
    if not reserved or not parts:  # the database lives outside the root: nothing to guard
        return
    path = "/".join(parts).casefold()  # reserved names are casefolded (reserved_paths)
    if path in reserved or any(path.startswith(name + "/") for name in reserved):
        raise Refused("would overwrite the index database, which lives in the target folder")


def printable(name: str) -> str:
    """A member name fit for JSON and the database: undecodable bytes shown as \\xNN."""
    if name.isascii():
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _name_parts(name: str) -> list[str]:
    """The policy's checks on a name tarfile decoded (undecodable bytes as surrogates), then
    extract's own: the names it reserves for its staging folders."""
    if not is_utf8(name):
        raise Refused(tar_policy.NOT_UTF8)
    placed, refusal = tar_policy.placed_name(name)
    refusal = refusal or tar_policy.written_name_refusal(name)
    if refusal is not None:
        raise Refused(refusal)
    parts = [] if placed == "." else placed.split("/")
    if any(part.startswith(STAGING_PREFIX) for part in parts):
        raise Refused(f"names starting with {STAGING_PREFIX!r} are reserved for extract's staging folders")
    return parts


def member_mode(member: tarfile.TarInfo) -> int:
    return mode_of(member.mode)


def mode_of(header_mode: int) -> int:
    """PEP 706 data-filter permissions: no setuid/sticky bits, no group/other write, owner rw."""
    mode = header_mode & 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def member_mtime_ns(member: tarfile.TarInfo) -> int:
    """The mtime to restore, clamped into what the index stores (a time past 2262 would be
    recorded clamped anyway: the file on disk then says the same)."""
    mtime = member.mtime
    return clamp_int64(mtime * NS_PER_SECOND if isinstance(mtime, int) else int(mtime * NS_PER_SECOND))
