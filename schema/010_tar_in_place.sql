-- Tar shards indexed in place: `indexer index ROOT` reads the `*.tar` files under ROOT by offset,
-- without extracting them. A sample whose files are members of a shard records the shard and where
-- its JSON and image data start (json_size / image_size hold their lengths); loose files keep these
-- NULL. Each shard is recorded like a file, so a rerun re-reads only new or changed shards.

ALTER TABLE samples ADD COLUMN shard TEXT;          -- the tar, relative to the root; NULL: loose files
ALTER TABLE samples ADD COLUMN json_offset INTEGER; -- byte offset of the JSON member's data in it
ALTER TABLE samples ADD COLUMN image_offset INTEGER;

CREATE TABLE tar_shards (
    dataset TEXT NOT NULL,
    path TEXT NOT NULL,               -- relative to the dataset root, '/'-separated
    size INTEGER NOT NULL,            -- size + mtime_ns + ctime_ns + inode decide "unchanged",
    mtime_ns INTEGER NOT NULL,        --   as for loose files
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    members INTEGER NOT NULL,         -- members read
    samples INTEGER NOT NULL,         -- samples it holds (keys it owns)
    refusals TEXT,                    -- JSON [[member, reason], ...]: unsafe members, never used
    duplicates TEXT,                  -- JSON [[key, other shard], ...]: keys another shard owns
    error TEXT,                       -- why reading stopped early (a damaged tar)
    indexed_at TEXT NOT NULL,         -- ISO 8601 UTC
    PRIMARY KEY (dataset, path)
) WITHOUT ROWID;

-- The loose files only: members of shards are not files (see tar_shards and samples.shard).
DROP VIEW files;
CREATE VIEW files AS
SELECT dataset, key, json_ext AS ext, key || '.' || json_ext AS path, json_size AS size,
       NULL AS mtime_ns, json_sig AS sig, json_sig = -1 AS racy
FROM samples WHERE json_ext IS NOT NULL AND shard IS NULL
UNION ALL
SELECT dataset, key, image_ext, key || '.' || image_ext, image_size, image_mtime_ns, image_sig,
       image_sig = -1
FROM samples WHERE image_ext IS NOT NULL AND shard IS NULL
UNION ALL
SELECT s.dataset, s.key, o.value ->> 0, s.key || '.' || (o.value ->> 0), o.value ->> 1, o.value ->> 2,
       o.value ->> 3, (o.value ->> 3) = -1
FROM samples AS s, json_each(s.other_files) AS o
WHERE s.other_files IS NOT NULL AND s.shard IS NULL;

CREATE INDEX samples_shard ON samples (dataset, shard, key) WHERE shard IS NOT NULL;
