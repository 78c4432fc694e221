-- Shards and samples that live in a bucket, on the Hub or behind HTTPS URLs (`indexer index URL`).
-- An object's version (its ETag, version id, or the Hub's LFS sha256) decides "changed" with its
-- size and last-modified time, all taken from the listing; local shards keep NULL here (their size,
-- mtime_ns, ctime_ns and inode decide, as before). For a remote shard, ctime_ns and inode are 0.
ALTER TABLE tar_shards ADD COLUMN version TEXT;
-- What reading the shard took, for the run summaries: range requests and bytes fetched (NULL for
-- shards read before this column existed).
ALTER TABLE tar_shards ADD COLUMN requests INTEGER;
ALTER TABLE tar_shards ADD COLUMN bytes_read INTEGER;
