"""tar_members.iter_members: agrees with tarfile on every member, refuses what is unsafe, reports damage."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.errors import IndexerError
from indexer.ingest import tar_members
from indexer.ingest.tar_members import Member, TarCompressed, TarDamaged, TarReadError, iter_members

ALL = lambda name: -1  # noqa: E731
NONE = lambda name: 0  # noqa: E731


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def add_file(tar: tarfile.TarFile, name: str, data: bytes, mtime: float = 1_700_000_000) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    tar.addfile(info)


def members(path: Path, want=ALL) -> list[Member]:
    return list(iter_members(path, want_data=want))


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def rewrite_header(path: Path, offset: int, **fields: bytes) -> None:
    """Overwrite header fields at a header offset and fix its checksum (a valid but odd header)."""
    places = {"name": (0, 100), "size": (124, 12), "typeflag": (156, 1), "prefix": (345, 155),
              "isextended": (482, 1)}
    data = bytearray(path.read_bytes())
    block = data[offset:offset + 512]
    for field, value in fields.items():
        start, length = places[field]
        block[start:start + length] = value.ljust(length, b"\x00")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    data[offset:offset + 512] = block
    path.write_bytes(bytes(data))


def header_offsets(path: Path) -> dict[str, int]:
    """Where each member's own header is (after any pax or long-name header of its own)."""
    with tarfile.open(path) as tar:
        return {info.name: info.offset_data - 512 for info in tar}


# ---------------------------------------------------------------------------------------------
# Agreement with tarfile


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_kind_of_member_agrees_with_tarfile(tmp_path: Path, fmt: int) -> None:
    shard = tmp_path / "mixed.tar"
    long_name = "deep/" * 25 + "sample.json"  # > 100 characters: a GNU 'L' or a pax path record
    with tarfile.open(shard, "w", format=fmt) as tar:
        add_special(tar, "./", tarfile.DIRTYPE)
        add_special(tar, "sub", tarfile.DIRTYPE)
        add_file(tar, "./sub/a.json", b'{"caption": "x"}')
        add_file(tar, "sub/a.png", pattern(1500))
        add_file(tar, "empty.json", b"")
        add_file(tar, "block.png", pattern(512, 3))
        add_file(tar, long_name, b'{"long": true}')
        add_file(tar, "日本/キー.json", '{"t": "ü"}'.encode())
        add_special(tar, "link.png", tarfile.SYMTYPE, "sub/a.png")
        add_special(tar, "hard.png", tarfile.LNKTYPE, "sub/a.png")
        add_special(tar, "pipe", tarfile.FIFOTYPE)
        add_special(tar, "dev", tarfile.CHRTYPE)
        add_file(tar, "../x.json", b"{}")
        add_file(tar, "/abs.json", b"{}")
        add_file(tar, "last.json", b'{"end": 1}')
    found = members(shard)
    with tarfile.open(shard) as tar:
        infos = tar.getmembers()
        assert len(found) == len(infos)
        for member, info in zip(found, infos, strict=True):
            assert member.data_offset == info.offset_data
            assert member.size == info.size
            assert member.mtime == int(info.mtime)
            if info.isreg() and member.refusal is None:
                expected = tar.extractfile(info).read()  # type: ignore[union-attr]
                assert read_at(shard, member.data_offset, member.size) == expected
                assert member.data == expected
            else:
                assert member.data is None
    by_name = {m.name: m for m in found}
    assert [m.name for m in found[:3]] == [".", "sub", "sub/a.json"]
    assert by_name["."].kind == by_name["sub"].kind == "dir"
    assert by_name[long_name].data == b'{"long": true}'
    assert by_name["日本/キー.json"].data == '{"t": "ü"}'.encode()
    assert by_name["empty.json"].data == b""
    kinds = {m.name: (m.kind, m.refusal) for m in found if m.refusal}
    assert kinds == {
        "link.png": ("symlink", "symbolic link (to 'sub/a.png'); only regular files and folders are read"),
        "hard.png": ("hardlink", "hard link (to 'sub/a.png'); only regular files and folders are read"),
        "pipe": ("fifo", "FIFO (named pipe); only regular files and folders are read"),
        "dev": ("device", "device file; only regular files and folders are read"),
        "../x.json": ("file", "name contains '..' and could escape the target folder"),
        "/abs.json": ("file", "absolute path; members must be relative to the archive"),
    }


