"""Options and output helpers shared by every command: each option is declared here once."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click
import orjson

from indexer.export import CAPTION_MODES, DEFAULT_CAPTIONS
from indexer.export.selection import SELECTION_FIELDS, make_selection
from indexer.ingest.engines import ENGINES
from indexer.store import default_db_path

Decorator = Callable[[Callable], Callable]
ID_HELP = "Dataset id (needed only when the database holds several)."
ROOT_ID_HELP = "Dataset id (default: ROOT's folder name; the same root keeps its id)."
CAPTION_HELP = ("Caption field; repeat for fallbacks (in first mode the first non-empty wins; a list field "
                "gives its first non-empty item)")
WHERE_HELP = ("Boolean expression over samples columns, e.g. \"width >= 1024 AND source != 'twitter'\" "
              "(read-only).")


def db_option(func: Callable) -> Callable:
    return click.option(
        "--db", metavar="PATH", default=None,
        help="SQLite database (default: ./indexer.sqlite; env INDEXER_DB overrides).",
    )(func)


def id_option(help_text: str = ID_HELP) -> Decorator:
    return click.option("--id", "dataset_id", metavar="NAME", default=None, help=help_text)


def workers_option(help_text: str) -> Decorator:
    return click.option("--workers", type=click.IntRange(1, 256), default=None, help=help_text)


def quiet_option(func: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary text.")(func)


def json_option(func: Callable) -> Callable:
    """--json for a command with one result: one JSON object on stdout."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as one JSON object on stdout.")(func)


def json_lines_option(what: str) -> Decorator:
    """--json for a command with a stream of results: one JSON object a line, one per `what`."""
    return click.option("--json", "as_json", is_flag=True,
                        help=f"Print one JSON object per {what}, one per line (JSON lines).")


def caption_option(help_text: str = CAPTION_HELP) -> Decorator:
    """--caption FIELD (repeatable); `help_text` ends where the default is named."""
    return click.option("--caption", "captions", metavar="FIELD", multiple=True,
                        help=f"{help_text} (default: {', '.join(DEFAULT_CAPTIONS)}).")


def caption_mode_option(func: Callable) -> Callable:
    return click.option("--caption-mode", type=click.Choice(CAPTION_MODES), default="first",
                        show_default=True,
                        help="first: the first non-empty --caption field; all: every non-empty one (list "
                             "items included, duplicates dropped), one caption a line.")(func)


def where_option(help_text: str = WHERE_HELP) -> Decorator:
    return click.option("--where", metavar="SQL", default=None, help=help_text)


def column_option(func: Callable) -> Callable:
    return click.option("--column", "columns", metavar="NAME", multiple=True,
                        help="Extra column: key, source, long_caption, md5_file_hash, aspect_ratio or any "
                             "JSON field.")(func)


def selection_options(*, captions: bool = True, columns: bool = False,
                      where_help: str = WHERE_HELP) -> Decorator:
    """The options that choose an export's rows (--caption, --caption-mode, --where, and --column
    with `columns`), handed to the command as one `selection` argument built by make_selection,
    so `export` and `watch` choose rows alike and a bad field name or --where fails before
    anything runs. Without `captions` the export holds sizes only: --where alone."""
    chosen = [caption_option(), caption_mode_option] if captions else []
    chosen += [where_option(where_help), *([column_option] if columns else [])]

    def apply(func: Callable) -> Callable:
        @functools.wraps(func)
        def command(**values: Any) -> Any:
            picked = {name: values.pop(name) for name in SELECTION_FIELDS if name in values}
            return func(selection=make_selection(**picked), **values)
        return options(*chosen)(command)
    return apply


def options(*decorators: Decorator) -> Decorator:
    """Several options as one decorator, listed in --help in the order given."""
    def apply(func: Callable) -> Callable:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


def writer_options(id_help: str, workers_help: str) -> Decorator:
    """--db, --id, --workers: the commands that write the index (index, watch, extract)."""
    return options(db_option, id_option(id_help), workers_option(workers_help))


def engine_options(where: str) -> Decorator:
    """--engine and --ray-address: where a command's reading (or fetching) runs."""
    return options(
        click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                     help=f"{where} (Ray: pip install 'indexer[ray]'); the database is written here either"
                          " way."),
        click.option("--ray-address", metavar="ADDR", default=None,
                     help="The Ray cluster to join (default: Ray's own rule: RAY_ADDRESS, else a new local"
                          " instance)."),
    )


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


def show(result: Any, text: Callable[[Any], str], *, as_json: bool, quiet: bool = False,
         problems: Callable[[Any], Iterable[str]] | None = None) -> None:
    """A result on stdout: as JSON with --json, else in words unless --quiet; its problem lines
    (`problems`) on stderr unless --json, where they are part of the object."""
    if as_json:
        print_json(result)
        return
    if not quiet:
        click.echo(text(result))
    for line in problems(result) if problems else ():
        click.echo(line, err=True)


def show_progress(quiet: bool, as_json: bool) -> bool:
    return not quiet and not as_json and sys.stderr.isatty()


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """`indexer query ... | head` must end quietly when head stops reading."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
