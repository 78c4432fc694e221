"""One-pass reader of uncompressed tar shards: every member's name, kind, data offset, and the bytes
a caller wants (a JSON whole, an image's first KiB), without reading the rest.

Why not `tarfile`: it costs ~20-30 us a member in Python bookkeeping, and to skip a member's data
it still reads it when the file is a stream. Here headers are parsed from a buffer filled by large
`os.pread` calls, and data nobody asked for is jumped over (the next read starts at the next
header): the bytes read a sample are its headers, its JSON and its image head, whatever its size.

Rules, chosen to match what `tar xf` (GNU tar) would do, or to refuse where that would be unsafe:
- Formats: v7, ustar (name + prefix), GNU (`L`/`K` long names, old sparse `S`), pax (`x` per member,
  `g` global: path, linkpath, size, mtime; an empty value deletes the key; a global record applies to
  every later member, as in GNU tar; `tarfile` applies globals only to members with their own `x`
  header). Numbers may be octal or base-256. The archive ends at two zero blocks (one zero block
  followed by the end of the file is accepted, as GNU tar does); what follows them is ignored.
- Names: as `tar xf` places them: `./`, empty and `.` components and trailing slashes dropped; the
  archive's root folder itself (`./`) is named `.`.
- Refusals: tar_policy.py (the one policy `extract` shares). A refused member is still yielded,
  with `refusal` set and no data.
- Damage: a cut or garbled archive raises `TarDamaged` after every complete member before the damage
  was yielded; a compressed file (by its magic bytes) raises `TarCompressed` before anything.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

from indexer.errors import DataProblem
from indexer.ingest import tar_policy
from indexer.ingest.change import NS_PER_SECOND

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
JUMP_READ = 8 << 10  # first read after a jump: a header, a JSON and the next header, usually
READ_MAX = 1 << 20  # sequential reads double up to this, so shards of tiny members cost few syscalls
DEFAULT_MODE = 0o644
EXTENDED_LIMIT = 1 << 20  # a pax or GNU long-name header larger than this is taken for damage

Kind = Literal["file", "dir", "symlink", "hardlink", "device", "fifo", "other"]

# Type flags: kind, and whether the header's size counts data blocks that follow it. Like tarfile
# and GNU tar, folders, links, devices and FIFOs carry no data whatever their size field says.
_FILE_TYPES = (b"0", b"\x00", b"7")
_NO_DATA = {b"5": "dir", b"2": "symlink", b"1": "hardlink", b"3": "device", b"4": "device", b"6": "fifo"}
_EXTENDED = (b"x", b"X", b"g", b"L", b"K")
_POSIX_MAGIC = b"ustar\x00"
_PAX_SPARSE = (b"GNU.sparse.major", b"GNU.sparse.map", b"GNU.sparse.size")  # GNU sparse 1.0, 0.1, 0.0
_SIGNED_BYTES = struct.Struct("148b8x356b")
_COMPRESSED = (  # magic, format, tool, whether `indexer extract` (tarfile's "r:*") reads it
    (b"\x1f\x8b", "gzip", "gunzip", True),
    (b"BZh", "bzip2", "bunzip2", True),
    (b"\xfd7zXZ\x00", "xz", "unxz", True),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd", False),
    (b"\x04\x22\x4d\x18", "lz4", "unlz4", False),
    (b"\x1f\x9d", "compress (.Z)", "uncompress", False),
)


class Member(NamedTuple):
    """One tar member. `data_offset`/`size` locate its data in the tar (what an index by offset, such
    as webshart's, records); `data` is the wanted head of a regular file's data (None when not
    asked for, or refused); `refusal` says why the member must not be used as a file."""

    name: str
    kind: Kind
    data_offset: int
    size: int
    mtime: int  # whole seconds (a pax time's fraction floored), as an index records it
    data: bytes | None
    refusal: str | None
    mtime_ns: int = 0  # with a pax time's fraction, which `tar xf` restores on the file
    mode: int = 0o644  # the header's permission bits (DEFAULT_MODE)


class TarReadError(DataProblem):
    """The shard cannot be read as a tar by offset; the message names the file and the fix."""

    def __init__(self, path: str, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"{path}: {reason}")
        self.path = path
        self.reason = reason


class TarCompressed(TarReadError):
    """A compressed shard: offsets into it mean nothing, so nothing is yielded."""


class TarDamaged(TarReadError):
    """Raised after the last complete member before `offset`, where the archive is cut or garbled."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(path, reason, f"{path}: damaged tar at byte {offset}: {reason}; the members "
                         "before it were read: re-download or re-create the shard")
        self.offset = offset


