"""`indexer search TEXT`."""

from __future__ import annotations

import functools

import click

from indexer.cli.common import (
    db_option,
    id_option,
    json_lines_option,
    quiet_broken_pipe,
    resolve_db,
    show,
    show_progress,
)
from indexer.inspect import search
from indexer.render.listings import hit_lines, search_notes


@click.command("search")
@click.argument("words", nargs=-1, required=True)
@db_option
@id_option()
@click.option("--limit", "-n", type=click.IntRange(1), default=search.DEFAULT_LIMIT, show_default=True,
              help="How many hits, best first.")
@click.option("--raw", is_flag=True, help="TEXT is an FTS5 query (OR, NOT, column filters) as is.")
@json_lines_option("hit")
def search_command(words: tuple[str, ...], db: str | None, dataset_id: str | None, limit: int,
                   raw: bool, as_json: bool) -> None:
    """Full-text search over the captions, ranked (bm25), with each hit's image path.

    WORDS may be given unquoted (`indexer search red dragon`); quote a phrase ('"stone castle"').
    """
    text = " ".join(words)
    db_path = resolve_db(db)
    hits, capped = search.search_hits(db_path, text, dataset_id=dataset_id, limit=limit, raw=raw,
                                      progress=show_progress(False, as_json))
    with quiet_broken_pipe():
        for rank, hit in enumerate(hits, 1):
            show(hit, functools.partial(hit_lines, rank), as_json=as_json)
    state = search.search_state(db_path)
    for note in search_notes(text, hits=len(hits), capped=capped, rank_cap=search.RANK_CAP,
                             pending=state["pending"], derived=state["derived"]):
        click.echo(note, err=True)


def register(group: click.Group) -> None:
    group.add_command(search_command)
