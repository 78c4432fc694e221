"""`indexer index ROOT`."""

from __future__ import annotations

import click

from indexer.cli.common import (
    ROOT_ID_HELP,
    engine_options,
    json_option,
    quiet_option,
    resolve_db,
    show,
    show_progress,
    writer_options,
)
from indexer.errors import EXIT_INCOMPLETE
from indexer.ingest.index import index_root
from indexer.render.runs import format_index_summary


@click.command("index")
@click.argument("root", required=False, metavar="[ROOT]")
@writer_options(ROOT_ID_HELP, "Reader processes (default: CPU count); for a remote ROOT, objects read at"
                " once (default: 32).")
@click.option("--shard-list", type=click.Path(dir_okay=False, path_type=str), metavar="FILE",
              help="A text file of https:// shard URLs, one a line (HTTP cannot list a folder); "
                   "then no ROOT.")
@engine_options("Where reading runs: local reader processes, or tasks on a Ray cluster")
@click.option("--verify-images", is_flag=True,
              help="Read the header of every new or changed image and prefer its size.")
@quiet_option
@json_option
def index_command(root: str | None, db: str | None, dataset_id: str | None, workers: int | None,
                  shard_list: str | None, engine: str, ray_address: str | None, verify_images: bool,
                  quiet: bool, as_json: bool) -> None:
    """Record every JSON/image pair under ROOT (a folder, s3://bucket/prefix or hf://datasets/ORG/NAME,
    tar shards included, read in place); a rerun reads only new or changed files."""
    if (root is None) == (shard_list is None):
        raise click.UsageError("give ROOT (a folder, s3://... or hf://...) or --shard-list FILE, not both")
    summary = index_root(
        resolve_db(db), root or "", dataset_id=dataset_id, workers=workers, shard_list=shard_list,
        engine=engine, ray_address=ray_address,
        verify_images=verify_images, progress=show_progress(quiet, as_json),
    )
    show(summary, format_index_summary, as_json=as_json, quiet=quiet)
    if summary.get("unread_count"):
        raise SystemExit(EXIT_INCOMPLETE)  # what was read is recorded; a rerun reads the rest


def register(group: click.Group) -> None:
    group.add_command(index_command)