def iter_members(path: str | os.PathLike[str], *, want_data: Callable[[str], int]) -> Iterator[Member]:
    """Every member of the tar at `path`, in archive order, in one sequential pass.

    `want_data(name)` is called for each accepted regular file and returns how many leading bytes
    of its data to return in `Member.data`: 0 for none (data is None), a negative number for all.
    Raises TarReadError (the file cannot be opened, is not a regular file), TarCompressed (before
    any member) or TarDamaged (after every complete member before the damage).
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block the open
    except OSError as exc:
        raise TarReadError(name, f"cannot open it ({exc.strerror}); check the path and its permissions") \
            from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TarReadError(name, "not a regular file; give the path of a .tar shard")
        yield from iter_members_in(lambda count, offset: os.pread(fd, count, offset), name, st.st_size,
                                   want_data=want_data)
    finally:
        os.close(fd)


Pread = Callable[[int, int], bytes]  # (count, offset) -> up to count bytes at offset


def iter_members_in(pread: Pread, name: str, size: int, *, want_data: Callable[[str], int],
                    jump_read: int = JUMP_READ) -> Iterator[Member]:
    """iter_members over any byte source of a known size (one read a pread call). jump_read: how
    much the first read after a jump takes."""
    yield from iter_members_from(Reader(pread, name, size, jump_read), want_data=want_data)


def iter_members_from(reader: Reader, *, want_data: Callable[[str], int]) -> Iterator[Member]:
    """iter_members through a Reader of the caller's (a remote walk's: remote_walk.RemoteReader)."""
    yield from _members(reader, reader.path, reader.end, want_data)


class Reader:
    """pread-backed buffer: byte ranges by offset (never decreasing), read ahead in growing chunks."""

    __slots__ = ("buf", "end", "jump_read", "path", "pread", "readahead", "reads", "start", "stop")

    def __init__(self, pread: Pread, path: str, end: int, jump_read: int = JUMP_READ) -> None:
        self.jump_read = jump_read
        self.pread = pread
        self.path = path
        self.end = end  # the source's size: no read is asked past it
        self.reads = 0
        self.buf = b""
        self.start = 0
        self.stop = 0
        self.readahead = jump_read

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`, fewer only where the file ends."""
        if self.start <= offset and offset + length <= self.stop:
            i = offset - self.start
            return self.buf[i:i + length]
        return self._fill(offset, length)

    def _fill(self, offset: int, length: int) -> bytes:
        if self.start <= offset <= self.stop:  # reading on: keep the unread tail, read further ahead
            self.readahead = min(self.readahead * 2, READ_MAX)
            kept = self.buf[offset - self.start:]
            buf = kept + self._pread(max(length - len(kept), self.readahead), self.stop)
        else:  # a jump over skipped data: start small, the next member may well be skipped too
            self.readahead = self.jump_read
            buf = self._pread(max(length, self.jump_read), offset)
        self.buf, self.start, self.stop = buf, offset, offset + len(buf)
        return buf[:length]

    def _pread(self, count: int, offset: int) -> bytes:
        parts = []
        count = min(count, self.end - offset)
        try:
            while count > 0:
                chunk = self.pread(count, offset)
                self.reads += 1
                if not chunk:
                    break
                parts.append(chunk)
                count -= len(chunk)
                offset += len(chunk)
        except OSError as exc:
            raise TarDamaged(self.path, offset, f"read error ({exc.strerror or exc})") from None
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _members(reader: Reader, path: str, end: int, want_data: Callable[[str], int]) -> Iterator[Member]:
    if end == 0:
        raise TarDamaged(path, 0, "the file is empty (an interrupted download?)")
    global_pax: dict[bytes, bytes] = {}
    local_pax: dict[bytes, bytes] = {}
    long_name = long_link = None
    pos = 0
    while True:
        block = reader.read(pos, BLOCK)
        if len(block) < BLOCK or block == ZERO_BLOCK:
            _check_end(reader, path, pos, block, pending=bool(local_pax or long_name or long_link))
            return
        size = _header_size(path, pos, block)
        typeflag = block[156:157]
        data_at = pos + BLOCK
        if typeflag in _EXTENDED:
            data = _extended_data(reader, path, pos, data_at, size, end)
            if typeflag == b"L":
                long_name = data.split(b"\x00", 1)[0]
            elif typeflag == b"K":
                long_link = data.split(b"\x00", 1)[0]
            else:
                records = _pax_records(path, pos, data)
                (global_pax if typeflag == b"g" else local_pax).update(records)
            pos = data_at + _padded(size)
            continue

        # An empty pax value deletes the key: every use below treats b"" as absent.
        pax = ({**global_pax, **local_pax} if local_pax else global_pax) if global_pax else local_pax
        if typeflag == b"S":
            data_at = _skip_sparse_extensions(reader, path, block, data_at)
        name, kind, size, mtime, refusal = _member(path, pos, block, typeflag, size, pax, long_name,
                                                   long_link)
        mtime_ns = _pax_ns(pax[b"mtime"]) if pax and pax.get(b"mtime") else mtime * NS_PER_SECOND
        if local_pax:
            local_pax = {}
        long_name = long_link = None
        has_data = kind == "file" or kind == "other"
        if has_data and data_at + size > end:
            raise TarDamaged(path, pos, f"member {name!r} is cut short: its {size} bytes end past the "
                             f"end of the file ({end} bytes)")
        data = None
        if kind == "file" and refusal is None:
            wanted = want_data(name)
            if wanted:
                data = reader.read(data_at, size if wanted < 0 or wanted > size else wanted)
        yield Member(name, kind, data_at, size, mtime, data, refusal, mtime_ns, _mode(block))
        pos = data_at + ((size + BLOCK - 1) & ~(BLOCK - 1) if has_data else 0)


