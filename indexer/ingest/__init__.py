"""The ingest: files (loose, or members of tar shards) into sample rows.

walk.py lists a root, scan.py diffs it against the stored records, read.py reads a key's files,
pipeline.py is the one write path (reader processes in, sorted batches out) that index.py,
shards.py and the `extract` package write through, and run.py is the one lifecycle of a writing
run (`index`, `extract`, `watch`): the writer lock, the dataset row and its `runs` row.
"""
