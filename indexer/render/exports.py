"""Human lines for export summaries: the `indexer export` summary of each kind, and the one-line
form `indexer watch` prints after a follow-up export."""

from __future__ import annotations

from collections.abc import Callable

from indexer.wording import counts_text


def excluded_text(excluded: dict[str, int]) -> str:
    return "excluded: " + counts_text(excluded)


def file_head(summary: dict, *, timed: bool = True) -> str:
    """parquet / jsonl / kohya: what was written, or that nothing had to be."""
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


def rows_lines(summary: dict) -> list[str]:
    """parquet and jsonl."""
    return [file_head(summary), "  " + excluded_text(summary["excluded"])]


def kohya_lines(summary: dict) -> list[str]:
    lines = rows_lines(summary)
    if summary["sizes_left_out"]:
        lines.append("  image_size left out, sd-scripts measures these itself: "
                     + counts_text(summary["sizes_left_out"]))
    return lines


def captions_lines(summary: dict) -> list[str]:
    lines = [
        f"captions under {summary['root']}: {summary['rows']:,} exported in {summary['seconds']:.1f} s"
        + (f" ({summary['selected']:,} selected)" if summary["selected"] != summary["rows"] else ""),
        "  " + caption_counts(summary, extras=False),
        "  " + excluded_text(summary["excluded"]),
    ]
    if summary["left_alone"]:
        lines.append(f"  left alone {summary['left_alone']:,} .txt files this tool did not write "
                     "(--overwrite replaces them)")
    if summary["failed"]:
        lines.append(f"  failed {summary['failed']:,}: " + "; ".join(summary["errors"]))
    return lines


def config_lines(summary: dict) -> list[str]:
    action = "replaced" if summary["replaced"] else "added"
    return [
        f"wrote {summary['path']}: entry {summary['dataset']!r} {action} ({summary['entries']} entries)",
        f"  caption_strategy {summary['caption_strategy']}: {summary['reason']}",
        *cleared_lines(summary.get("cleared")),
        *(f"  note: {note}" for note in summary.get("notes", [])),
    ]


def cleared_lines(cleared: dict[str, int] | None) -> list[str]:
    """What a webshart export removed from SimpleTuner's caches (nothing to say when nothing went)."""
    if not cleared or not any(cleared.values()):
        return []
    downloads = cleared.get("shard_downloads")
    return [f"  removed from SimpleTuner's webshart caches (rebuilt from the indexes on its next start): "
            f"{cleared['index_copies']:,} cached shard indexes, "
            + (f"{downloads:,} cached Hub shards, " if downloads else "")
            + f"{cleared['bucket_files']:,} bucket cache files"]


def aitk_lines(summary: dict) -> list[str]:
    if summary["up_to_date"]:
        head = f"{summary['path']} is up to date ({summary['rows']:,} images); nothing written"
    elif summary["existing"] == "merged":
        head = (f"wrote {summary['rows']:,} image sizes to {summary['path']}, merged with the existing "
                f"file: kept {summary['kept']:,} of its other entries, dropped {summary['dropped']:,}")
    else:
        head = (f"wrote {summary['rows']:,} image sizes to {summary['path']} "
                f"(existing file: {summary['existing']})")
    return [head, "  " + excluded_text(summary["excluded"]),
            f"  ai-toolkit's folder_path must be exactly {summary['folder']}"]


def webshart_lines(summary: dict) -> list[str]:
    return [f"webshart indexes under {summary['path']}: {summary['rows']:,} samples in {summary['shards']:,}"
            f" shards; written {summary['written']:,}, unchanged {summary['unchanged']:,}",
            "  " + excluded_text(summary["excluded"]), *cleared_lines(summary.get("cleared")),
            *(f"  note: {note}" for note in summary.get("notes", []))]


def musubi_lines(summary: dict) -> list[str]:
    lines = rows_lines(summary)
    if summary["same_stem_examples"]:
        lines.append("  left out, their stem names an earlier image's musubi caches: "
                     + "; ".join(summary["same_stem_examples"]))
    if "config" in summary:
        config = summary["config"]
        lines.append(f"  dataset config {config['path']}: {'written' if config['written'] else 'unchanged'}")
    return lines


SUMMARY_LINES: dict[str, Callable[[dict], list[str]]] = {
    "parquet": rows_lines, "jsonl": rows_lines, "kohya": kohya_lines, "captions": captions_lines,
    "config": config_lines, "aitk": aitk_lines, "webshart": webshart_lines, "musubi": musubi_lines,
}


def export_text(summary: dict) -> str:
    """The `indexer export KIND` summary, from the summary's own `kind`."""
    lines = SUMMARY_LINES[summary["kind"]](summary)
    if summary.get("not_recorded"):
        owned = ", and the .txt files it wrote are not recorded as its own" \
            if summary["kind"] == "captions" else ""
        lines.append(f"  not recorded: {summary['not_recorded']}; a rerun cannot tell it is up to"
                     f" date{owned}")
    return "\n".join(lines)
