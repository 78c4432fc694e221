"""Exports from the index: Parquet, caption .txt files, SimpleTuner's config, HF jsonl, sd-scripts'
metadata, ai-toolkit's size cache, webshart indexes and musubi-tuner's JSONL and dataset config.
`registry.py` names them all for the CLI and for watch.

Kept light (no pyarrow): `indexer watch` reads these constants without loading the exports.
"""

DEFAULT_CAPTIONS = ("short_caption",)  # the caption field every export uses unless told otherwise
# first: the first non-empty --caption field (the single caption); all: every non-empty one.
CAPTION_MODES = ("first", "all")
