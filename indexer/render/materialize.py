"""The human summary of a `materialize` run, and its problem lines for stderr."""

from __future__ import annotations

from indexer.render.runs import REFUSALS_SHOWN, dataset_line, engine_lines, human_bytes, problems_line


def format_materialize_summary(summary: dict) -> str:
    problems = summary.get("problems") or {}
    return "\n".join([
        dataset_line(summary),
        f"  from {summary['source']} ({summary['source_root']}): {summary['selected']:,} selected,"
        f" {summary['fetched']:,} fetched, {summary['in_place']:,} already in place,"
        f" {summary['failed_count']:,} failed, {summary['refused_count']:,} file(s) refused",
        f"  {summary['files_written']:,} files written ({human_bytes(summary['bytes_written'])});"
        f" {human_bytes(summary['fetched_bytes'])} read in {summary['requests']:,} reads",
        f"  samples added {summary['added']:,}  changed {summary['changed']:,}",
        problems_line(problems),
        *engine_lines(summary),
    ])


def materialize_problem_lines(summary: dict) -> list[str]:
    """Refused files and samples not fetched, one line each (the first few), for stderr."""
    lines = [f"refused: {r['file']!r}: {r['reason']}" for r in summary["refused"][:REFUSALS_SHOWN]]
    if summary["refused_count"] > REFUSALS_SHOWN:
        lines.append(f"refused: ... and {summary['refused_count'] - REFUSALS_SHOWN:,} more (see --json)")
    lines += [f"not fetched: {f['key']}: {f['error']}" for f in summary["failed"][:REFUSALS_SHOWN]]
    if summary["failed_count"] > REFUSALS_SHOWN:
        lines.append(f"not fetched: ... and {summary['failed_count'] - REFUSALS_SHOWN:,} more (see --json);"
                     " run materialize again to retry them")
    return lines
