"""Command-line interface: thin click commands over the library functions.

Each command module here parses options and calls one library function; the modules register
themselves on `main` through `register(group)`.
"""

from __future__ import annotations

import importlib
import sys

import click

from indexer import __version__
from indexer.errors import IndexerError

# Command name -> module in indexer.cli that registers it. Modules load on first use, so
# `indexer index` does not pay for pyarrow or watchdog imports (they cost ~0.3 s a start).
COMMAND_MODULES = {
    "index": "index",
    "export": "export",
    "watch": "watch",
    "query": "query",
    "stats": "query",
    "problems": "query",
    "search": "query",
    "report": "query",
    "extract": "extract",
}


class IndexerGroup(click.Group):
    """Loads command modules lazily; turns IndexerError into one clear line and its exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            module = importlib.import_module(f"indexer.cli.{COMMAND_MODULES[cmd_name]}")
            module.register(self)
        return self.commands.get(cmd_name)

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
