"""The `indexer stats` screen: the figures of inspect/stats.py as text histograms."""

from __future__ import annotations


def export_state(export: dict, data_version: int) -> str:
    if export.get("failed"):
        return f"STALE: {export['failed']:,} files could not be written; export again"
    if export["stale"]:
        return (f"STALE: made from data version {export['data_version']}, data is now {data_version};"
                " export again")
    return "up to date"


BAR_WIDTH = 28


def bar_line(label: str, count: int, total: int, width: int = 14, peak: int | None = None) -> str:
    """One histogram row: label, count, share of total and a bar scaled to the biggest row."""
    peak = peak or total or 1
    filled = round(BAR_WIDTH * count / peak) if peak else 0
    share = f"{100 * count / total:5.1f}%" if total else "    -"
    return f"  {label:<{width}} {count:>10,} {share}  {'█' * filled}".rstrip()


def histogram(title: str, counts: dict[str, int], total: int | None = None) -> list[str]:
    total = total if total is not None else sum(counts.values())
    peak = max(counts.values(), default=0)
    width = max((len(label) for label in counts), default=0)
    return [title, *(bar_line(label, n, total, width, peak) for label, n in counts.items())]


def format_stats(figures: dict) -> str:
    """The `indexer stats` screen."""
    total = figures["samples"]
    lines = [f"dataset {figures['dataset']} ({figures['root']}), data version {figures['data_version']}:"
             f" {total:,} samples"]
    lines += histogram("status", figures["status"], total)
    lines += histogram("sources", figures["sources"], total)
    lines += histogram("image extensions", figures["extensions"], total)
    sizes = figures["sizes"]
    top = {f"{s['width']}x{s['height']}": s["samples"] for s in sizes["top"]}
    lines += histogram(f"sizes ({sizes['distinct']:,} distinct, {sizes['unknown']:,} unknown; top"
                       f" {len(top)})", top, total)
    lines += histogram("aspect ratio (width:height)", sizes["aspect"], total)
    lines += histogram("megapixels", sizes["megapixels"], total)
    rules = sizes["area_rules"]
    lines.append(
        f"SimpleTuner area rules {rules['min_megapixels']:g}-{rules['max_megapixels']:g} MP: within"
        f" {rules['within']:,}, below {rules['below']:,} (too small), above {rules['above']:,}"
        f" (downsampled), size unknown {rules['unknown']:,}")
    lines.append("caption length (characters)")
    for field, c in figures["captions"].items():
        lines.append(
            f"  {field:<14} present {c['present']:,}  missing {c['missing']:,}  empty {c['empty']:,}"
            f"  min {c['min']}  median {c['p50']}  p90 {c['p90']}  max {c['max']}  mean {c['mean']}")
    dup = figures["duplicates"]
    lines.append(
        f"duplicates: by file md5 {dup['file_hash']['groups']:,} hashes /"
        f" {dup['file_hash']['extra']:,} extra copies; by pixel md5 {dup['pil_hash']['groups']:,}"
        f" hashes / {dup['pil_hash']['extra']:,} extra copies"
        + ("  (list: `indexer query 'SELECT * FROM duplicates_by_file_hash'`)"
           if dup["file_hash"]["groups"] or dup["pil_hash"]["groups"] else ""))
    lines.append("last runs" if figures["runs"] else "last runs: none recorded")
    for run in figures["runs"]:
        seconds = f"{run['seconds']:.1f} s" if run["seconds"] is not None else "-"
        lines.append(
            f"  #{run['id']:<4} {run['command']:<8} {run['started_at']}  {run['status']:<11}"
            f" +{run['added'] or 0:,} ~{run['changed'] or 0:,} -{run['removed'] or 0:,}  {seconds}")
    lines.append("exports" if figures["exports"] else "exports: none recorded")
    for export in figures["exports"]:
        state = export_state(export, figures["data_version"])
        lines.append(f"  {export['kind']:<9} {export['path']}  {export['exported_at']}  {state}")
    if figures.get("derived"):
        lines.append(deferred_note(figures["derived"], "the stats indexes are",
                                   "these figures were computed without them (slower)"))
    if figures.get("search_pending"):
        lines.append(f"search: {figures['search_pending']:,} samples not searchable yet (an index run is"
                     " going on, or was stopped: run `indexer index` again)")
    return "\n".join(lines)


def deferred_note(derived: dict, what: str, meanwhile: str) -> str:
    """Why the derived structures a reader wanted are not built (the writing run that deferred them
    is going on, or stopped before its end), what the reader did instead, and what builds them."""
    last = derived.get("last_run") or {}
    run = f"`indexer {last.get('command')}` run #{last.get('id')}"
    if last.get("status") == "running":
        why = f"{run} (started {last['started_at']}) deferred them and is still going on, or was killed"
    elif last.get("status") in ("failed", "interrupted"):
        why = f"{run} stopped before building them ({last['status']}: {last.get('error')})"
    else:
        why = "a bulk write deferred them"
    if derived.get("read_only"):
        fix = (f"this database is read-only ({derived['read_only']}): build them on a writable copy"
               " (`indexer index ROOT --db COPY`) before publishing it")
    else:
        fix = ("the writing run builds them at its end; when none is running, `indexer index ROOT` builds"
               " them (it re-reads nothing unchanged)")
    return f"note: {what} not built yet: {why}; {meanwhile}; {fix}"
