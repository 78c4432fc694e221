"""`indexer query SQL`."""

from __future__ import annotations

import sys

import click

from indexer.cli.common import db_option, quiet_broken_pipe, resolve_db
from indexer.inspect.query import parse_params
from indexer.render import rows


@click.command("query")
@click.argument("sql")
@db_option
@click.option("--format", "fmt", type=click.Choice(rows.FORMATS), default="table", show_default=True,
              help="table (aligned for a terminal; long cells cut), csv, json (one array) or jsonl.")
@click.option("-p", "--param", "params", metavar="NAME=VALUE", multiple=True,
              help="Bind :NAME in the SQL to VALUE (text); repeatable.")
def query_command(sql: str, db: str | None, fmt: str, params: tuple[str, ...]) -> None:
    """Run one read-only SQL statement and stream its rows; any write is refused (exit 1)."""
    with quiet_broken_pipe():
        rows.run_query(resolve_db(db), sql, sys.stdout, fmt=fmt, params=parse_params(params))


def register(group: click.Group) -> None:
    group.add_command(query_command)
