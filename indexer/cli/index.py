"""`indexer index ROOT`."""

from __future__ import annotations

import click

from indexer.cli.common import (
    db_option,
    json_option,
    print_json,
    quiet_option,
    resolve_db,
    show_progress,
)
from indexer.index import index_root
from indexer.render.runs import format_index_summary


@click.command("index")
@click.argument("root", type=click.Path(file_okay=False, path_type=str))
@db_option
@click.option("--id", "dataset_id", metavar="NAME", default=None,
              help="Dataset id (default: ROOT's folder name; the same root keeps its id).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Reader processes (default: CPU count).")
@click.option("--verify-images", is_flag=True,
              help="Read the header of every new or changed image and prefer its size.")
@quiet_option
@json_option
def index_command(root: str, db: str | None, dataset_id: str | None, workers: int | None,
                  verify_images: bool, quiet: bool, as_json: bool) -> None:
    """Record every JSON/image pair under ROOT; a rerun reads only new or changed files."""
    summary = index_root(
        resolve_db(db), root, dataset_id=dataset_id, workers=workers,
        verify_images=verify_images, progress=show_progress(quiet, as_json),
    )
    if as_json:
        print_json(summary)
    elif not quiet:
        click.echo(format_index_summary(summary))


def register(group: click.Group) -> None:
    group.add_command(index_command)
