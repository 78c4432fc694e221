-- Tar shards that `indexer extract` unpacked into a dataset root, so a rerun skips finished ones
-- and redoes from the start any shard a killed run left half-way.

CREATE TABLE shards (
    dataset TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    path TEXT NOT NULL,               -- absolute, resolved path of the tar file
    size INTEGER NOT NULL,            -- size and mtime_ns of the tar when it was extracted:
    mtime_ns INTEGER NOT NULL,        --   a shard replaced by another file is extracted again
    status TEXT NOT NULL CHECK (status IN ('extracting', 'finished', 'failed')),
    staging TEXT NOT NULL,            -- its staging folder under the root (.indexer-...), while extracting
    members INTEGER,                  -- members written into the root (files and folders)
    refused INTEGER,                  -- unsafe members refused (links, devices, escaping names...)
    refusals TEXT,                    -- JSON list of [member name, reason]
    error TEXT,                       -- why a failed shard stopped (damaged or unreadable archive)
    started_at TEXT NOT NULL,         -- ISO 8601 UTC
    finished_at TEXT,                 -- NULL until the shard's samples are recorded
    PRIMARY KEY (dataset, path)
) WITHOUT ROWID;
