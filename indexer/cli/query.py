"""`indexer query`, `stats`, `problems`, `search` and `report`: read-only looks at the database."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import click

from indexer.cli.common import db_option, id_option, json_option, print_json, resolve_db
from indexer.inspect import problems, search, stats
from indexer.inspect.query import parse_params
from indexer.render import html, listings, rows
from indexer.render.stats import format_stats


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
@click.option("--format", "fmt", type=click.Choice(rows.FORMATS), default="table", show_default=True,
              help="table (aligned for a terminal; long cells cut), csv, json (one array) or jsonl.")
@click.option("-p", "--param", "params", metavar="NAME=VALUE", multiple=True,
              help="Bind :NAME in the SQL to VALUE (text); repeatable.")
def query_command(sql: str, db: str | None, fmt: str, params: tuple[str, ...]) -> None:
    """Run one read-only SQL statement and stream its rows; any write is refused (exit 1)."""
    with quiet_broken_pipe():
        rows.run_query(resolve_db(db), sql, sys.stdout, fmt=fmt, params=parse_params(params))


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
            click.echo(format_stats(figures))


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
            click.echo(listings.problem_lines(problem, warnings=warnings))
    if not as_json:
        click.echo(listings.problems_footer(count, warned, warnings=warnings), err=True)


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
                click.echo(listings.hit_lines(rank, hit))
    for note in listings.search_notes(text, hits=len(hits), capped=capped, rank_cap=search.RANK_CAP,
                                      pending=search.search_status(db_path)):
        click.echo(note, err=True)


@click.command("report")
@click.argument("out", type=click.Path(dir_okay=False, writable=True, path_type=str))
@db_option
@id_option()
def report_command(out: str, db: str | None, dataset_id: str | None) -> None:
    """Write a self-contained HTML page with the stats drawn as charts (no network, no scripts)."""
    path = html.write_report(resolve_db(db), out, dataset_id)
    click.echo(f"wrote {path}", err=True)


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    for command in (query_command, stats_command, problems_command, search_command, report_command):
        group.add_command(command)
