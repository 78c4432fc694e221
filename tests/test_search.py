"""`indexer search`: the FTS follows index changes and deletions, ranking, phrases, errors."""

from __future__ import annotations

import json
import sqlite3

import pytest

from indexer import store
from indexer.db.fts import sync_search_index
from indexer.errors import IndexerError
from indexer.ingest.index import index_root
from indexer.inspect import search


def fts_keys(db, text: str) -> list[str]:
    return [hit["key"] for hit in search.search(db, text, limit=100)]


def assert_fts_in_sync(db) -> None:
    """FTS5's own check that the index matches the external content, and nothing left pending."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("INSERT INTO samples_fts (samples_fts, rank) VALUES ('integrity-check', 1)")
        assert conn.execute("SELECT count(*) FROM search_pending").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM search_stale").fetchone()[0] == 0
        assert (conn.execute("SELECT count(*) FROM samples_fts_docsize").fetchone()[0]
                == conn.execute("SELECT count(*) FROM samples").fetchone()[0])
    finally:
        conn.close()


def test_fts_follows_additions_edits_and_deletions(sample_files, data_root, db_path):
    root, db = data_root, db_path
    sample_files.pair(root, "one", short_caption="a red dragon over the castle")
    sample_files.pair(root, "two", short_caption="a blue whale", long_caption="the dragon sleeps in the deep")
    sample_files.pair(root, "three", short_caption="café in Tōkyō at night")
    sample_files.json(root, "broken", "{")
    index_root(db, root, workers=1)
    assert_fts_in_sync(db)
    assert sorted(fts_keys(db, "dragon")) == ["one", "two"]
    assert fts_keys(db, "cafe tokyo") == ["three"]  # diacritics folded
    assert fts_keys(db, "dragon")[0] == "one"  # the short caption weighs more

    sample_files.pair(root, "one", short_caption="a green meadow")  # edit: dragon gone from "one"
    (root / "two.json").unlink()  # json gone: "two" keeps its image only
    (root / "two.png").unlink()   # ... and then the whole sample
    sample_files.pair(root, "four", short_caption="dragon boat festival")
    index_root(db, root, workers=1)
    assert_fts_in_sync(db)
    assert fts_keys(db, "dragon") == ["four"]
    assert fts_keys(db, "meadow") == ["one"]
    assert fts_keys(db, "whale") == []


def test_caption_unchanged_edit_and_reindex_keep_sync(sample_files, data_root, db_path):
    root, db = data_root, db_path
    for i in range(30):
        sample_files.pair(root, f"k{i:02d}", short_caption=f"sample number{i} lighthouse")
    index_root(db, root, workers=1)
    sample_files.pair(root, "k05", short_caption="sample number5 lighthouse", width=32,
                      image=False)  # meta changes, captions do not
    index_root(db, root, workers=1)
    assert_fts_in_sync(db)
    assert len(fts_keys(db, "lighthouse")) == 30
    assert fts_keys(db, "number5") == ["k05"]


def test_rows_written_without_a_sync_wait_in_pending_until_the_next_run(sample_files, data_root, db_path):
    root, db = data_root, db_path
    sample_files.pair(root, "a", short_caption="an owl")
    index_root(db, root, workers=1)
    conn = store.connect(db)
    with store.transaction(conn):  # as a run killed after writing, before its sync
        conn.execute("INSERT INTO samples (dataset, key, json_ext, status, meta) VALUES"
                     " ('data', 'b', 'json', 'missing_image', '{\"short_caption\": \"another owl\"}')")
        conn.execute("INSERT INTO samples (dataset, key, json_ext, status, meta) VALUES"
                     " ('data', 'c', 'json', 'missing_image', '{\"short_caption\": \"gone owl\"}')")
        conn.execute("DELETE FROM samples WHERE key = 'c'")  # deleted before it was ever synced
    conn.close()
    assert search.search_status(db) == 1
    assert fts_keys(db, "owl") == ["a"]
    conn = store.connect(db)
    assert sync_search_index(conn, chunk=1) == 1
    conn.close()
    assert_fts_in_sync(db)
    assert sorted(fts_keys(db, "owl")) == ["a", "b"]


def test_phrases_prefixes_raw_queries_and_hits(sample_files, data_root, db_path, cli):
    root, db = data_root, db_path
    sample_files.pair(root, "p1", short_caption="neon city at night")
    sample_files.pair(root, "p2", short_caption="a city of neon signs")
    sample_files.pair(root, "p3", short_caption="neonatal ward")
    index_root(db, root, workers=1)
    assert fts_keys(db, '"neon city"') == ["p1"]
    assert sorted(fts_keys(db, "neon city")) == ["p1", "p2"]
    assert sorted(fts_keys(db, "neon*")) == ["p1", "p2", "p3"]
    assert fts_keys(db, 'neon AND NOT "city') == []  # operators are words here: "and", "not"
    assert sorted(h["key"] for h in search.search(db, "signs OR ward", raw=True)) == ["p2", "p3"]
    with pytest.raises(IndexerError, match="not a valid FTS5 query"):
        search.search(db, '"unbalanced', raw=True)
    with pytest.raises(IndexerError, match="no words"):
        search.search(db, "*** ---")
    result = cli("search", "neon", "--db", db, "--json", "-n", "1")
    hit = json.loads(result.stdout)
    assert hit["path"] == str(root.resolve() / f"{hit['key']}.png")
    assert hit["image"] == f"{hit['key']}.png"
    text = cli("search", "neon city", "--db", db)
    assert str(root.resolve() / "p1.png") in text.stdout
    assert "no sample matches" in cli("search", "zebra", "--db", db).stderr
    assert search.count_matches(db, "neon") == 2


def test_search_is_per_dataset(tmp_path, sample_files, db_path):
    db = db_path
    for name in ("left", "right"):
        root = tmp_path / name
        sample_files.pair(root, f"{name}_key", short_caption=f"shared word {name}")
        index_root(db, root, workers=1)
    with pytest.raises(IndexerError, match="--id"):
        search.search(db, "shared")
    assert [h["key"] for h in search.search(db, "shared", dataset_id="right")] == ["right_key"]


def test_sqlite_utils_finds_and_uses_the_fts(sample_files, data_root, db_path):
    import sqlite_utils

    root, db = data_root, db_path
    sample_files.pair(root, "u1", short_caption="a lighthouse in fog")
    sample_files.pair(root, "u2", short_caption="a meadow")
    index_root(db, root, workers=1)
    table = sqlite_utils.Database(db)["samples"]
    assert table.detect_fts() == "samples_fts"
    assert [row["key"] for row in table.search("lighthouse", columns=["key"])] == ["u1"]


def test_very_common_words_rank_only_the_first_matches(sample_files, data_root, db_path, cli, monkeypatch):
    """Ranking every match of a word in nearly every caption is slow: past the cap, say so."""
    from indexer.inspect import search as search_module

    root, db = data_root, db_path
    for i in range(12):
        words = "common word " + ("rare rare rare" if i == 9 else "filler")
        sample_files.pair(root, f"c{i:02d}", short_caption=words)
    index_root(db, root, workers=1)
    hits, capped = search_module.search_hits(db, "common", limit=3, rank_cap=5)
    assert capped and len(hits) == 3
    assert {h["key"] for h in hits} <= {f"c{i:02d}" for i in range(5)}  # the first five, ranked
    hits, capped = search_module.search_hits(db, "common", limit=3, rank_cap=50)
    assert not capped and len(hits) == 3
    ranked = search_module.search_hits(db, "rare", limit=3, rank_cap=5)
    assert ranked == (search_module.search(db, "rare", limit=3), False)
    assert [h["key"] for h in ranked[0]] == ["c09"]
    uncapped = cli("search", "common", "--db", db)
    assert uncapped.exit_code == 0 and "more than" not in uncapped.stderr
    monkeypatch.setattr(search_module, "RANK_CAP", 5)
    capped_cli = cli("search", "common", "--db", db)
    assert capped_cli.exit_code == 0 and "more than 5 samples match" in capped_cli.stderr


def test_cli_takes_unquoted_words(sample_files, data_root, db_path, cli):
    root, db = data_root, db_path
    for key, caption in (("a", "red dragon over a stone castle"), ("b", "red fox")):
        sample_files.pair(root, key, short_caption=caption)
    index_root(db, root, workers=1)
    result = cli("search", "red", "dragon", "--db", db, "--json")
    assert result.exit_code == 0
    assert [json.loads(line)["key"] for line in result.stdout.splitlines()] == ["a"]


def test_an_edited_caption_is_not_found_by_its_old_words_before_the_sync(sample_files, data_root, db_path):
    """Between a caption edit and the run's sync, the FTS still holds the old words: the row is
    left out (queued as not searchable yet), never shown for words it no longer has."""
    root, db = data_root, db_path
    sample_files.pair(root, "one", short_caption="a red dragon")
    sample_files.pair(root, "two", short_caption="another dragon")
    index_root(db, root, workers=1)
    conn = store.connect(db)
    with store.transaction(conn):  # as a run killed after writing, before its sync
        conn.execute("""UPDATE samples SET meta = json_set(meta, '$.short_caption', 'a green meadow')
                        WHERE key = 'one'""")
    conn.close()
    assert fts_keys(db, "dragon") == ["two"]
    assert fts_keys(db, "meadow") == [] and search.search_status(db) == 1
    conn = store.connect(db)
    sync_search_index(conn)
    conn.close()
    assert_fts_in_sync(db)
    assert (fts_keys(db, "dragon"), fts_keys(db, "meadow")) == (["two"], ["one"])
