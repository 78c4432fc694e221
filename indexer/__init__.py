"""indexer: an incremental SQLite index of image+caption samples, and the exports trainers consume."""

__version__ = "0.1.0"
