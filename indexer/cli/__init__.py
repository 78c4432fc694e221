"""Command-line interface: thin click commands over the library functions.

Each command module here parses options and calls one library function; the modules register
themselves on `main` through `register(group)`.
"""

from __future__ import annotations

import sys

import click

from indexer import __version__
from indexer.errors import IndexerError


class IndexerGroup(click.Group):
    """Turns IndexerError into one clear line on stderr and its documented exit code."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except IndexerError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=IndexerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="indexer")
@click.option("--db", "group_db", metavar="PATH", envvar="INDEXER_DB", default=None,
              help="SQLite database (default: ./indexer.sqlite; env INDEXER_DB).")
@click.pass_context
def main(ctx: click.Context, group_db: str | None) -> None:
    """Index image+caption samples into SQLite and export what trainers consume."""
    ctx.obj = {"db": group_db}


def _register_all() -> None:
    from indexer.cli import export, extract, index, query, watch

    for module in (index, export, watch, query, extract):
        module.register(main)


_register_all()
