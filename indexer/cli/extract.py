"""`indexer extract SHARD.tar... --to DIR`."""

from __future__ import annotations

import click

from indexer.cli.common import (
    engine_options,
    json_option,
    quiet_option,
    resolve_db,
    show,
    show_progress,
    writer_options,
)
from indexer.errors import EXIT_FAILURE, EXIT_OK, EXIT_REFUSED_MEMBERS
from indexer.extract import extract_shards
from indexer.render.runs import extract_problem_lines, format_extract_summary


@click.command("extract")
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@click.option("--to", "to", required=True, metavar="DIR", type=click.Path(file_okay=False, path_type=str),
              help="Folder the members land in, as `tar xf SHARD -C DIR` puts them (created if missing).")
@writer_options("Dataset id (default: DIR's folder name, the id `indexer index DIR` uses).",
                "Shards extracted at once, one process each (default: CPU count).")
@engine_options("Where shards are extracted: local worker processes, or Ray tasks (DIR must then be a"
                " path every node sees)")
@quiet_option
@json_option
def extract_command(shards: tuple[str, ...], to: str, db: str | None, dataset_id: str | None,
                    workers: int | None, engine: str, ray_address: str | None, quiet: bool,
                    as_json: bool) -> None:
    """Extract webdataset tar shards into DIR safely, and index their samples in the same pass.

    Finished shards are skipped on a rerun; a shard a killed run left half-way is done again.
    Exit 3 when unsafe members (links, devices, escaping names) were refused, 1 when a shard
    could not be read to its end; everything else is extracted either way.
    """
    summary = extract_shards(resolve_db(db), shards, to, dataset_id=dataset_id, workers=workers,
                             progress=show_progress(quiet, as_json), engine=engine, ray_address=ray_address)
    show(summary, format_extract_summary, as_json=as_json, quiet=quiet, problems=extract_problem_lines)
    raise SystemExit(exit_code(summary))


def exit_code(summary: dict) -> int:
    if summary["failures"]:
        return EXIT_FAILURE
    if summary["refused"]:
        return EXIT_REFUSED_MEMBERS
    return EXIT_OK


def register(group: click.Group) -> None:
    group.add_command(extract_command)
