"""The reading commands' computations: stats figures, problem samples, full-text search and
read-only SQL. Each returns data (dicts, rows); indexer/render turns it into text or HTML."""
