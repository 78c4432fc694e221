"""`indexer stats` and `indexer problems` against hand-built databases with known figures."""

from __future__ import annotations

import json
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer import store
from indexer.errors import IndexerError
from indexer.ingest.index import index_root
from indexer.inspect import problems, stats
from indexer.render.stats import format_stats

SAMPLES = [
    # key, ext, width, height, status, source, short, long, file md5, pil md5
    ("a", "png", 1024, 1024, "ok", "chan", "x" * 10, "y" * 300, "f1", "p1"),
    ("b", "png", 1024, 1024, "ok", "chan", "x" * 20, "y" * 700, "f1", "p1"),
    ("c", "jpg", 1792, 1024, "ok", "reddit", "x" * 60, "y" * 90, "f1", "p2"),
    ("d", "JPEG", 512, 512, "ok", "reddit", "", None, "f2", "p2"),
    ("e", "png", 2048, 2048, "ok", None, "x" * 5, "y" * 5, "f3", None),
    ("f", None, 640, 480, "missing_image", "chan", "x" * 10, "y" * 10, "f4", "p4"),
    ("g", "png", None, None, "bad_json", None, None, None, None, None),
    ("h", "webp", 1000, 3000, "ok", "twitter", "x" * 100, "y" * 2500, "f5", "p5"),
]


def build(db, rows=SAMPLES, dataset="d1"):
    conn = store.connect(db)
    with store.transaction(conn):
        conn.execute("INSERT INTO datasets (id, root, created_ns, data_version) VALUES (?, ?, 0, 3)",
                     (dataset, f"/data/{dataset}"))
        for key, ext, w, h, status, source, short, long, fh, ph in rows:
            meta = None if status == "bad_json" else orjson.dumps(
                {"source": source, "short_caption": short, "long_caption": long, "md5_file_hash": fh,
                 "md5_pil_hash": ph}).decode()
            conn.execute(
                "INSERT INTO samples (dataset, key, image_ext, json_ext, width, height, status, meta)"
                " VALUES (?, ?, ?, 'json', ?, ?, ?, ?)", (dataset, key, ext, w, h, status, meta))
    return conn


def test_figures_of_a_hand_built_database(tmp_path):
    db = tmp_path / "s.sqlite"
    conn = build(db)
    with store.transaction(conn):
        conn.execute("INSERT INTO runs (dataset, command, started_at, status, added, seconds)"
                     " VALUES ('d1', 'index', '2024-01-01T00:00:00', 'done', 8, 1.5)")
        for kind, version in (("parquet", 3), ("captions", 2)):
            conn.execute("INSERT INTO exports (dataset, kind, path, options, data_version, rows, exported_at)"
                         " VALUES ('d1', ?, ?, '{}', ?, 8, '2024-01-02')", (kind, f"/out/{kind}", version))
    conn.close()
    f = stats.dataset_stats(db, None)
    assert f["samples"] == 8
    assert f["status"] == {"ok": 6, "missing_image": 1, "missing_json": 0, "bad_json": 1, "bad_image": 0,
                           "read_failed": 0}
    assert f["sources"] == {"chan": 3, "reddit": 2, "(none)": 2, "twitter": 1}
    assert f["extensions"] == {"png": 4, "jpg": 1, "jpeg": 1, "(no image)": 1, "webp": 1}
    sizes = f["sizes"]
    assert (sizes["known"], sizes["unknown"], sizes["distinct"]) == (7, 1, 6)
    assert sizes["top"][0] == {"width": 1024, "height": 1024, "samples": 2}
    assert sizes["aspect"]["1:1"] == 4 and sizes["aspect"]["3:2 - 2:1"] == 1
    assert sizes["aspect"]["< 1:2"] == 1 and sizes["aspect"]["1:1 - 3:2"] == 1  # 1000x3000, 640x480
    # 1024² = 1.05 MP, 1792x1024 = 1.84 and 1000x3000 = 3.0: within 3, below 2 (512², 640x480), above 2
    assert sizes["area_rules"] == {"min_megapixels": 0.75, "max_megapixels": 2.0, "below": 2,
                                   "within": 3, "above": 2, "unknown": 1}
    assert sum(sizes["megapixels"].values()) == 7 and sizes["megapixels"][">= 4"] == 1
    short = f["captions"]["short_caption"]
    assert (short["present"], short["missing"], short["empty"]) == (7, 1, 1)
    assert (short["min"], short["max"], short["p50"]) == (0, 100, 10)
    assert short["mean"] == round((10 + 20 + 60 + 0 + 5 + 10 + 100) / 7, 1)
    long = f["captions"]["long_caption"]
    assert (long["present"], long["missing"], long["max"]) == (6, 2, 2500)
    assert long["histogram"][">= 2400"] == 1 and long["histogram"]["200 - 399"] == 1
    assert f["duplicates"]["file_hash"] == {"groups": 1, "samples": 3, "extra": 2}
    assert f["duplicates"]["pil_hash"] == {"groups": 2, "samples": 4, "extra": 2}
    assert [r["added"] for r in f["runs"]] == [8]
    assert {e["kind"]: e["stale"] for e in f["exports"]} == {"parquet": False, "captions": True}
    text = format_stats(f)
    assert "STALE" in text and "within 3" in text and "chan" in text


