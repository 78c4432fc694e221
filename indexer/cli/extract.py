"""`indexer extract SHARD.tar... --to DIR`."""

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
from indexer.errors import EXIT_FAILURE, EXIT_OK, EXIT_REFUSED_MEMBERS
from indexer.extract import extract_shards
from indexer.report_text import human_bytes

REFUSALS_SHOWN = 20


@click.command("extract")
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@click.option("--to", "to", required=True, metavar="DIR", type=click.Path(file_okay=False, path_type=str),
              help="Folder the members land in, as `tar xf SHARD -C DIR` puts them (created if missing).")
@db_option
@click.option("--id", "dataset_id", metavar="NAME", default=None,
              help="Dataset id (default: DIR's folder name, the id `indexer index DIR` uses).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Shards extracted at once, one process each (default: CPU count).")
@quiet_option
@json_option
def extract_command(shards: tuple[str, ...], to: str, db: str | None, dataset_id: str | None,
                    workers: int | None, quiet: bool, as_json: bool) -> None:
    """Extract webdataset tar shards into DIR safely, and index their samples in the same pass.

    Finished shards are skipped on a rerun; a shard a killed run left half-way is done again.
    Exit 3 when unsafe members (links, devices, escaping names) were refused, 1 when a shard
    could not be read to its end; everything else is extracted either way.
    """
    summary = extract_shards(resolve_db(db), shards, to, dataset_id=dataset_id, workers=workers,
                             progress=show_progress(quiet, as_json))
    if as_json:
        print_json(summary)
    elif not quiet:
        click.echo(format_extract_summary(summary))
    if not as_json:
        for line in problem_lines(summary):
            click.echo(line, err=True)
    raise SystemExit(exit_code(summary))


def exit_code(summary: dict) -> int:
    if summary["failures"]:
        return EXIT_FAILURE
    if summary["refused"]:
        return EXIT_REFUSED_MEMBERS
    return EXIT_OK


def format_extract_summary(summary: dict) -> str:
    problems = summary.get("problems") or {}
    listed = ", ".join(f"{status} {count:,}" for status, count in problems.items()) or "none"
    return "\n".join([
        f"dataset {summary['dataset']} ({summary['root']}): {summary['samples']:,} samples"
        f" in {summary['seconds']:.1f} s",
        f"  shards: {summary['shards_done']} extracted, {summary['shards_skipped']} skipped (finished"
        f" before), {summary['shards_failed']} failed; {summary['members']:,} members,"
        f" {human_bytes(summary['bytes'])} read, {summary['refused']:,} refused",
        f"  samples added {summary['added']:,}  changed {summary['changed']:,};"
        f" files read back {summary['files_read']:,}",
        f"  problems: {listed}" + ("  (see the samples.error column)" if problems else ""),
    ])


def problem_lines(summary: dict) -> list[str]:
    """Refused members and failed shards, one line each, for stderr."""
    lines = [f"refused: {r['shard']}: {r['member']!r}: {r['reason']}"
             for r in summary["refusals"][:REFUSALS_SHOWN]]
    if summary["refused"] > REFUSALS_SHOWN:
        lines.append(f"refused: ... and {summary['refused'] - REFUSALS_SHOWN:,} more (see --json)")
    lines.extend(f"error: {failure['error']}" for failure in summary["failures"])
    return lines


def register(group: click.Group) -> None:
    group.add_command(extract_command)
