-- Core schema: datasets, per-file stat records, samples, and the run log.
-- Applied once, in file-name order, tracked by PRAGMA user_version (this file = version 1).

CREATE TABLE datasets (
    id TEXT PRIMARY KEY,              -- the --id users pass (default: ROOT's folder name)
    root TEXT NOT NULL UNIQUE,        -- absolute, resolved path of ROOT
    created_ns INTEGER NOT NULL,
    data_version INTEGER NOT NULL DEFAULT 0  -- bumped by every run that changed a sample
);

-- One row per sample file seen under a root. size + mtime_ns + ctime_ns + inode decide "unchanged";
-- racy = 1 means the file was too young to trust when recorded and is re-read on the next run.
CREATE TABLE files (
    dataset TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    key TEXT NOT NULL,                -- path relative to root without extension, '/'-separated
    ext TEXT NOT NULL,                -- the extension as spelled on disk (png, JPG, json...)
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    racy INTEGER NOT NULL DEFAULT 0,
    sig INTEGER NOT NULL,             -- scan.stat_signature(size, mtime_ns, ctime_ns, inode): one
                                      -- column for the rerun diff to load instead of four
    path TEXT GENERATED ALWAYS AS (key || '.' || ext) VIRTUAL,  -- relative to root, '/'-separated
    PRIMARY KEY (dataset, key, ext)
) WITHOUT ROWID;

-- One row per sample (a path stem with a JSON and/or an image). The JSON object is kept whole in
-- `meta`; the common fields are generated columns over it so caption text is stored once.
CREATE TABLE samples (
    id INTEGER PRIMARY KEY,           -- stable rowid (FTS external content and exports key on it)
    dataset TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    image_ext TEXT,                   -- extension of the chosen image, NULL when there is none
    json_ext TEXT,                    -- extension of the JSON file, NULL when there is none
    width INTEGER,
    height INTEGER,
    size_from TEXT,                   -- 'json' or 'image'
    -- ok | missing_image | missing_json | bad_json | bad_image. No CHECK constraint: SQLite would
    -- compute every generated column on each insert to evaluate it (15% of first-run write time).
    status TEXT NOT NULL,
    error TEXT,                       -- why the status is not ok: names the file, the problem, the fix
    warning TEXT,                     -- e.g. the JSON size disagrees with the image header (--verify-images)
    meta TEXT,                        -- the whole JSON object, compact; NULL when it did not parse
    data_version INTEGER NOT NULL DEFAULT 0,  -- datasets.data_version when this row last changed
    -- image/json paths relative to root ('/'-separated) are derived, so the key is stored once.
    image TEXT GENERATED ALWAYS AS (key || '.' || image_ext) VIRTUAL,
    json TEXT GENERATED ALWAYS AS (key || '.' || json_ext) VIRTUAL,
    short_caption TEXT GENERATED ALWAYS AS (meta ->> '$.short_caption') VIRTUAL,
    long_caption TEXT GENERATED ALWAYS AS (meta ->> '$.long_caption') VIRTUAL,
    source TEXT GENERATED ALWAYS AS (meta ->> '$.source') VIRTUAL,
    md5_file_hash TEXT GENERATED ALWAYS AS (meta ->> '$.md5_file_hash') VIRTUAL,
    md5_pil_hash TEXT GENERATED ALWAYS AS (meta ->> '$.md5_pil_hash') VIRTUAL,
    image_name TEXT GENERATED ALWAYS AS (meta ->> '$.image_name') VIRTUAL,
    UNIQUE (dataset, key)
);
CREATE INDEX samples_status ON samples (dataset, status);

CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    dataset TEXT,
    command TEXT NOT NULL,            -- index | watch | extract
    started_at TEXT NOT NULL,         -- ISO 8601 UTC
    finished_at TEXT,                 -- NULL while running, or when the run was killed
    status TEXT NOT NULL DEFAULT 'running',  -- running | done | failed | interrupted
    added INTEGER, changed INTEGER, removed INTEGER, unchanged INTEGER,
    files_read INTEGER,
    problems TEXT,                    -- JSON object: count of samples by non-ok status
    seconds REAL,
    error TEXT
);
