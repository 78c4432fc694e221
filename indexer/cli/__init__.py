"""Command-line interface: thin click commands over the library functions.

Each command module here parses options and calls one library function; the modules register
themselves on `main` through `register(group)`.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys

import click

from indexer import __version__
from indexer.errors import EXIT_FAILURE, EXIT_INTERRUPTED, IndexerError

# Command name -> module in indexer.cli that registers it. Modules load on first use, so
# `indexer index` does not pay for pyarrow or watchdog imports (they cost ~0.3 s a start).
COMMAND_MODULES = {
    "index": "index",
    "export": "export",
    "watch": "watch",
    "query": "query",
    "stats": "stats",
    "report": "stats",
    "problems": "problems",
    "search": "search",
    "extract": "extract",
    "materialize": "materialize",
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
        """Every way a command can fail ends in one line on stderr and a documented exit code.

        INDEXER_DEBUG=1 lets unexpected exceptions through with their traceback, for bug reports.
        """
        try:
            return super().invoke(ctx)
        except IndexerError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted: everything committed so far is kept; run the same command again to "
                 "finish (it picks up where this one stopped)", EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except OSError as exc:
            if os.environ.get("INDEXER_DEBUG"):
                raise
            fail(f"{describe_os_error(exc)}; check the path and its permissions, then rerun", EXIT_FAILURE)
        except sqlite3.Error as exc:
            if os.environ.get("INDEXER_DEBUG"):
                raise
            fail(f"database error: {exc}; if the database is damaged, move it aside and rerun "
                 "`indexer index` to rebuild it", EXIT_FAILURE)
        except Exception as exc:
            if os.environ.get("INDEXER_DEBUG"):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc}. This is a bug in indexer: please report it "
                 "with the command you ran (INDEXER_DEBUG=1 shows the traceback)", EXIT_FAILURE)


def describe_os_error(exc: OSError) -> str:
    """'cannot write /x/y: Permission denied' rather than a Python repr."""
    what = exc.strerror or str(exc)
    if exc.filename is None:
        return what
    target = os.fsdecode(exc.filename)
    if exc.filename2 is not None:
        target += f" -> {os.fsdecode(exc.filename2)}"
    return f"{target}: {what}"


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(cls=IndexerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="indexer")
@click.option("--db", "group_db", metavar="PATH", envvar="INDEXER_DB", default=None,
              help="SQLite database (default: ./indexer.sqlite; env INDEXER_DB).")
@click.pass_context
def main(ctx: click.Context, group_db: str | None) -> None:
    """Index image+caption samples into SQLite and export what trainers consume."""
    ctx.obj = {"db": group_db}
