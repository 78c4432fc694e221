-- What was exported where, so a rerun can say "up to date" and `stats` can flag stale exports.

CREATE TABLE exports (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,               -- parquet | captions | config | jsonl
    path TEXT NOT NULL,               -- absolute path of the output (for captions: the dataset root)
    options TEXT NOT NULL,            -- JSON of the options that shape the output
    data_version INTEGER NOT NULL,    -- datasets.data_version the output was made from
    rows INTEGER,                     -- samples exported
    exported_at TEXT NOT NULL,        -- ISO 8601 UTC
    UNIQUE (dataset, kind, path)
);

-- One row per caption .txt file that `export captions` wrote (or adopted), so reruns write only
-- what changed, delete only their own files, and never touch a user's own .txt.
CREATE TABLE caption_files (
    dataset TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    path TEXT NOT NULL,               -- .txt path relative to the dataset root, '/'-separated
    sample_key TEXT NOT NULL,
    caption_hash TEXT NOT NULL,       -- hash of the caption text written
    PRIMARY KEY (dataset, path)
) WITHOUT ROWID;