def test_ustar_prefix_field_is_joined_to_the_name(tmp_path: Path) -> None:
    shard = tmp_path / "ustar.tar"
    name = "p" * 90 + "/" + "n" * 90 + ".json"  # fits ustar only as prefix + name
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        add_file(tar, name, b"{}")
    assert [(m.name, m.data) for m in members(shard)] == [(name, b"{}")]


def test_want_data_is_asked_only_for_accepted_files_and_its_answer_is_the_length(tmp_path: Path) -> None:
    shard = tmp_path / "w.tar"
    with tarfile.open(shard, "w") as tar:
        add_special(tar, "d", tarfile.DIRTYPE)
        add_file(tar, "d/a.json", b'{"a": 1}')
        add_file(tar, "d/a.png", pattern(5000))
        add_file(tar, "d/b.png", pattern(100))
        add_file(tar, "../bad.json", b"{}")
        add_special(tar, "d/l.json", tarfile.SYMTYPE, "a.json")
    asked: list[str] = []

    def want(name: str) -> int:
        asked.append(name)
        return {"d/a.json": -1, "d/a.png": 64, "d/b.png": 1000}.get(name, 0)

    data = {m.name: m.data for m in members(shard, want)}
    assert asked == ["d/a.json", "d/a.png", "d/b.png"]
    assert data == {"d": None, "d/a.json": b'{"a": 1}', "d/a.png": pattern(5000)[:64],
                    "d/b.png": pattern(100), "../bad.json": None, "d/l.json": None}
    assert members(shard, NONE)[1].data is None


def test_base256_numbers_from_gnu_format(tmp_path: Path) -> None:
    shard = tmp_path / "b256.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        add_file(tar, "old.json", b"{}", mtime=-86_400)
        add_file(tar, "future.json", b"{}", mtime=8**11 + 5)  # past 11 octal digits
    raw = shard.read_bytes()
    assert raw[136] == 0xFF and raw[1024 + 136] == 0x80  # really base-256 fields
    assert [m.mtime for m in members(shard)] == [-86_400, 8**11 + 5]


def test_pax_global_and_extended_headers(tmp_path: Path) -> None:
    """A global mtime applies to every later member (as in GNU tar), a member's own record wins,
    and an empty value deletes the global key so the header's field counts again."""
    shard = tmp_path / "g.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT, pax_headers={"mtime": "1234.75"}) as tar:
        add_file(tar, "a.json", b"{}", mtime=5)
        info = tarfile.TarInfo("b.json")
        info.size, info.mtime, info.pax_headers = 2, 5, {"mtime": "-7.5"}
        tar.addfile(info, io.BytesIO(b"{}"))
        info = tarfile.TarInfo("c.json")
        info.size, info.mtime, info.pax_headers = 2, 6, {"mtime": ""}
        tar.addfile(info, io.BytesIO(b"{}"))
        info = tarfile.TarInfo("short")
        info.size, info.pax_headers = 3, {"path": "renamed/by/pax.json"}
        tar.addfile(info, io.BytesIO(b"abc"))
    found = members(shard)
    assert [(m.name, m.mtime) for m in found] == [
        ("a.json", 1234), ("b.json", -8), ("c.json", 6), ("renamed/by/pax.json", 1234)]
    assert found[3].data == b"abc"


def test_pax_size_record_overrides_the_header(tmp_path: Path) -> None:
    shard = tmp_path / "size.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("big.png")
        info.size, info.pax_headers = 700, {"size": "700"}
        tar.addfile(info, io.BytesIO(pattern(700)))
        add_file(tar, "next.json", b"{}")
    offsets = header_offsets(shard)
    rewrite_header(shard, offsets["big.png"], size=b"00000000000")  # only the pax record tells the size
    found = members(shard)
    assert [(m.name, m.size, m.data) for m in found] == [("big.png", 700, pattern(700)),
                                                        ("next.json", 2, b"{}")]


def test_names_are_normalised_as_tar_places_them(tmp_path: Path) -> None:
    shard = tmp_path / "n.tar"
    with tarfile.open(shard, "w") as tar:
        add_file(tar, "./a//b/./c.json", b"{}")
        add_special(tar, "./d/", tarfile.DIRTYPE)
        add_file(tar, "back\\slash.png", b"x")  # one file named with a backslash on POSIX
        add_file(tar, "C:drive.json", b"{}")
        add_file(tar, ".hidden.json", b"{}")
    assert [(m.name, m.refusal) for m in members(shard)] == [
        ("a/b/c.json", None), ("d", None), ("back\\slash.png", None), ("C:drive.json", None),
        (".hidden.json", None)]


