"""`indexer materialize DIR`."""

from __future__ import annotations

import click

from indexer.cli.common import (
    db_option,
    engine_options,
    id_option,
    json_option,
    quiet_option,
    resolve_db,
    show,
    show_progress,
    where_option,
    workers_option,
)
from indexer.errors import EXIT_INCOMPLETE, EXIT_OK, EXIT_REFUSED_MEMBERS
from indexer.materialize import materialize
from indexer.render.materialize import format_materialize_summary, materialize_problem_lines


@click.command("materialize")
@click.argument("to", metavar="DIR", type=click.Path(file_okay=False, path_type=str))
@db_option
@id_option("The source dataset, indexed in place (needed only when the database holds several besides"
           " DIR's).")
@where_option("Boolean expression over samples columns choosing the samples to copy, e.g. \"width >= 1024\""
              " (read-only).")
@workers_option("Tasks fetching at once (threads; default: 16 from a remote source, 4 from a local one;"
                " on Ray, the cluster's CPUs).")
@engine_options("Where samples are fetched and written: threads here, or Ray tasks (DIR, and a local"
                " source's folder, must then be paths every node sees)")
@click.option("--shard-list", type=click.Path(dir_okay=False, path_type=str), metavar="FILE",
              help="The shard list the source was indexed from, when it was https URLs (they are not"
                   " stored).")
@click.option("--as", "as_id", metavar="NAME", default=None,
              help="DIR's own dataset id (default: DIR's folder name, the id `indexer index DIR` uses).")
@quiet_option
@json_option
def materialize_command(to: str, db: str | None, dataset_id: str | None, where: str | None,
                        workers: int | None, engine: str, ray_address: str | None, shard_list: str | None,
                        as_id: str | None, quiet: bool, as_json: bool) -> None:
    """Copy the selected samples' files (JSON and image, as stored) from a dataset indexed in place
    into DIR, laid out as `tar xf` would, each file whole and checked, and recorded as DIR's
    dataset: a following `indexer index DIR` reads nothing, and the exports serve the subset.

    A rerun fetches only what DIR lacks. Exit 4 when some samples could not be fetched (a rerun
    retries them), 3 when some names were refused, 1 on a real failure.
    """
    summary = materialize(resolve_db(db), to, dataset_id=dataset_id, where=where, workers=workers,
                          progress=show_progress(quiet, as_json), shard_list=shard_list, as_id=as_id,
                          engine=engine, ray_address=ray_address)
    show(summary, format_materialize_summary, as_json=as_json, quiet=quiet,
         problems=materialize_problem_lines)
    raise SystemExit(exit_code(summary))


def exit_code(summary: dict) -> int:
    if summary["failed_count"]:
        return EXIT_INCOMPLETE
    if summary["refused_count"]:
        return EXIT_REFUSED_MEMBERS
    return EXIT_OK


def register(group: click.Group) -> None:
    group.add_command(materialize_command)
