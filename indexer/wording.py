"""Wording shared by messages and summaries of every stage (kept free of any other indexer module)."""

from __future__ import annotations

from collections.abc import Mapping


def counts_text(counts: Mapping[str, int]) -> str:
    """`reason 1,234, other 5` (or `none`)."""
    return ", ".join(f"{reason} {count:,}" for reason, count in counts.items()) or "none"