def _header_size(path: str, pos: int, block: bytes) -> int:
    """The size field of a header whose checksum holds; TarDamaged where the archive is garbled
    (a bad checksum, a malformed or negative size)."""
    if not _checksum_ok(block):
        if pos == 0:
            _refuse_compressed(path, block)
        raise TarDamaged(path, pos, "not a tar archive (no valid header at its start)" if pos == 0
                         else "invalid header (checksum mismatch): the archive is garbled here")
    try:
        size = _number(block[124:136])
    except ValueError:
        size = -1
    if size < 0:
        raise TarDamaged(path, pos, "invalid size field in a member header")
    return size


def _mode(block: bytes) -> int:
    """The header's permission bits (the usual 0644 when the field is malformed)."""
    try:
        return _number(block[100:108]) & 0o7777
    except ValueError:
        return DEFAULT_MODE


def _check_end(reader: Reader, path: str, pos: int, block: bytes, pending: bool) -> None:
    """Returns at a proper end of archive; raises TarDamaged for a cut or garbled one."""
    if pos == 0:
        _refuse_compressed(path, block)
    if len(block) < BLOCK and block.strip(b"\x00"):
        raise TarDamaged(path, pos, "not a tar archive (shorter than one header)" if pos == 0
                         else "the file is cut short inside a member header")
    if pending:
        raise TarDamaged(path, pos, "the archive ends right after an extended (pax or long-name) header")
    if not block:
        raise TarDamaged(path, pos, "no end-of-archive marker: the file is cut short")
    following = reader.read(pos + BLOCK, BLOCK)
    if following.strip(b"\x00"):
        raise TarDamaged(path, pos, "a lone zero block followed by more data: the archive is garbled "
                         "(or two archives were concatenated; tar reads only the first)")


def _member(
    path: str,
    pos: int,
    block: bytes,
    typeflag: bytes,
    size: int,
    pax: dict[bytes, bytes],
    long_name: bytes | None,
    long_link: bytes | None,
) -> tuple[str, Kind, int, int, str | None]:
    """(name, kind, size, mtime, refusal) of the member a (non-extended) header describes."""
    try:
        mtime = _number(block[136:148])
    except ValueError:
        raise TarDamaged(path, pos, "invalid mtime field in a member header") from None
    raw_name = long_name if long_name is not None else _header_name(block)
    sparse = typeflag == b"S"
    if pax:
        raw_name = pax.get(b"GNU.sparse.name") or pax.get(b"path") or raw_name
        sparse = sparse or bool(pax.get(_PAX_SPARSE[0]) or pax.get(_PAX_SPARSE[1]) or pax.get(_PAX_SPARSE[2]))
        try:
            if pax.get(b"size"):
                size = _pax_int(pax[b"size"])
            if pax.get(b"mtime"):
                mtime = _pax_seconds(pax[b"mtime"])
        except ValueError:
            raise TarDamaged(path, pos, "invalid size or mtime in a pax extended header") from None
    if typeflag in _FILE_TYPES or sparse:
        kind: Kind = "dir" if typeflag == b"\x00" and raw_name.endswith(b"/") else "file"
    else:
        kind = _NO_DATA.get(typeflag, "other")  # type: ignore[assignment]
    name, refusal = tar_policy.raw_name(raw_name)
    if kind == "file" and refusal is None:
        if sparse:
            refusal = tar_policy.SPARSE
        elif name == ".":
            refusal = tar_policy.NO_NAME
        elif raw_name.endswith(b"/"):
            refusal = "a file member whose name ends in '/'"
    elif kind not in ("file", "dir"):
        link = pax.get(b"linkpath") or long_link or block[157:257].split(b"\x00", 1)[0]
        refusal = tar_policy.kind_refusal(kind, typeflag.decode("latin-1"),
                                          link.decode("utf-8", "backslashreplace"))
    return name, kind, size, mtime, refusal


