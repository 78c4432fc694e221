"""Human lines for the listing commands: `indexer problems` and `indexer search`."""

from __future__ import annotations

from indexer.render.stats import deferred_note

SEARCH_CAPTION_CHARS = 100


def problem_lines(problem: dict, *, warnings: bool) -> str:
    """One problem sample: its status and file, then what is wrong (and its warning, if asked)."""
    lines = [f"{problem['status']:<14} {problem['path']}"]
    if problem["error"]:
        lines.append(f"    {problem['error']}")
    if warnings and problem["warning"]:
        lines.append(f"    warning: {problem['warning']}")
    return "\n".join(lines)


def problems_footer(count: int, warned: int, *, warnings: bool) -> str:
    return f"{count:,} problem samples" + (f", {warned:,} ok samples with a warning" if warnings else "")


def hit_lines(rank: int, hit: dict) -> str:
    """One search hit: rank, path, and its short caption on one line (cut to fit)."""
    caption = (hit["short_caption"] or "").replace("\n", " ")
    if len(caption) > SEARCH_CAPTION_CHARS:
        caption = caption[:SEARCH_CAPTION_CHARS - 1] + "…"
    return f"{rank:>3}. {hit['path'] or hit['json']}\n     {caption}"


def search_notes(text: str, *, hits: int, capped: bool, rank_cap: int, pending: int,
                 derived: dict | None = None) -> list[str]:
    """What a user must know about a search's answer: nothing found, ranking capped, index behind
    (`derived`: the whole index awaits its build, so this search built a temporary one)."""
    notes = []
    if not hits:
        notes.append(f"no sample matches {text!r}")
    if capped:
        notes.append(f"note: more than {rank_cap:,} samples match: these are the best of the first"
                     f" {rank_cap:,}; add words to narrow the search")
    if derived:
        notes.append(deferred_note(derived, "the search index is",
                                   "this search built a temporary one (same answers, slower)"))
    elif pending:
        notes.append(f"note: {pending:,} samples are not searchable yet (an index run is going on or was"
                     " stopped; run `indexer index` again)")
    return notes
