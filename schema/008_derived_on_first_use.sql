-- Derived structures are built when first asked for, not on a first index's critical path.
-- A bulk write drops the secondary indexes of `samples` and the full-text search triggers, keeping
-- their SQL here; the first `stats`, `search` or `report` (or a running `watch`, once caught up)
-- builds them again: indexes in one sorted pass each, the FTS with one 'rebuild' from the samples.
-- The SQL is copied from sqlite_schema, so the definitions still live only in 001-003.
ALTER TABLE deferred_indexes RENAME TO deferred_structures;
ALTER TABLE deferred_structures ADD COLUMN type TEXT NOT NULL DEFAULT 'index';  -- index | trigger
