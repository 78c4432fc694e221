-- The total size of a dataset's JSON files, kept by `index` so a rerun with nothing changed need not
-- sum two million file records to report the database size against it.
ALTER TABLE datasets ADD COLUMN json_bytes INTEGER;
