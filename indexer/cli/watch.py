"""`indexer watch ROOT`."""

from __future__ import annotations

import click

from indexer.cli.common import (
    ROOT_ID_HELP,
    json_lines_option,
    quiet_option,
    resolve_db,
    selection_options,
    show,
    writer_options,
)
from indexer.export.registry import follow_up_exports
from indexer.export.selection import Selection
from indexer.render.runs import format_event
from indexer.watch import watch_root


@click.command("watch")
@click.argument("root", type=click.Path(file_okay=False, path_type=str))
@writer_options(ROOT_ID_HELP, "Reader processes for big batches and scans (default: CPU count).")
@click.option("--settle", type=click.FloatRange(0, 3600), default=2.0, show_default=True,
              metavar="SECONDS",
              help="Quiet time (and a stable stat) a sample's files need before it is read.")
@click.option("--rescan-every", type=click.FloatRange(1), default=600.0, show_default=True,
              metavar="SECONDS", help="Full reconcile scan interval, catching anything events missed.")
@click.option("--export-parquet", "export_parquet", metavar="OUT", default=None,
              help="Re-export this Parquet file (atomic replace) after each batch that changed samples.")
@click.option("--export-captions", is_flag=True,
              help="Update caption .txt files beside the images after each batch that changed samples.")
@selection_options(where_help="Export only samples matching this expression over samples columns.")
@click.option("--allow-mass-removal", is_flag=True,
              help="Let --export-captions remove more than half of the caption files it wrote.")
@quiet_option
@json_lines_option("batch, scan and export, then the session totals")
def watch_command(root: str, db: str | None, dataset_id: str | None, workers: int | None,
                  settle: float, rescan_every: float, export_parquet: str | None,
                  export_captions: bool, selection: Selection, allow_mass_removal: bool, quiet: bool,
                  as_json: bool) -> None:
    """Index ROOT, then keep the index (and exports) current as samples land, until Ctrl-C / SIGTERM."""

    def report(event: dict) -> None:
        if event.get("event") == "warning":
            click.echo(f"warning: {event['message']}", err=True)
        else:
            show(event, format_event, as_json=as_json, quiet=quiet)

    db_path = resolve_db(db)
    exports = follow_up_exports(db_path, selection, export_parquet=export_parquet,
                                export_captions=export_captions, allow_mass_removal=allow_mass_removal)
    summary = watch_root(db_path, root, dataset_id=dataset_id, settle=settle, rescan_every=rescan_every,
                         workers=workers, after_change=exports, on_batch=report, handle_signals=True)
    report(summary)


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(watch_command)
