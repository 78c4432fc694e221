"""Damaged or odd data ends one sample or one shard, never the run: tar headers with malformed
numbers, JSON that parses but cannot be stored, times outside 64 bits, NUL characters in captions,
and anything a reader raises that nobody foresaw (the guard)."""

from __future__ import annotations

import errno
import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers_index import samples

from indexer.extract import extract_shards
from indexer.ingest import change, read, shards
from indexer.ingest.index import index_root

DEEP = '{"short_caption": "deep", "width": 64, "height": 48, "nest": ' + "[" * 400 + "]" * 400 + "}"
YEAR_2300_NS = 10_413_792_000 * 1_000_000_000  # past 2**63 ns (2262-04-11)


pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled


def pair_members(gen, key: str, record: dict | None = None) -> list[tuple[str, bytes]]:
    record = record if record is not None else {"width": 64, "height": 48,
                                                "short_caption": f"caption of {key}"}
    return [(f"{key}.json", json.dumps(record).encode()), (f"{key}.png", gen.png_bytes(64, 48))]


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT,
              pax: dict[str, dict[str, str]] | None = None, mtimes: dict[str, int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = (mtimes or {}).get(name, 1_700_000_000)
            info.pax_headers = (pax or {}).get(name, {})
            tar.addfile(info, io.BytesIO(data))
    return path


def header_offsets(data: bytes) -> list[int]:
    """Where each member header of a plain (GNU/ustar) tar starts."""
    offsets, pos = [], 0
    while pos + 512 <= len(data) and data[pos:pos + 512].strip(b"\0"):
        offsets.append(pos)
        size = int(data[pos + 124:pos + 136].split(b"\0")[0].strip() or b"0", 8)
        pos += 512 + (size + 511) // 512 * 512
    return offsets


def db_rows(db: Path, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize(("field", "value"), [("checksum", b"0099999\0"), ("mtime", b"1234567890a\0"),
                                               ("size", b"0000000009\0\0")])
def test_a_header_number_with_non_octal_digits_is_the_damage_point(tmp_path, cli, gen, field, value):
    data = tmp_path / "data"
    members = [m for i in range(4) for m in pair_members(gen, f"bad{i}")]
    bad = write_tar(data / "bad.tar", members)
    write_tar(data / "good.tar", [m for i in range(3) for m in pair_members(gen, f"good{i}")])
    raw = bytearray(bad.read_bytes())
    fifth = header_offsets(bytes(raw))[4]  # bad2.json: bad0 and bad1 lie wholly before it
    start = {"checksum": 148, "mtime": 136, "size": 124}[field]
    raw[fifth + start:fifth + start + len(value)] = value
    bad.write_bytes(bytes(raw))
    db = tmp_path / "db.sqlite"

    for _run in range(2):
        result = cli("index", data, "--db", db, "--json")
        assert result.exit_code == 0 and "unexpected" not in result.output + result.stderr
    keys = {row[0] for row in db_rows(db, "SELECT key FROM samples WHERE status = 'ok'")}
    assert keys == {"good0", "good1", "good2", "bad0", "bad1"}
    [(error,)] = db_rows(db, "SELECT error FROM tar_shards WHERE path = 'bad.tar'")
    assert f"at byte {fifth}" in error and "re-download" in error
    assert db_rows(db, "SELECT error FROM tar_shards WHERE path = 'good.tar'") == [(None,)]

    summary = extract_shards(tmp_path / "x.sqlite", [bad], tmp_path / "out")
    assert [f["shard"] for f in summary["failures"]] == [str(bad.resolve())]
    assert f"at byte {fifth}" in summary["failures"][0]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(n for n, _ in members[:4])


def test_json_too_deep_to_store_is_bad_json_in_loose_files_members_and_extract(tmp_path, gen, sample_files):
    loose = tmp_path / "loose"
    for key in ("a", "b", "c"):
        sample_files.pair(loose, key, size=(64, 48))
    (loose / "b.json").write_text(DEEP)
    shard = write_tar(tmp_path / "in_place" / "s.tar",
                      [*pair_members(gen, "a"), ("b.json", DEEP.encode()), ("b.png", gen.png_bytes(64, 48)),
                       *pair_members(gen, "c")])
    runs = {"loose": (loose, tmp_path / "l.sqlite"), "in_place": (shard.parent, tmp_path / "p.sqlite")}
    for root, db in runs.values():
        index_root(db, root, workers=1)
    extract_shards(tmp_path / "x.sqlite", [shard], tmp_path / "out", workers=1)
    for db in (tmp_path / "l.sqlite", tmp_path / "p.sqlite", tmp_path / "x.sqlite"):
        found = samples(db)
        assert {key: row["status"] for key, row in found.items()} == {"a": "ok", "b": "bad_json", "c": "ok"}
        assert "nested deeper than 254 levels" in found["b"]["error"]
        assert found["b"]["meta"] is None


def test_a_modification_time_past_2262_is_stored_clamped_with_a_warning(tmp_path, cli, gen, sample_files):
    data = tmp_path / "data"
    for i in range(20):
        sample_files.pair(data, f"k{i:02d}", size=(64, 48))
    os.utime(data / "k07.png", ns=(YEAR_2300_NS, YEAR_2300_NS))
    db = tmp_path / "db.sqlite"

    result = cli("index", data, "--db", db, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.output)["samples"] == 20
    found = samples(db)
    assert "outside the years 1677-2262" in found["k07"]["warning"]
    assert db_rows(db, "SELECT image_mtime_ns FROM samples WHERE key = 'k07'") == [(change.INT64_MAX,)]
    assert json.loads(cli("index", data, "--db", db, "--json").output)["files_read"] == 0

    # still a change when its size moves, the time staying out of range
    (data / "k07.png").write_bytes(gen.png_bytes(80, 48))
    os.utime(data / "k07.png", ns=(YEAR_2300_NS, YEAR_2300_NS))
    rerun = json.loads(cli("index", data, "--db", db, "--json").output)
    assert rerun["files_read"] == 1
    stored = db_rows(db, "SELECT image_size FROM samples WHERE key = 'k07'")
    assert stored == [((data / "k07.png").stat().st_size,)]


@pytest.mark.parametrize("header", [
    {"pax": {"mtime": "10000000000"}}, {"pax": {"mtime": "200000000000"}},
    {"pax": {"mtime": "12345678901234567890"}}, {"pax": {"mtime": "-12345678901234567890.5"}},
    {"mtime": 8 ** 11 * 4000}, {"mtime": -(8 ** 11) * 4000},
])
def test_member_times_past_64_bits_are_clamped_in_place_and_in_extract(tmp_path, gen, header):
    members = [*pair_members(gen, "a"), *pair_members(gen, "b")]
    fmt = tarfile.PAX_FORMAT if "pax" in header else tarfile.GNU_FORMAT  # GNU: base-256 numbers
    shard = write_tar(tmp_path / "in" / "s.tar", members, fmt, pax={"b.png": header.get("pax", {})},
                      mtimes={"b.png": header.get("mtime", 1_700_000_000)})
    index_root(tmp_path / "p.sqlite", shard.parent, workers=1)
    found = samples(tmp_path / "p.sqlite")
    assert {key: row["status"] for key, row in found.items()} == {"a": "ok", "b": "ok"}
    assert "s.tar:b.png: its header time is outside the years 1677-2262" in found["b"]["warning"]
    [(mtime_ns,)] = db_rows(tmp_path / "p.sqlite", "SELECT image_mtime_ns FROM samples WHERE key = 'b'")
    assert mtime_ns in (change.INT64_MIN, change.INT64_MAX)

    summary = extract_shards(tmp_path / "x.sqlite", [shard], tmp_path / "out", workers=1)
    assert summary["failures"] == [] and summary["samples"] == 2
    assert {row["status"] for row in samples(tmp_path / "x.sqlite").values()} == {"ok"}


def test_a_pax_size_that_does_not_fit_is_a_damaged_member(tmp_path, gen):
    members = [*pair_members(gen, "a"), *pair_members(gen, "b")]
    shard = write_tar(tmp_path / "in" / "s.tar", members, tarfile.PAX_FORMAT)
    raw = shard.read_bytes()
    record = b"29 size=99999999999999999999\n"  # a pax header of its own for b.json
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(record)
    pax_block = info.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (512 - len(record))
    third = header_offsets(raw)[2]
    shard.write_bytes(raw[:third] + pax_block + raw[third:])
    index_root(tmp_path / "p.sqlite", shard.parent, workers=1)
    assert set(samples(tmp_path / "p.sqlite")) == {"a"}
    [(error,)] = db_rows(tmp_path / "p.sqlite", "SELECT error FROM tar_shards")
    assert "b.json" in error and "cut short" in error


def test_a_nul_in_a_caption_is_dropped_with_a_warning_everywhere(tmp_path, cli, gen, sample_files):
    data = tmp_path / "data"
    sample_files.pair(data, "a", size=(64, 48), record={"image_name": "a.png", "width": 64, "height": 48,
                                                       "short_caption": "first\u0000second"})
    sample_files.pair(data, "b", size=(64, 48))
    shard = write_tar(tmp_path / "in" / "s.tar", [(f"n.{ext}", (data / f"a.{ext}").read_bytes())
                                                  for ext in ("json", "png")])
    db = tmp_path / "db.sqlite"
    assert cli("index", data, "--db", db).exit_code == 0
    index_root(tmp_path / "p.sqlite", shard.parent, workers=1)
    extract_shards(tmp_path / "x.sqlite", [shard], tmp_path / "out", workers=1)
    for database, key in ((db, "a"), (tmp_path / "p.sqlite", "n"), (tmp_path / "x.sqlite", "n")):
        [(caption, warning)] = db_rows(database, "SELECT short_caption, warning FROM samples WHERE key = ?",
                                       key)
        assert caption == "firstsecond" and "NUL characters" in warning

    out = tmp_path / "exports"
    out.mkdir()
    assert cli("export", "parquet", out / "x.parquet", "--db", db).exit_code == 0
    assert "firstsecond" in pq.read_table(out / "x.parquet").column("caption").to_pylist()
    assert cli("export", "jsonl", out / "x.jsonl", "--db", db).exit_code == 0
    assert "firstsecond" in (out / "x.jsonl").read_text()
    assert cli("export", "kohya", out / "k.jsonl", "--db", db).exit_code == 0
    assert "firstsecond" in (out / "k.jsonl").read_text()
    assert cli("export", "captions", "--db", db).exit_code == 0
    assert (data / "a.txt").read_text() == "firstsecond"


def test_the_guard_records_an_unforeseen_error_as_the_samples_problem(tmp_path, cli, gen, monkeypatch,
                                                                      sample_files):
    data = tmp_path / "data"
    for key in ("a", "b", "c"):
        sample_files.pair(data, key, size=(64, 48))
    write_tar(data / "s.tar", [*pair_members(gen, "m"), *pair_members(gen, "n")])
    real = read.build_sample

    def flaky(key, *args, **kwargs):
        if key in ("b", "m"):
            raise ValueError(f"something odd about {key}")
        return real(key, *args, **kwargs)

    monkeypatch.setattr(read, "build_sample", flaky)
    monkeypatch.setattr(shards, "build_sample", flaky)
    db = tmp_path / "db.sqlite"
    result = cli("index", data, "--db", db, "--workers", "1", "--json")
    assert result.exit_code == 0 and "unexpected" not in result.stderr
    found = samples(db)
    assert {key: row["status"] for key, row in found.items()} == {
        "a": "ok", "b": "read_failed", "c": "ok", "m": "read_failed", "n": "ok"}
    assert "b.json, b.png: reading failed (ValueError: something odd about b); " in found["b"]["error"]
    assert "s.tar:m.json, s.tar:m.png: reading failed" in found["m"]["error"]

    # the next run reads the failed loose sample again, and it is ok once reading works
    monkeypatch.setattr(read, "build_sample", real)
    rerun = json.loads(cli("index", data, "--db", db, "--workers", "1", "--json").output)
    assert (rerun["changed"], samples(db)["b"]["status"]) == (1, "ok")
    os.unlink(data / "b.json")
    os.unlink(data / "b.png")
    assert json.loads(cli("index", data, "--db", db, "--json").output)["removed"] == 1
    assert "b" not in samples(db)


def test_the_environment_failing_still_stops_the_run(tmp_path, cli, gen, monkeypatch, sample_files):
    data = tmp_path / "data"
    for key in ("a", "b"):
        sample_files.pair(data, key, size=(64, 48))

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(read, "build_sample", full_disk)
    result = cli("index", data, "--db", tmp_path / "db.sqlite", "--workers", "1")
    assert result.exit_code != 0 and "No space left on device" in result.stderr


def test_a_reader_process_killed_locally_stops_the_run_instead_of_failing_every_sample(
        tmp_path, cli, gen, monkeypatch, sample_files):
    data = tmp_path / "data"
    for i in range(40):
        sample_files.pair(data, f"k{i:02d}", size=(64, 48))

    def killed(*_args, **_kwargs):
        os._exit(9)  # the reader process dies (out of memory, say): the environment, not the data

    monkeypatch.setattr(read, "build_sample", killed)  # the forked readers inherit it
    result = cli("index", data, "--db", tmp_path / "db.sqlite", "--workers", "2")
    assert result.exit_code != 0
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        assert conn.execute("SELECT count(*) FROM samples WHERE status = 'read_failed'").fetchone() == (0,)
    finally:
        conn.close()
