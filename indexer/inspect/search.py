"""`indexer search TEXT`: ranked full-text search over the captions.

The FTS5 table (schema/003_query.sql) is external-content over `samples`, so caption text lives only
in `meta`; the writers keep it current through db/fts.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from indexer import media, store
from indexer.db.fts import fts_deferred, pending_count, temporary_search_index
from indexer.db.readonly import reading
from indexer.errors import IndexerError
from indexer.ingest.derived import deferred_status

DEFAULT_LIMIT = 20
# bm25 costs ~10 us a match: a word in nearly every caption ("the") would take 10 s on 1M samples.
# Past this many matches, the first RANK_CAP (in sample order) are ranked, and the user is told.
RANK_CAP = 50_000
SHORT_WEIGHT, LONG_WEIGHT = 2.0, 1.0  # a word in the short summary says more about the picture
TOKEN = re.compile(r"[^\W_]+", re.UNICODE)  # unicode61's idea of a token: letters and digits
PHRASE_OR_WORD = re.compile(r'"([^"]*)"|(\S+)')


def build_match(text: str) -> tuple[str, list[str]]:
    """User text -> (FTS5 query, phrases to check in the text).

    Words are ANDed; `word*` is a prefix; "quoted phrases" need their words (the FTS has no
    positions, detail=column) and then the phrase itself in a caption. FTS5 operators in the user's
    text are quoted away, so any text is a valid search.
    """
    terms: list[str] = []
    phrases: list[str] = []
    for phrase, word in PHRASE_OR_WORD.findall(text):
        if phrase:
            tokens = TOKEN.findall(phrase)
            terms.extend(f'"{t}"' for t in tokens)
            if len(tokens) > 1:
                phrases.append(phrase.strip())
            continue
        prefix = word.endswith("*")
        tokens = TOKEN.findall(word)
        terms.extend(f'"{t}"' for t in tokens)
        if prefix and tokens:
            terms[-1] += "*"
    if not terms:
        raise IndexerError(f"search text {text!r} has no words to look for: give at least one word")
    return " AND ".join(dict.fromkeys(terms)), phrases


def _candidates(conn: sqlite3.Connection, text: str, raw: bool, dataset: str,
                scored: bool = True, stale: bool = True) -> tuple[str, dict]:
    """SQL yielding (id, score) of every match, reading sample rows only when it must.

    Ranking touches every match, so the row is joined only to tell datasets apart (when the
    database holds several) or to check a quoted phrase; the caption columns of the hits are read
    after the LIMIT, for the few rows shown. `stale`: the FTS may hold old text of some rows
    (search_stale), as the database's own does; a temporary one holds the current text only.
    """
    match, phrases = (text, []) if raw else build_match(text)
    params: dict = {"match": match}
    score = f"bm25(samples_fts, {SHORT_WEIGHT}, {LONG_WEIGHT})" if scored else "NULL"
    several = conn.execute("SELECT count(*) > 1 FROM datasets").fetchone()[0]
    fresh = "samples_fts.rowid NOT IN (SELECT id FROM search_stale)" if stale else "1"
    if not phrases and not several:
        return (f"SELECT rowid AS id, {score} AS score FROM samples_fts WHERE samples_fts MATCH :match"
                f" AND {fresh}", params)
    clauses = ["samples_fts MATCH :match", fresh]
    if several:
        clauses.append("s.dataset = :dataset")
        params["dataset"] = dataset
    for i, phrase in enumerate(phrases):
        escaped = phrase.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params[f"p{i}"] = f"%{escaped}%"
        clauses.append(f"(s.short_caption LIKE :p{i} ESCAPE '\\' OR s.long_caption LIKE :p{i} ESCAPE '\\')")
    return (f"SELECT samples_fts.rowid AS id, {score} AS score FROM samples_fts"
            f" JOIN samples AS s ON s.id = samples_fts.rowid WHERE {' AND '.join(clauses)}", params)


def search(db_path: str | os.PathLike[str], text: str, *, dataset_id: str | None = None,
           limit: int = DEFAULT_LIMIT, raw: bool = False) -> list[dict]:
    """The best `limit` samples for text, best first, each with its image path."""
    return search_hits(db_path, text, dataset_id=dataset_id, limit=limit, raw=raw)[0]


def search_hits(db_path: str | os.PathLike[str], text: str, *, dataset_id: str | None = None,
                limit: int = DEFAULT_LIMIT, raw: bool = False,
                rank_cap: int | None = None, progress: bool = False) -> tuple[list[dict], bool]:
    """(hits, capped): capped means more than rank_cap samples matched and only the first
    rank_cap of them were ranked (add words to narrow the search).

    Only reads: while the database's FTS awaits its build, the search runs on a temporary one
    (db/fts.py), with the same answers; `search_state` says so.
    """
    rank_cap = RANK_CAP if rank_cap is None else rank_cap
    with _searchable(db_path, dataset_id, progress) as (conn, dataset, root, own):
        unscored, params = _candidates(conn, text, raw, dataset, scored=False, stale=own)
        params["cap"] = rank_cap
        capped = _run(conn, text, raw, f"SELECT count(*) FROM ({unscored} LIMIT :cap + 1)",
                      params)[0][0] > rank_cap
        candidates, params = _candidates(conn, text, raw, dataset, stale=own)
        params.update(limit=limit, cap=rank_cap)
        first = f"SELECT * FROM ({candidates} LIMIT :cap)" if capped else candidates
        rows = _run(conn, text, raw, f"""
            SELECT s.id, s.key, s.image, s.json, s.status, s.short_caption, top.score
            FROM ({first} ORDER BY score LIMIT :limit) AS top
            JOIN samples AS s ON s.id = top.id ORDER BY top.score""", params)
    return [_hit(root, row) for row in rows], capped


def count_matches(db_path: str | os.PathLike[str], text: str, *, dataset_id: str | None = None,
                  raw: bool = False) -> int:
    with _searchable(db_path, dataset_id) as (conn, dataset, _root, own):
        candidates, params = _candidates(conn, text, raw, dataset, stale=own)
        return _run(conn, text, raw, f"SELECT count(*) FROM ({candidates})", params)[0][0]


@contextlib.contextmanager
def _searchable(db_path: str | os.PathLike[str], dataset_id: str | None, progress: bool = False
                ) -> Iterator[tuple[sqlite3.Connection, str, Path, bool]]:
    """(connection, dataset, root, own): the database's read-only connection when its FTS is
    built (own), else one on a temporary FTS of the same captions (db/fts.py)."""
    with reading(db_path) as conn:
        dataset, root = store.resolve_dataset(conn, dataset_id)
        if not fts_deferred(conn):
            yield conn, dataset, root, True
            return
        samples = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    with temporary_search_index(db_path, samples, progress) as temp:
        yield temp, dataset, root, False


def search_status(db_path: str | os.PathLike[str]) -> int | None:
    """Samples not searchable yet (an index run is going on, or one was killed before its end);
    None when the whole full-text index awaits its build (searches then use a temporary one)."""
    state = search_state(db_path)
    return None if state["derived"] else state["pending"]


def search_state(db_path: str | os.PathLike[str]) -> dict:
    """What a search's notes say about the index: `pending` samples not searchable yet, and
    `derived` (ingest/derived.py's deferred_status, with `read_only`) when the FTS awaits its
    build and searches run on a temporary copy."""
    with reading(db_path) as conn:
        deferred = deferred_status(conn) if fts_deferred(conn) else None
        pending = pending_count(conn)
    if deferred is not None:
        deferred["read_only"] = media.read_only_reason(db_path)
    return {"pending": 0 if deferred else pending, "derived": deferred}


def _run(conn: sqlite3.Connection, text: str, raw: bool, sql: str, params: dict) -> list[tuple]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if raw:
            raise IndexerError(
                f"{text!r} is not a valid FTS5 query ({exc}); see https://sqlite.org/fts5.html#"
                "full_text_query_syntax, or drop --raw to search for the words as typed") from exc
        raise IndexerError(f"search failed: {exc}") from exc


def _hit(root: Path, row: tuple) -> dict:
    sample_id, key, image, json_path, status, short_caption, score = row
    return {
        "id": sample_id, "key": key, "score": -score, "status": status,
        "image": image, "path": str(root / image) if image else None, "json": json_path,
        "short_caption": short_caption,
    }