def test_old_style_folder_and_nameless_or_slashed_files(tmp_path: Path) -> None:
    shard = tmp_path / "old.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        add_file(tar, "olddir", b"")
        add_file(tar, "slashed", b"")
        add_file(tar, "nameless", b"")
    offsets = header_offsets(shard)
    rewrite_header(shard, offsets["olddir"], name=b"olddir/", typeflag=b"\x00")
    rewrite_header(shard, offsets["slashed"], name=b"slashed/", typeflag=b"0")
    rewrite_header(shard, offsets["nameless"], name=b"./")
    assert [(m.name, m.kind, m.refusal) for m in members(shard)] == [
        ("olddir", "dir", None),
        ("slashed", "file", "a file member whose name ends in '/'"),
        (".", "file", "a file member without a name"),
    ]


def test_names_that_are_not_utf8_or_hold_nul_are_refused(tmp_path: Path) -> None:
    shard = tmp_path / "bytes.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        add_file(tar, "caf\udce9.json", b"{}")  # the raw byte 0xE9 (latin-1 é)
    pax = tmp_path / "nul.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        add_file(tar, "a\x00b" + "x" * 120 + ".json", b"{}")  # a pax path record keeps the NUL
    assert [(m.name, m.refusal, m.data) for m in members(shard)] == [
        ("caf\\xe9.json", "name is not valid UTF-8 (shown with \\x escapes)", None)]
    [member] = members(pax)
    assert member.refusal == "name contains a NUL byte" and member.name.startswith("a\\x00b")


def test_sparse_and_unknown_types_are_refused_and_their_data_skipped(tmp_path: Path) -> None:
    shard = tmp_path / "sparse.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        stored = b"1\n8000\n100\n".ljust(512, b"\x00") + pattern(100)  # map: one 100-byte run at 8000
        info = tarfile.TarInfo("GNUSparseFile.0/disk.img")
        info.size = len(stored)
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": "disk.img", "GNU.sparse.realsize": "9000"}
        tar.addfile(info, io.BytesIO(stored))
        add_file(tar, "old-sparse.bin", pattern(700))
        add_file(tar, "label", pattern(1100))
        add_file(tar, "after.json", b'{"ok": 1}')
    offsets = header_offsets(shard)
    rewrite_header(shard, offsets["old-sparse.bin"], typeflag=b"S")
    rewrite_header(shard, offsets["label"], typeflag=b"V")
    found = members(shard)
    assert [(m.name, m.kind, m.data) for m in found] == [
        ("disk.img", "file", None), ("old-sparse.bin", "file", None), ("label", "other", None),
        ("after.json", "file", b'{"ok": 1}')]
    sparse = "sparse file: its bytes in the tar are not the file's contents"
    assert found[0].refusal == found[1].refusal == sparse
    assert found[2].refusal == "unsupported member type 'V'; only regular files and folders are read"


