"""The ingest: files (loose, or members of tar shards) into sample rows."""
