"""`indexer stats` and `indexer report OUT.html`: the same figures as text or as a page of charts."""

from __future__ import annotations

import click

from indexer.cli.common import (
    db_option,
    id_option,
    json_option,
    quiet_broken_pipe,
    resolve_db,
    show,
)
from indexer.inspect import stats
from indexer.render.html import write_report
from indexer.render.stats import format_stats


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
    figures = stats.dataset_stats(resolve_db(db), dataset_id, min_megapixels=min_mp, max_megapixels=max_mp)
    with quiet_broken_pipe():
        show(figures, format_stats, as_json=as_json)


@click.command("report")
@click.argument("out", type=click.Path(dir_okay=False, writable=True, path_type=str))
@db_option
@id_option()
def report_command(out: str, db: str | None, dataset_id: str | None) -> None:
    """Write a self-contained HTML page with the stats drawn as charts (no network, no scripts)."""
    path = write_report(resolve_db(db), out, dataset_id)
    click.echo(f"wrote {path}", err=True)


def register(group: click.Group) -> None:
    for command in (stats_command, report_command):
        group.add_command(command)