def test_skipped_data_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large image members cost a jump, not a read: about the headers, JSONs and image heads."""
    shard = tmp_path / "big.tar"
    with tarfile.open(shard, "w") as tar:
        for key in range(40):
            add_file(tar, f"{key:04d}.json", b'{"caption": "a"}')
            add_file(tar, f"{key:04d}.png", pattern(300_000, key))
    read = 0
    real_pread = os.pread

    def counting_pread(fd: int, count: int, offset: int) -> bytes:
        nonlocal read
        chunk = real_pread(fd, count, offset)
        read += len(chunk)
        return chunk

    monkeypatch.setattr(tar_members.os, "pread", counting_pread)
    found = members(shard, lambda name: -1 if name.endswith(".json") else 1024)
    assert len(found) == 80 and all(m.data is not None for m in found)
    assert read < shard.stat().st_size // 3, (read, shard.stat().st_size)


# ---------------------------------------------------------------------------------------------
# Damage and refusal of the whole file


def three_member_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        add_file(tar, "a.json", b'{"a": 1}')
        add_file(tar, "a.png", pattern(2000))
        add_file(tar, "b.json", b'{"b": 2}')
    return path


def test_truncated_inside_a_member_yields_the_complete_ones_then_raises(tmp_path: Path) -> None:
    shard = three_member_tar(tmp_path / "cut.tar")
    offsets = header_offsets(shard)
    shard.write_bytes(shard.read_bytes()[:offsets["a.png"] + 512 + 1000])
    iterator = iter_members(shard, want_data=ALL)
    assert next(iterator).name == "a.json"
    with pytest.raises(TarDamaged) as caught:
        next(iterator)
    assert caught.value.offset == offsets["a.png"]
    assert "member 'a.png' is cut short" in str(caught.value)
    assert str(shard) in str(caught.value) and "re-download" in str(caught.value)
    assert isinstance(caught.value, IndexerError)


def test_truncated_between_members_raises_after_the_last_one(tmp_path: Path) -> None:
    shard = three_member_tar(tmp_path / "cut.tar")
    offsets = header_offsets(shard)
    shard.write_bytes(shard.read_bytes()[:offsets["b.json"] + 1024])  # b.json whole, no end marker
    found = []
    with pytest.raises(TarDamaged, match="no end-of-archive marker") as caught:
        for member in iter_members(shard, want_data=ALL):
            found.append(member.name)
    assert found == ["a.json", "a.png", "b.json"]
    assert caught.value.offset == offsets["b.json"] + 1024


def test_cut_inside_a_header_or_an_extended_header(tmp_path: Path) -> None:
    shard = three_member_tar(tmp_path / "cut.tar")
    offsets = header_offsets(shard)
    shard.write_bytes(shard.read_bytes()[:offsets["b.json"] + 100])
    with pytest.raises(TarDamaged, match="cut short inside a member header"):
        members(shard)
    pax = tmp_path / "pax.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        add_file(tar, "é" * 200 + ".json", b"{}")
    pax.write_bytes(pax.read_bytes()[:1024])  # the 'x' header and its records, not the member
    with pytest.raises(TarDamaged, match="ends right after an extended"):
        members(pax)


def test_garbled_header_stops_after_the_members_before_it(tmp_path: Path) -> None:
    shard = three_member_tar(tmp_path / "garbled.tar")
    offsets = header_offsets(shard)
    data = bytearray(shard.read_bytes())
    data[offsets["b.json"] + 10] ^= 0x55  # one flipped name byte: the checksum no longer matches
    shard.write_bytes(bytes(data))
    found = []
    with pytest.raises(TarDamaged, match="checksum mismatch") as caught:
        for member in iter_members(shard, want_data=ALL):
            found.append(member.name)
    assert found == ["a.json", "a.png"]
    assert caught.value.offset == offsets["b.json"]


def test_garbled_numbers_and_pax_records(tmp_path: Path) -> None:
    shard = three_member_tar(tmp_path / "size.tar")
    rewrite_header(shard, header_offsets(shard)["a.png"], size=b"12x4")
    with pytest.raises(TarDamaged, match="invalid size field"):
        members(shard)
    pax = tmp_path / "pax.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        add_file(tar, "é.json", b"{}")
    data = bytearray(pax.read_bytes())
    record = data.index(b" path=")
    data[record - 2:record] = b"99"  # a record length past the header's end
    pax.write_bytes(bytes(data))
    with pytest.raises(TarDamaged, match="malformed pax"):
        members(pax)


def test_lone_zero_block_followed_by_data_is_damage(tmp_path: Path) -> None:
    first = three_member_tar(tmp_path / "a.tar")
    offsets = header_offsets(first)
    data = first.read_bytes()
    end = offsets["b.json"] + 1024
    joined = tmp_path / "joined.tar"
    joined.write_bytes(data[:end] + bytes(512) + data)  # one zero block, then another archive
    with pytest.raises(TarDamaged, match="lone zero block") as caught:
        members(joined)
    assert caught.value.offset == end
    lone = tmp_path / "lone.tar"
    lone.write_bytes(data[:end] + bytes(512))  # a single zero block at the end: accepted, as by tar
    assert [m.name for m in members(lone)] == ["a.json", "a.png", "b.json"]


@pytest.mark.parametrize(("mode", "fmt", "tool"), [("w:gz", "gzip", "gunzip"), ("w:bz2", "bzip2", "bunzip2"),
                                                   ("w:xz", "xz", "unxz")])
def test_compressed_shards_are_refused_by_their_magic_bytes(tmp_path: Path, mode: str, fmt: str,
                                                            tool: str) -> None:
    shard = tmp_path / "looks-plain.tar"  # the name says .tar; the bytes say compressed
    with tarfile.open(shard, mode) as tar:
        add_file(tar, "a.json", b"{}")
    with pytest.raises(TarCompressed) as caught:
        next(iter_members(shard, want_data=ALL))
    assert str(caught.value) == (f"{shard}: {fmt}-compressed: a compressed tar cannot be read by offset; "
                                 f"decompress it ({tool}) or use `indexer extract`")


def test_tiny_gzip_and_zstd_magic(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.tgz"
    tiny.write_bytes(gzip.compress(b"x"))  # shorter than one tar block
    with pytest.raises(TarCompressed, match="gzip"):
        members(tiny)
    zst = tmp_path / "z.tar"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(2000))
    with pytest.raises(TarCompressed, match=r"zstd-compressed.*decompress it \(unzstd\)$"):
        members(zst)


def test_a_tar_whose_first_name_starts_like_a_magic_is_still_a_tar(tmp_path: Path) -> None:
    shard = tmp_path / "BZh.tar"
    with tarfile.open(shard, "w") as tar:
        add_file(tar, "BZh91AY.json", b"{}")
    assert [m.name for m in members(shard)] == ["BZh91AY.json"]


def test_files_that_are_not_tars(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(TarDamaged, match="the file is empty"):
        members(empty)
    short = tmp_path / "short.tar"
    short.write_bytes(b"hello")
    with pytest.raises(TarDamaged, match=r"shorter than one header"):
        members(short)
    text = tmp_path / "text.tar"
    text.write_bytes(b"not a tar at all\n" * 100)
    with pytest.raises(TarDamaged, match=r"at byte 0: not a tar archive \(no valid header"):
        members(text)
    with pytest.raises(TarReadError, match="not a regular file"):
        members(tmp_path)
    fifo = tmp_path / "pipe.tar"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer without O_NONBLOCK
    with pytest.raises(TarReadError, match="not a regular file"):
        members(fifo)
    with pytest.raises(TarReadError, match="cannot open it"):
        members(tmp_path / "missing.tar")


# ---------------------------------------------------------------------------------------------
# Property: any member list tarfile writes, iter_members reads the same way

component = st.text(st.characters(codec="utf-8", exclude_characters="/\x00", exclude_categories=("Cs",)),
                    min_size=1, max_size=40).filter(lambda part: part not in (".", ".."))
member_strategy = st.tuples(
    st.lists(component, min_size=1, max_size=4).map("/".join),
    st.one_of(st.just(0), st.integers(1, 3000), st.sampled_from([511, 512, 513, 1024, 1536])),
    st.integers(0, 2**34),  # past 8**11: base-256 in GNU, a pax record in PAX
    st.sampled_from(["file", "dir"]),
    st.sampled_from([0, -1, 1, 100, 600]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(member_strategy, min_size=0, max_size=12), st.sampled_from([tarfile.GNU_FORMAT,
                                                                            tarfile.PAX_FORMAT]))
def test_agrees_with_tarfile_on_random_member_lists(tmp_path: Path, spec: list, fmt: int) -> None:
    shard = tmp_path / "random.tar"
    wants: dict[str, int] = {}
    with tarfile.open(shard, "w", format=fmt, encoding="utf-8") as tar:
        for number, (name, size, mtime, kind, want) in enumerate(spec):
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = size
                tar.addfile(info, io.BytesIO(pattern(size, number)))
                wants[name] = want
    found = list(iter_members(shard, want_data=lambda name: wants[name]))
    with tarfile.open(shard, encoding="utf-8") as tar:
        infos = tar.getmembers()
        assert [(m.name, m.data_offset, m.size, m.mtime, m.kind) for m in found] == [
            (i.name, i.offset_data, i.size, int(i.mtime), "dir" if i.isdir() else "file") for i in infos]
        for member, info in zip(found, infos, strict=True):
            assert member.refusal is None
            if info.isreg() and wants[info.name]:
                whole = tar.extractfile(info).read()  # type: ignore[union-attr]
                want = wants[info.name]
                assert member.data == (whole if want < 0 else whole[:want])
            else:
                assert member.data is None
