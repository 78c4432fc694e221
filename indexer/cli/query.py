"""`indexer query`, `stats`, `problems`, `search` and `report`: read-only looks at the database."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import click

from indexer import problems, query, report_html, search, stats
from indexer.cli.common import db_option, id_option, json_option, print_json, resolve_db


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """`indexer query ... | head` must end quietly when head stops reading."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


@click.command("query")
@click.argument("sql")
@db_option
@click.option("--format", "fmt", type=click.Choice(query.FORMATS), default="table", show_default=True,
              help="table (aligned for a terminal; long cells cut), csv, json (one array) or jsonl.")
@click.option("-p", "--param", "params", metavar="NAME=VALUE", multiple=True,
              help="Bind :NAME in the SQL to VALUE (text); repeatable.")
def query_command(sql: str, db: str | None, fmt: str, params: tuple[str, ...]) -> None:
    """Run one read-only SQL statement and stream its rows; any write is refused (exit 1)."""
    with quiet_broken_pipe():
        query.run_query(resolve_db(db), sql, sys.stdout, fmt=fmt, params=query.parse_params(params))


@click.command("stats")
@db_option
@id_option()
@json_option
@click.option("--min-mp", type=click.FloatRange(0), default=stats.MIN_MEGAPIXELS, show_default=True,
              help="Lower bound of SimpleTuner's area rule, megapixels.")
@click.option("--max-mp", type=click.FloatRange(0), default=stats.MAX_MEGAPIXELS, show_default=True,
              help="Upper bound of SimpleTuner's area rule, megapixels.")
def stats_command(db: str | None, dataset_id: str | None, as_json: bool, min_mp: float,
                  max_mp: float) -> None:
    """One screen of figures about a dataset: statuses, sources, sizes, captions, duplicates, runs."""
    figures = stats.dataset_stats(resolve_db(db), dataset_id, min_megapixels=min_mp, max_megapixels=max_mp,
                                  progress=sys.stderr.isatty() and not as_json)
    with quiet_broken_pipe():
        if as_json:
            print_json(figures)
        else:
            click.echo(stats.format_stats(figures))


@click.command("problems")
@db_option
@id_option()
@click.option("--status", "statuses", type=click.Choice(problems.PROBLEM_STATUSES), multiple=True,
              help="Only these statuses (repeatable; default: every status but ok).")
@click.option("--warnings", is_flag=True,
              help="Also list ok samples that carry a warning (image_name disagrees, several images).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per problem, one per line.")
def problems_command(db: str | None, dataset_id: str | None, statuses: tuple[str, ...], warnings: bool,
                     as_json: bool) -> None:
    """Every sample whose status is not ok: the file, what is wrong and what to do."""
    count = warned = 0
    with quiet_broken_pipe():
        for problem in problems.list_problems(resolve_db(db), dataset_id, statuses, warnings=warnings):
            if problem["status"] == "ok":
                warned += 1
            else:
                count += 1
            if as_json:
                print_json(problem)
                continue
            lines = [f"{problem['status']:<14} {problem['path']}"]
            if problem["error"]:
                lines.append(f"    {problem['error']}")
            if warnings and problem["warning"]:
                lines.append(f"    warning: {problem['warning']}")
            click.echo("\n".join(lines))
    if not as_json:
        click.echo(f"{count:,} problem samples"
                   + (f", {warned:,} ok samples with a warning" if warnings else ""), err=True)


@click.command("search")
@click.argument("words", nargs=-1, required=True)
@db_option
@id_option()
@click.option("--limit", "-n", type=click.IntRange(1), default=search.DEFAULT_LIMIT, show_default=True,
              help="How many hits, best first.")
@click.option("--raw", is_flag=True, help="TEXT is an FTS5 query (OR, NOT, column filters) as is.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit, one per line.")
def search_command(words: tuple[str, ...], db: str | None, dataset_id: str | None, limit: int,
                   raw: bool, as_json: bool) -> None:
    """Full-text search over the captions, ranked (bm25), with each hit's image path.

    WORDS may be given unquoted (`indexer search red dragon`); quote a phrase ('"stone castle"').
    """
    text = " ".join(words)
    db_path = resolve_db(db)
    hits, capped = search.search_hits(db_path, text, dataset_id=dataset_id, limit=limit, raw=raw,
                                      progress=sys.stderr.isatty() and not as_json)
    with quiet_broken_pipe():
        for rank, hit in enumerate(hits, 1):
            if as_json:
                print_json(hit)
            else:
                caption = (hit["short_caption"] or "").replace("\n", " ")
                caption = caption if len(caption) <= 100 else caption[:99] + "…"
                click.echo(f"{rank:>3}. {hit['path'] or hit['json']}\n     {caption}")
    if not hits:
        click.echo(f"no sample matches {text!r}", err=True)
    if capped:
        click.echo(f"note: more than {search.RANK_CAP:,} samples match: these are the best of the first"
                   f" {search.RANK_CAP:,}; add words to narrow the search", err=True)
    pending = search.search_status(db_path)
    if pending is None:
        click.echo("note: the search index is built on first use and a running index/watch/extract holds"
                   " the database: results may miss samples; search again when it is done", err=True)
    elif pending:
        click.echo(f"note: {pending:,} samples are not searchable yet (an index run is going on or was"
                   " stopped; run `indexer index` again)", err=True)


@click.command("report")
@click.argument("out", type=click.Path(dir_okay=False, writable=True, path_type=str))
@db_option
@id_option()
def report_command(out: str, db: str | None, dataset_id: str | None) -> None:
    """Write a self-contained HTML page with the stats drawn as charts (no network, no scripts)."""
    path = report_html.write_report(resolve_db(db), out, dataset_id)
    click.echo(f"wrote {path}", err=True)


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    for command in (query_command, stats_command, problems_command, search_command, report_command):
        group.add_command(command)