def test_hash_prefix_collisions_are_not_duplicates(tmp_path):
    """Same first 12 hex digits, different hashes: a candidate the full hash rejects."""
    rows = [(k, "png", 8, 8, "ok", "s", "c", "c", fh, None)
            for k, fh in (("a", "0123456789ab-one"), ("b", "0123456789ab-two"), ("c", "0123456789ab-one"))]
    conn = build(tmp_path / "p.sqlite", rows)
    got = stats.duplicate_figures(conn, "d1", "md5_file_hash")
    view = conn.execute("SELECT md5_file_hash, samples, keys FROM duplicates_by_file_hash").fetchall()
    conn.close()
    assert got == {"groups": 1, "samples": 2, "extra": 1}
    assert view == [("0123456789ab-one", 2, '["a","c"]')]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hashes=st.lists(st.sampled_from(["aa", "bb", "cc", "dd", None, ""]), min_size=1, max_size=30))
def test_duplicates_match_a_counter(tmp_path_factory, hashes):
    rows = [(f"k{i}", "png", 8, 8, "ok", "s", "c", "c", h, h) for i, h in enumerate(hashes)]
    conn = build(tmp_path_factory.mktemp("h") / "h.sqlite", rows)
    got = stats.duplicate_figures(conn, "d1", "md5_file_hash")
    conn.close()
    counts = Counter(h for h in hashes if h)
    shared = [n for n in counts.values() if n > 1]
    assert got == {"groups": len(shared), "samples": sum(shared), "extra": sum(shared) - len(shared)}


def test_stats_of_an_indexed_folder_match_its_files(tmp_path, gen, cli):
    root = tmp_path / "data"
    made = gen.make_dataset(root, 60, faults=0.3, seed=5)
    db = tmp_path / "i.sqlite"
    index_root(db, root, workers=1)
    result = cli("stats", "--db", db, "--json")
    f = json.loads(result.stdout)
    images = [p for p in root.iterdir() if p.suffix != ".json"]
    jsons = {p.stem for p in root.glob("*.json")}
    assert f["samples"] == len({p.stem for p in root.iterdir()})
    assert f["status"]["missing_json"] == made.get("no_json", 0) == len({p.stem for p in images} - jsons)
    assert f["status"]["missing_image"] == made.get("no_image", 0)
    ext_counts = Counter(p.suffix[1:].lower() for p in images)
    assert {k: v for k, v in f["extensions"].items() if k != "(no image)"} == dict(ext_counts)
    assert f["runs"][0]["added"] == f["samples"]
    assert cli("stats", "--db", db).stdout.startswith("dataset data (")


def test_problems_lists_every_non_ok_sample_with_its_file(tmp_path, cli):
    db = tmp_path / "s.sqlite"
    build(db).close()
    listed = list(problems.list_problems(db))
    assert [(p["key"], p["status"], p["file"]) for p in listed] == [
        ("f", "missing_image", "f.json"), ("g", "bad_json", "g.json")]
    assert listed[0]["path"] == "/data/d1/f.json"
    only = cli("problems", "--db", db, "--status", "bad_json", "--json")
    assert [json.loads(line)["key"] for line in only.stdout.splitlines()] == ["g"]
    bad = cli("problems", "--db", db, "--status", "nonsense")
    assert bad.exit_code == 2
    with pytest.raises(IndexerError, match="unknown --status"):
        list(problems.list_problems(db, statuses=["ok"]))


def test_several_datasets_need_an_id(tmp_path, cli):
    db = tmp_path / "m.sqlite"
    build(db).close()
    build(db, SAMPLES[:2], dataset="d2").close()
    result = cli("stats", "--db", db)
    assert result.exit_code == 1 and "--id" in result.stderr
    assert json.loads(cli("stats", "--db", db, "--id", "d2", "--json").stdout)["samples"] == 2
