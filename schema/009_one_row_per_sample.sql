-- One row per sample: the stat records of a sample's files move into its `samples` row, so a first
-- index writes one row a sample instead of three (the `files` B-tree inserts were a quarter of its
-- writer's time). A rerun reads these few integer columns over the whole table (~0.4 s per million
-- rows from the page cache). `files` stays as a view, one row per file, for readers and queries.

-- stat signature: scan.stat_signature(size, mtime_ns, ctime_ns, inode), or -1 for a file that was
-- too young to trust when it was read (racy): -1 never matches, so it is re-read on the next run
ALTER TABLE samples ADD COLUMN json_size INTEGER;
ALTER TABLE samples ADD COLUMN json_sig INTEGER;
ALTER TABLE samples ADD COLUMN image_size INTEGER;
ALTER TABLE samples ADD COLUMN image_mtime_ns INTEGER;  -- what ai-toolkit's cache signature needs
ALTER TABLE samples ADD COLUMN image_sig INTEGER;
-- the key's other files, rare: a second image (x.png beside x.jpg) or spelling (x.JSON beside x.json),
-- as a JSON array of [ext, size, mtime_ns, sig]; NULL when there is none
ALTER TABLE samples ADD COLUMN other_files TEXT;

UPDATE samples SET
    (json_size, json_sig) = (
        SELECT f.size, CASE WHEN f.racy THEN -1 ELSE f.sig END FROM files AS f
        WHERE f.dataset = samples.dataset AND f.key = samples.key AND f.ext = samples.json_ext),
    (image_size, image_mtime_ns, image_sig) = (
        SELECT f.size, f.mtime_ns, CASE WHEN f.racy THEN -1 ELSE f.sig END FROM files AS f
        WHERE f.dataset = samples.dataset AND f.key = samples.key AND f.ext = samples.image_ext),
    other_files = (
        SELECT json_group_array(json_array(f.ext, f.size, f.mtime_ns, CASE WHEN f.racy THEN -1 ELSE f.sig END))
        FROM files AS f
        WHERE f.dataset = samples.dataset AND f.key = samples.key
          AND f.ext IS NOT samples.json_ext AND f.ext IS NOT samples.image_ext
        HAVING count(*) > 0);

DROP TABLE files;

CREATE VIEW files AS
SELECT dataset, key, json_ext AS ext, key || '.' || json_ext AS path, json_size AS size,
       NULL AS mtime_ns, json_sig AS sig, json_sig = -1 AS racy
FROM samples WHERE json_ext IS NOT NULL
UNION ALL
SELECT dataset, key, image_ext, key || '.' || image_ext, image_size, image_mtime_ns, image_sig,
       image_sig = -1
FROM samples WHERE image_ext IS NOT NULL
UNION ALL
SELECT s.dataset, s.key, o.value ->> 0, s.key || '.' || (o.value ->> 0), o.value ->> 1, o.value ->> 2,
       o.value ->> 3, (o.value ->> 3) = -1
FROM samples AS s, json_each(s.other_files) AS o
WHERE s.other_files IS NOT NULL;

-- the few samples with other files, for the rerun diff (kept by bulk runs: see derived.KEPT_INDEXES)
CREATE INDEX samples_other_files ON samples (dataset, key) WHERE other_files IS NOT NULL;
