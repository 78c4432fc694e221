"""A seeded mutator over small tar shards and JSON sidecars: whatever the damage, `index` and its
rerun finish (exit 0, never "unexpected"), a valid shard beside the damaged one is fully recorded,
every sample before the damage point is kept, and `extract` refuses what `index` refused.

INDEXER_FUZZ_SEEDS=N runs more seeds (the suite runs a few dozen, a couple of seconds each batch).
"""

from __future__ import annotations

import io
import json
import os
import random
import sqlite3
import tarfile
from pathlib import Path

import pytest

from indexer.extract import extract_shards
from indexer.ingest import tar_policy

SEEDS = int(os.environ.get("INDEXER_FUZZ_SEEDS", "40"))
FORMATS = (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT)
FIELDS = ((0, 100), (100, 108), (124, 136), (136, 148), (148, 156), (156, 157), (157, 257), (257, 265),
          (345, 500))  # name, mode, size, mtime, checksum, type, link name, magic+version, prefix
ODD_BYTES = (b"8", b"9", b" ", b"-", b"+", b"\x80", b"\xff", b"\x00", b"/", b"..", b"7" * 12)
ODD_PAX = (b"mtime=1e10", b"mtime=99999999999999999999", b"mtime=-99999999999999999999.5",
           b"size=99999999999999999999", b"size=-5", b"size=x", b"path=../up.json", b"path=/abs.json",
           b"path=", b"linkpath=elsewhere", b"GNU.sparse.major=1", b"mtime=12.5.5")
ODD_JSON = (lambda: "[" * 300 + "]" * 300, lambda: '{"short_caption": "a\\u0000b"}',
            lambda: '{"width": 1e400}', lambda: '{"short_caption": "\\ud800"}',
            lambda: '{"width": 123456789012345678901234567890}', lambda: '{"a": ' + "[" * 2000,
            lambda: "\ufeff{}", lambda: "")
SHARED_REASONS = (tar_policy.NUL_IN_NAME, tar_policy.ABSOLUTE, tar_policy.PARENT, tar_policy.SPARSE,
                  tar_policy.NO_NAME, tar_policy.NOT_UTF8, tar_policy.ONLY_FILES)


pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled


def sidecar(rng: random.Random, key: str) -> bytes:
    if rng.random() < 0.3:
        return rng.choice(ODD_JSON)().encode("utf-8", "surrogatepass")
    text = json.dumps({"width": 64, "height": 48, "short_caption": f"caption of {key}"})
    if rng.random() < 0.2:
        at = rng.randrange(len(text))
        text = text[:at] + rng.choice(["\x00", "}", '"', "\\", "9" * 30]) + text[at + 1:]
    return text.encode()


def build_tar(rng: random.Random, gen, prefix: str) -> tuple[bytes, list[tuple[str, int, int]]]:
    """A valid tar of four pairs, and each member's (name, header offset, end of its data)."""
    buffer = io.BytesIO()
    spans = []
    with tarfile.open(fileobj=buffer, mode="w", format=rng.choice(FORMATS)) as tar:
        for i in range(4):
            key = f"{prefix}{i}"
            for name, data in ((f"{key}.json", sidecar(rng, key)), (f"{key}.png", gen.png_bytes(64, 48))):
                start = buffer.tell()
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_700_000_000 + i
                tar.addfile(info, io.BytesIO(data))
                spans.append((name, start, buffer.tell()))
    return buffer.getvalue(), spans


def mutate(rng: random.Random, data: bytes, spans: list[tuple[str, int, int]]) -> tuple[bytes, int]:
    """The damaged tar and the offset of its first changed byte."""
    raw = bytearray(data)
    kind = rng.choice(("field", "field", "flip", "truncate", "pax"))
    header = rng.choice(spans)[1]
    if kind == "field":
        start, stop = rng.choice(FIELDS)
        at = header + rng.randrange(start, stop)
        odd = rng.choice(ODD_BYTES)
        raw[at:at + len(odd)] = odd
        return bytes(raw[:len(data)]), at
    if kind == "flip":
        spots = sorted(rng.randrange(len(raw)) for _ in range(rng.randint(1, 4)))
        for spot in spots:
            raw[spot] = rng.randrange(256)
        return bytes(raw), spots[0]
    if kind == "truncate":
        cut = rng.randrange(len(raw))
        return bytes(raw[:cut]), cut
    body = pax_record(rng.choice(ODD_PAX))
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = rng.choice((tarfile.XHDTYPE, tarfile.XGLTYPE)), len(body)
    block = info.tobuf(tarfile.USTAR_FORMAT) + body + b"\0" * (-len(body) % 512)
    return bytes(raw[:header]) + block + bytes(raw[header:]), header


def pax_record(pair: bytes) -> bytes:
    """`LEN key=value\n`, where LEN counts its own digits too."""
    length = len(pair) + 2
    length += len(str(length + len(str(length))))
    return f"{length} ".encode() + pair + b"\n"


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("batch", range(4))
def test_no_damage_ends_a_run(tmp_path: Path, cli, gen, batch: int) -> None:
    for seed in range(batch, SEEDS, 4):
        check_seed(tmp_path / f"seed{seed}", cli, gen, seed)


def check_seed(folder: Path, cli, gen, seed: int) -> None:
    rng = random.Random(seed)
    data = folder / "data"
    (data / "loose").mkdir(parents=True)
    good, _spans = build_tar(rng, gen, "g")
    (data / "a_good.tar").write_bytes(good)
    clean, spans = build_tar(rng, gen, "b")
    bad, damage_at = mutate(rng, clean, spans)
    (data / "b_bad.tar").write_bytes(bad)
    for i in range(3):
        (data / "loose" / f"l{i}.json").write_bytes(sidecar(rng, f"l{i}"))
        (data / "loose" / f"l{i}.png").write_bytes(gen.png_bytes(64, 48))
    db = folder / "db.sqlite"
    context = f"seed {seed}, damage at byte {damage_at}"

    for _run in range(2):
        result = cli("index", data, "--db", db, "--workers", "1", "--json")
        assert result.exit_code == 0, (context, result.stderr)
        assert "unexpected" not in result.stderr + result.output, context
    recorded = {key: shard for key, shard in rows(db, "SELECT key, shard FROM samples")}
    assert {f"g{i}" for i in range(4)} <= recorded.keys(), context
    assert all(recorded[f"g{i}"] == "a_good.tar" for i in range(4)), context
    assert {f"loose/l{i}" for i in range(3)} <= recorded.keys(), context
    before = {name.rsplit(".", 1)[0] for name, _start, end in spans if end <= damage_at}
    assert before <= recorded.keys(), (context, before - recorded.keys())

    [(refusals,)] = rows(db, "SELECT refusals FROM tar_shards WHERE path = 'b_bad.tar'")
    indexed = {tuple(pair) for pair in json.loads(refusals or "[]")}
    summary = extract_shards(folder / "x.sqlite", [data / "b_bad.tar"], folder / "out", workers=1)
    extracted = {(r["member"], r["reason"]) for r in summary["refusals"]}
    assert indexed <= extracted, (context, indexed - extracted)
    for _member, reason in extracted - indexed:  # extract's own: names it would make a path of
        assert not any(shared in reason for shared in SHARED_REASONS), (context, reason)
