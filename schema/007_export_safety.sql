-- An export that could not write everything it meant to (caption files in a folder it may not
-- write, ...) records how many files failed; such an export is never current, so `stats`, `report`
-- and `export_status` say "export again", and the next run retries what failed.
ALTER TABLE exports ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;

DROP VIEW export_status;

-- Each recorded export and whether it needs doing again: the data changed after it was made, or
-- some of its files could not be written.
CREATE VIEW export_status AS
SELECT
    e.dataset, e.kind, e.path, e.rows, e.exported_at,
    e.data_version AS export_version, d.data_version AS data_version,
    e.data_version < d.data_version OR e.failed > 0 AS stale,
    e.failed
FROM exports AS e
JOIN datasets AS d ON d.id = e.dataset;

-- The few ok samples that carry a warning (`indexer problems --warnings`), without reading the rest.
CREATE INDEX samples_warning ON samples (dataset, key) WHERE warning IS NOT NULL;
