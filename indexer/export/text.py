"""Human lines for export summaries, shared by `indexer export` and `indexer watch`.

Kept free of pyarrow and the export code, so `watch` can format results without loading them.
"""

from __future__ import annotations


def counts_text(counts: dict[str, int]) -> str:
    """`reason 1,234, other 5` (or `none`)."""
    return ", ".join(f"{reason} {count:,}" for reason, count in counts.items()) or "none"


def excluded_text(excluded: dict[str, int]) -> str:
    return "excluded: " + counts_text(excluded)


def file_head(summary: dict, *, timed: bool = True) -> str:
    """parquet / jsonl: what was written, or that nothing had to be."""
    if summary["up_to_date"]:
        return f"{summary['path']} is up to date ({summary['rows']:,} rows); nothing written"
    took = f" in {summary['seconds']:.1f} s" if timed else ""
    return f"wrote {summary['rows']:,} rows to {summary['path']}{took}"


def caption_counts(summary: dict, *, extras: bool = True) -> str:
    """The counts of an `export captions` run; `extras` adds files left alone and failures."""
    text = (f"written {summary['written']:,} (overwritten {summary['overwritten']:,})  unchanged "
            f"{summary['unchanged']:,}  adopted {summary['adopted']:,}  removed {summary['removed']:,}")
    if not extras:
        return text
    if summary["left_alone"]:
        text += f"  left alone {summary['left_alone']:,}"
    if summary["failed"]:
        text += f"  FAILED {summary['failed']:,}"
    return text


def result_line(kind: str, result: object) -> str:
    """One line for an export result: the export's own words, never a raw dict."""
    if not isinstance(result, dict):
        return str(result)
    try:
        if kind == "captions":
            return f"{result['rows']:,} captions under {result['root']}; {caption_counts(result)}"
        if "up_to_date" in result:
            return f"{file_head(result, timed=False)}; {excluded_text(result.get('excluded') or {})}"
    except KeyError:  # an injected exporter's own result
        pass
    return ", ".join(f"{name} {value}" for name, value in result.items())
