"""Human-readable summaries printed at the end of a command."""

from __future__ import annotations


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def format_index_summary(summary: dict) -> str:
    lines = [
        f"dataset {summary['dataset']} ({summary['root']}): {summary['samples']:,} samples"
        f" in {summary['seconds']:.1f} s",
        f"  added {summary['added']:,}  changed {summary['changed']:,}"
        f"  removed {summary['removed']:,}  unchanged {summary['unchanged']:,}",
        f"  files seen {summary['files_seen']:,}, read {summary['files_read']:,}",
    ]
    problems = summary.get("problems") or {}
    lines += [f"  note: {note}" for note in summary.get("notes") or []]
    if problems:
        listed = ", ".join(f"{status} {count:,}" for status, count in problems.items())
        lines.append(f"  problems: {listed}  (see `indexer problems` or the samples.error column)")
    else:
        lines.append("  problems: none")
    if summary.get("json_bytes"):
        ratio = summary["db_bytes"] / summary["json_bytes"]
        lines.append(
            f"  database {human_bytes(summary['db_bytes'])} = {ratio:.2f}x the JSON bytes"
            f" ({human_bytes(summary['json_bytes'])})"
        )
    if summary.get("bad_names_count"):
        shown = ", ".join(summary["bad_names"][:3])
        lines.append(
            f"  warning: skipped {summary['bad_names_count']:,} file or folder names that are not valid"
            f" UTF-8 (e.g. {shown}); rename them (e.g. with `convmv`) and run index again"
        )
    if summary.get("not_files_count"):
        shown = "; ".join(summary["not_files"][:3])
        lines.append(f"  warning: skipped {summary['not_files_count']:,} entries named like sample files"
                     f" that are not regular files: {shown}")
    shards = summary.get("shards") or {}
    if shards.get("seen"):
        lines.append(f"  tar shards {shards['seen']:,}: read {shards['read']:,} ({shards['members']:,}"
                     f" members, {human_bytes(shards['bytes_read'])} read), removed {shards['removed']:,}")
    if shards.get("refused"):
        lines.append(f"  warning: refused {shards['refused']:,} unsafe tar members (links, devices, escaping"
                     " names): see the tar_shards table")
    for duplicate in (shards.get("duplicates") or [])[:5]:
        lines.append(f"  warning: key {duplicate}")
    for error in shards.get("errors") or []:
        lines.append(f"  warning: {error}")
    for entry in summary.get("unreadable") or []:
        lines.append(f"  warning: could not read folder {entry}; its samples were kept as they were")
    return "\n".join(lines)
