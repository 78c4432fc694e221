-- Query, stats, search and report: full-text search over the captions, a few narrow indexes that
-- keep `indexer stats` under 2 s on 1M samples, and views for the questions people ask most.
-- Sizes measured on a 30k-sample make_sample.py database (bytes per sample, see README "Query").

-- Full-text search over the captions. External content: the text stays in samples.meta and is
-- read back through the generated columns, so it is stored once. detail=column (not full) halves
-- the FTS size (~140 vs ~280 B a sample) and keeps the database under 1.5x the JSON bytes; the price
-- is no positions, so `indexer search` checks quoted phrases against the caption text itself.
CREATE VIRTUAL TABLE samples_fts USING fts5(
    short_caption, long_caption,
    content="samples", content_rowid = 'id',  -- spelled so sqlite-utils finds it
    detail = column, tokenize = 'unicode61 remove_diacritics 2'
);

-- Sample ids whose captions are not in samples_fts yet. Tokenizing row by row in an AFTER INSERT
-- trigger made a first `index` run 1.7x slower; recording the id is nearly free, and
-- search.sync_search_index() (called at the end of every index/watch/extract update) adds the
-- pending rows with one INSERT ... SELECT, about 3x cheaper than the trigger.
CREATE TABLE search_pending (id INTEGER PRIMARY KEY);

CREATE TRIGGER samples_fts_insert AFTER INSERT ON samples BEGIN
    -- not INSERT OR IGNORE: an UPSERT's own conflict policy overrides the one of a trigger statement
    INSERT INTO search_pending (id) SELECT new.id
    WHERE NOT EXISTS (SELECT 1 FROM search_pending WHERE id = new.id);
END;

-- Deletes and caption changes are rare: they take the old text out of the FTS at once (only the
-- old values can do that, and they are gone after the statement), unless it never got there.
CREATE TRIGGER samples_fts_delete AFTER DELETE ON samples BEGIN
    INSERT INTO samples_fts (samples_fts, rowid, short_caption, long_caption)
    SELECT 'delete', old.id, old.short_caption, old.long_caption
    WHERE NOT EXISTS (SELECT 1 FROM search_pending WHERE id = old.id);
    DELETE FROM search_pending WHERE id = old.id;
END;

-- Only a change of caption text re-tokenizes: a touched file whose captions did not change costs
-- nothing here.
CREATE TRIGGER samples_fts_update AFTER UPDATE OF meta ON samples
WHEN old.short_caption IS NOT new.short_caption OR old.long_caption IS NOT new.long_caption BEGIN
    INSERT INTO samples_fts (samples_fts, rowid, short_caption, long_caption)
    SELECT 'delete', old.id, old.short_caption, old.long_caption
    WHERE NOT EXISTS (SELECT 1 FROM search_pending WHERE id = old.id);
    -- not INSERT OR IGNORE: an UPSERT's own conflict policy overrides the one of a trigger statement
    INSERT INTO search_pending (id) SELECT new.id
    WHERE NOT EXISTS (SELECT 1 FROM search_pending WHERE id = new.id);
END;

-- A database indexed before this file existed gets its FTS filled once here.
INSERT INTO samples_fts (samples_fts) VALUES ('rebuild');

-- Narrow indexes read instead of the ~1.5 KB sample rows: `stats` groups over them without touching
-- the table (SQLite reads an indexed expression from the index itself).
-- sources, image sizes and extensions (~30 B a sample)
CREATE INDEX samples_shape ON samples (dataset, source, width, height, image_ext);
-- caption lengths in characters, one index each: SQLite reads only the leading expression of an
-- index without visiting the row (~18 B a sample each)
CREATE INDEX samples_short_chars ON samples (dataset, length(short_caption));
CREATE INDEX samples_long_chars ON samples (dataset, length(long_caption));
-- Duplicates: the first 12 hex digits of each hash find candidates (48 bits: ~0.002 false pairs in
-- 1M samples), the full hash confirms them; ~28 B a sample each instead of ~49 for the whole hash.
-- Queries group by the prefix but output min(id), never the prefix itself: an output expression
-- would be recomputed from the row (a seek and a JSON parse) for every group.
CREATE INDEX samples_file_hash ON samples (dataset, substr(md5_file_hash, 1, 12));
CREATE INDEX samples_pil_hash ON samples (dataset, substr(md5_pil_hash, 1, 12));

-- Every sample that is not ok, with the file to look at and the error (what is wrong, what to do).
CREATE VIEW problems AS
SELECT
    dataset, key, status,
    CASE WHEN status IN ('missing_json', 'bad_image') THEN image ELSE json END AS file,
    error, warning
FROM samples
WHERE status != 'ok';

-- Samples sharing the md5 of the file bytes: one row per hash, the keys as a JSON array.
CREATE VIEW duplicates_by_file_hash AS
WITH firsts AS (
    SELECT min(id) AS id
    FROM samples
    WHERE substr(md5_file_hash, 1, 12) > ''
    GROUP BY dataset, substr(md5_file_hash, 1, 12)
    HAVING count(*) > 1
), candidates AS (
    SELECT s.dataset, substr(s.md5_file_hash, 1, 12) AS prefix
    FROM firsts AS f JOIN samples AS s ON s.id = f.id
)
SELECT s.dataset, s.md5_file_hash, count(*) AS samples, json_group_array(s.key) AS keys
FROM candidates AS c
CROSS JOIN samples AS s ON s.dataset = c.dataset AND substr(s.md5_file_hash, 1, 12) = c.prefix
GROUP BY s.dataset, s.md5_file_hash
HAVING count(*) > 1;

-- Samples sharing the md5 of the decoded pixels (the same picture saved differently).
CREATE VIEW duplicates_by_pil_hash AS
WITH firsts AS (
    SELECT min(id) AS id
    FROM samples
    WHERE substr(md5_pil_hash, 1, 12) > ''
    GROUP BY dataset, substr(md5_pil_hash, 1, 12)
    HAVING count(*) > 1
), candidates AS (
    SELECT s.dataset, substr(s.md5_pil_hash, 1, 12) AS prefix
    FROM firsts AS f JOIN samples AS s ON s.id = f.id
)
SELECT s.dataset, s.md5_pil_hash, count(*) AS samples, json_group_array(s.key) AS keys
FROM candidates AS c
CROSS JOIN samples AS s ON s.dataset = c.dataset AND substr(s.md5_pil_hash, 1, 12) = c.prefix
GROUP BY s.dataset, s.md5_pil_hash
HAVING count(*) > 1;

-- Samples per source (NULL: the JSON has no source or did not parse).
CREATE VIEW source_counts AS
SELECT dataset, source, count(*) AS samples
FROM samples
GROUP BY dataset, source;

-- Each recorded export and whether the data changed after it was made.
CREATE VIEW export_status AS
SELECT
    e.dataset, e.kind, e.path, e.rows, e.exported_at,
    e.data_version AS export_version, d.data_version AS data_version,
    e.data_version < d.data_version AS stale
FROM exports AS e
JOIN datasets AS d ON d.id = e.dataset;
