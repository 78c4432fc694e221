"""Human summaries of the writing commands: an `index` run, an `extract` run, and the lines
`watch` prints per batch, scan, export and at the end."""

from __future__ import annotations

from indexer.render.exports import result_line
from indexer.wording import counts_text

REFUSALS_SHOWN = 20


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def dataset_line(summary: dict) -> str:
    """The first line of every writing run's summary: the dataset, where it is, its size, the time."""
    return (f"dataset {summary['dataset']} ({summary['root']}): {summary['samples']:,} samples"
            f" in {summary['seconds']:.1f} s")


def engine_lines(summary: dict) -> list[str]:
    """Where a Ray run's tasks ran, how often Ray ran one again, and how busy the writer was."""
    if summary.get("engine") != "ray":
        return []
    nodes = ", ".join(f"{count:,} on {node}" for node, count in sorted(summary["tasks_by_node"].items()))
    busy = summary.get("writer_busy")
    return [f"  ray: tasks {nodes or 'none'}; {summary['task_retries']:,} attempts retried,"
            f" {summary['tasks_failed']:,} tasks failed for good"
            + (f"; writer busy {busy:.0%} of the time" if busy is not None else "")]


def format_index_summary(summary: dict) -> str:
    lines = [
        dataset_line(summary),
        f"  added {summary['added']:,}  changed {summary['changed']:,}"
        f"  removed {summary['removed']:,}  unchanged {summary['unchanged']:,}",
        (f"  files seen {summary['files_seen']:,}, read {summary['files_read']:,}" if "files_seen" in summary
         else f"  objects listed {summary.get('objects_listed', 0):,}, read {summary['files_read']:,}"),
    ]
    problems = summary.get("problems") or {}
    lines += [f"  note: {note}" for note in summary.get("notes") or []]
    lines.append(f"  problems: {counts_text(problems)}"
                 + ("  (see `indexer problems` or the samples.error column)" if problems else ""))
    derived = summary.get("derived") or {}
    if derived.get("built"):
        lines.append(f"  built the stats indexes and search index a bulk write deferred"
                     f" ({derived['seconds']:.1f} s of the run)")
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
                     f" members, {human_bytes(shards['bytes_read'])} read"
                     f"{shard_bytes_used(shards)}), removed {shards['removed']:,}")
    if shards.get("per_shard"):
        read = max(shards["read"], 1)
        lines.append(f"  remote shards: {shards['requests']:,} range requests,"
                     f" {human_bytes(shards['fetched_bytes'])} fetched this run"
                     f" ({shards['requests'] / read:.0f} requests a shard read)")
    if shards.get("refused"):
        lines.append(f"  warning: refused {shards['refused']:,} unsafe tar members (links, devices, escaping"
                     " names): see the tar_shards table")
    for duplicate in (shards.get("duplicates") or [])[:5]:
        lines.append(f"  warning: key {duplicate}")
    for error in shards.get("errors") or []:
        lines.append(f"  warning: {error}")
    if summary.get("unread_count"):
        lines.append(f"  error: {summary['unread_count']:,} remote object(s) could not be read (kept as they"
                     f" were; run index again to retry): {'; '.join(summary['unread'][:3])}")
    for entry in summary.get("unreadable") or []:
        lines.append(f"  warning: could not read folder {entry}; its samples were kept as they were")
    return "\n".join(lines + engine_lines(summary))


def shard_bytes_used(shards: dict) -> str:
    """Of the bytes read, those the samples used (headers, JSON, image heads): the rest is read ahead
    by each read after a jump over image data."""
    return f", {human_bytes(shards['bytes_used'])} of it used" if "bytes_used" in shards else ""


def problems_line(problems: dict) -> str:
    """The samples' problem counts of a run, pointing at where each one is explained."""
    return f"  problems: {counts_text(problems)}" + ("  (see the samples.error column)" if problems else "")


def format_extract_summary(summary: dict) -> str:
    problems = summary.get("problems") or {}
    return "\n".join([
        dataset_line(summary),
        f"  shards: {summary['shards_done']} extracted, {summary['shards_skipped']} skipped (finished"
        f" before), {summary['shards_failed']} failed; {summary['members']:,} members,"
        f" {human_bytes(summary['bytes'])} read, {summary['refused']:,} refused",
        f"  samples added {summary['added']:,}  changed {summary['changed']:,};"
        f" files read back {summary['files_read']:,}",
        problems_line(problems),
        *engine_lines(summary),
    ])


def extract_problem_lines(summary: dict) -> list[str]:
    """Refused members and failed shards of an extract run, one line each, for stderr."""
    lines = [f"refused: {r['shard']}: {r['member']!r}: {r['reason']}"
             for r in summary["refusals"][:REFUSALS_SHOWN]]
    if summary["refused"] > REFUSALS_SHOWN:
        lines.append(f"refused: ... and {summary['refused'] - REFUSALS_SHOWN:,} more (see --json)")
    lines.extend(f"error: {failure['error']}" for failure in summary["failures"])
    return lines


def format_event(event: dict) -> str:
    """One human line per watch batch / rescan / export (the --json object holds the same facts)."""
    kind = event.get("event")
    clock = (event.get("at") or "")[11:19]
    if kind in ("batch", "rescan"):
        what = f"batch of {event['paths']:,} paths" if kind == "batch" else f"{event['reason']} scan"
        return (f"{clock} {what}: added {event['added']:,}, changed {event['changed']:,},"
                f" removed {event['removed']:,}; problems: {counts_text(event['problems'])}"
                f" ({event['samples']:,} samples, {event['seconds']:.2f} s)")
    if kind == "export":
        return (f"{clock} export {event['kind']}: {result_line(event['kind'], event['result'])}"
                f" ({event['seconds']:.2f} s)")
    if kind == "stopped":
        return (f"stopped ({event['status']}): added {event['added']:,}, changed {event['changed']:,},"
                f" removed {event['removed']:,} in {event['batches']:,} batches"
                f" and {event['rescans']:,} scans; {event['samples']:,} samples in the database")
    return str(event)
