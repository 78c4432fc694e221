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
    file_size INTEGER,                -- size and mtime of the output file when written, so a file
    file_mtime_ns INTEGER,            -- replaced or edited since is never taken as up to date
    summary TEXT,                     -- JSON: the export's counts (excluded by reason, ...)
    UNIQUE (dataset, kind, path)
);

-- One row per caption .txt file that `export captions` wrote (or adopted), so reruns write only
-- what changed, delete only their own files, and never touch a user's own .txt. size + mtime_ns
-- are the file's as written: a file that no longer matches them was edited by someone else.
CREATE TABLE caption_files (
    dataset TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    path TEXT NOT NULL,               -- .txt path relative to the dataset root, '/'-separated
    sample_key TEXT NOT NULL,
    caption_hash TEXT NOT NULL,       -- hash of the caption text written
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (dataset, path)
) WITHOUT ROWID;
