"""`indexer index ROOT`."""

from __future__ import annotations

import click

from indexer.cli.common import (
    ROOT_ID_HELP,
    json_option,
    quiet_option,
    resolve_db,
    show,
    show_progress,
    writer_options,
)
from indexer.ingest.index import index_root
from indexer.render.runs import format_index_summary


@click.command("index")
@click.argument("root", type=click.Path(file_okay=False, path_type=str))
@writer_options(ROOT_ID_HELP, "Reader processes (default: CPU count).")
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
    show(summary, format_index_summary, as_json=as_json, quiet=quiet)


def register(group: click.Group) -> None:
    group.add_command(index_command)