def _header_name(block: bytes) -> bytes:
    name = block[:100].split(b"\x00", 1)[0]
    if block[257:263] == _POSIX_MAGIC and block[345] != 0:
        prefix = block[345:500].split(b"\x00", 1)[0]
        name = prefix + b"/" + name
    return name


def _checksum_ok(block: bytes) -> bool:
    """The header checksum: the byte sum with its own field counted as spaces.

    zlib's adler32 (12x faster than sum() here) gives the byte sum modulo 65521, and a block's sum
    is below 2 x 65521, so a stored checksum off by exactly 65521 would pass: that makes a garbled
    header pass about 1 in 65,000 times instead of 1 in 130,000: weak either way, as tar's is.
    """
    field = block[148:156]
    digits = field.split(b"\x00", 1)[0].strip()
    if not is_octal(digits):
        return False
    stored = int(digits, 8)
    block_sum = stored - 256 + sum(field)  # what the whole block must sum to
    if 0 <= block_sum <= BLOCK * 255 and (block_sum + 1 - (zlib.adler32(block) & 0xFFFF)) % 65521 == 0:
        return True
    return stored == sum(_SIGNED_BYTES.unpack(block)) + 256  # some old tars summed signed bytes


def _number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or base-256 when the top bit is set."""
    lead = field[0]
    if lead == 0x80:
        return int.from_bytes(field[1:], "big")
    if lead == 0xFF:
        return int.from_bytes(field, "big", signed=True)
    digits = field.split(b"\x00", 1)[0].strip()
    if not digits:
        return 0
    if not is_octal(digits):
        raise ValueError
    return int(digits, 8)


def is_octal(digits: bytes) -> bool:
    """Only the digits 0-7: int(x, 8) would also take signs, '_', '0o' and spaces, and fails on 8
    and 9, which `isdigit` lets through."""
    return bool(digits) and not digits.translate(None, b"01234567")


def _padded(size: int) -> int:
    return (size + BLOCK - 1) & ~(BLOCK - 1)


def _extended_data(reader: Reader, path: str, pos: int, data_at: int, size: int, end: int) -> bytes:
    if size > EXTENDED_LIMIT:
        raise TarDamaged(path, pos, f"an extended header claims {size} bytes: the archive is garbled")
    data = reader.read(data_at, size)
    if len(data) < size:
        raise TarDamaged(path, pos, f"the file is cut short inside an extended header (ends at {end})")
    return data


def _pax_records(path: str, pos: int, data: bytes) -> dict[bytes, bytes]:
    """`%d key=value\\n` records; an empty value deletes the key (kept as b'' and filtered by use)."""
    records: dict[bytes, bytes] = {}
    at = 0
    while at < len(data) and data[at] != 0:
        space = data.find(b" ", at)
        try:
            length = int(data[at:space]) if space > at else 0
        except ValueError:
            length = 0
        stop = at + length
        if length <= 0 or stop > len(data) or data[stop - 1] != 0x0A or b"=" not in data[space:stop]:
            raise TarDamaged(path, pos, "malformed pax extended header record")
        key, _, value = data[space + 1:stop - 1].partition(b"=")
        records[key] = value
        at = stop
    return records


def _pax_int(value: bytes) -> int:
    if not value.isdigit():
        raise ValueError
    return int(value)


def _pax_seconds(value: bytes) -> int:
    """Whole seconds (floor) of a pax time such as `1700000000.25` or `-1.5`."""
    whole, _, fraction = value.partition(b".")
    if not whole.lstrip(b"-").isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError
    seconds = int(whole)
    if whole.startswith(b"-") and fraction.strip(b"0"):
        seconds -= 1
    return seconds


def _pax_ns(value: bytes) -> int:
    """Nanoseconds of a pax time (already checked by _pax_seconds): `1.25` -> 1_250_000_000."""
    whole, _, fraction = value.partition(b".")
    digits = (fraction + b"000000000")[:9]
    magnitude = abs(int(whole)) * NS_PER_SECOND + int(digits)
    return -magnitude if whole.startswith(b"-") else magnitude


def _skip_sparse_extensions(reader: Reader, path: str, block: bytes, data_at: int) -> int:
    """Old GNU sparse headers may be followed by extension blocks (flag at byte 482, then 504)."""
    extended = block[482]
    while extended:
        extension = reader.read(data_at, BLOCK)
        if len(extension) < BLOCK:
            raise TarDamaged(path, data_at, "the file is cut short inside a sparse header")
        extended = extension[504]
        data_at += BLOCK
    return data_at


def _refuse_compressed(path: str, head: bytes) -> None:
    for magic, fmt, tool, extract_reads in _COMPRESSED:
        if head.startswith(magic):
            fix = f"decompress it ({tool}) or use `indexer extract`" if extract_reads else \
                f"decompress it ({tool})"
            raise TarCompressed(path, f"{fmt}-compressed: a compressed tar cannot be read by offset; {fix}")
