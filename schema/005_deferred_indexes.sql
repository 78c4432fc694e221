-- Secondary indexes of `samples` that a bulk index run dropped, to build them again in one sorted
-- pass when it ends (much cheaper than a million random index inserts). A run killed in between
-- leaves them here and the next run builds them first. The SQL is copied from sqlite_schema, so
-- the index definitions still live only in the schema files.
CREATE TABLE deferred_indexes (
    name TEXT PRIMARY KEY,
    sql TEXT NOT NULL
);
