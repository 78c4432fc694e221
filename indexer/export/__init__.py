"""Exports from the index: Parquet, caption .txt files, SimpleTuner's config and HF jsonl metadata."""
