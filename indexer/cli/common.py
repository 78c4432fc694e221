"""Options and output helpers shared by every command."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
import orjson

from indexer.store import default_db_path


def db_option(func: Callable) -> Callable:
    return click.option(
        "--db", metavar="PATH", default=None,
        help="SQLite database (default: ./indexer.sqlite; env INDEXER_DB overrides).",
    )(func)


def id_option(help_text: str = "Dataset id (needed only when the database holds several).") -> Callable:
    return click.option("--id", "dataset_id", metavar="NAME", default=None, help=help_text)


def quiet_option(func: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary text.")(func)


def json_option(func: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as one JSON object on stdout.")(func)


def resolve_db(db: str | None) -> str:
    """--db on the command, else --db on `indexer`, else env INDEXER_DB, else the default."""
    if db:
        return db
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if isinstance(ctx.obj, dict) and ctx.obj.get("db"):
            return ctx.obj["db"]
        ctx = ctx.parent
    return default_db_path()


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def show_progress(quiet: bool, as_json: bool) -> bool:
    return not quiet and not as_json and sys.stderr.isatty()
