"""`indexer problems`."""

from __future__ import annotations

import functools

import click

from indexer.cli.common import db_option, id_option, json_lines_option, quiet_broken_pipe, resolve_db, show
from indexer.db.status import PROBLEM_STATUSES, Status
from indexer.inspect.problems import list_problems
from indexer.render.listings import problem_lines, problems_footer


@click.command("problems")
@db_option
@id_option()
@click.option("--status", "statuses", type=click.Choice(PROBLEM_STATUSES), multiple=True,
              help="Only these statuses (repeatable; default: every status but ok).")
@click.option("--warnings", is_flag=True,
              help="Also list ok samples that carry a warning (image_name disagrees, several images).")
@json_lines_option("problem")
def problems_command(db: str | None, dataset_id: str | None, statuses: tuple[str, ...], warnings: bool,
                     as_json: bool) -> None:
    """Every sample whose status is not ok: the file, what is wrong and what to do."""
    count = warned = 0
    text = functools.partial(problem_lines, warnings=warnings)
    with quiet_broken_pipe():
        for problem in list_problems(resolve_db(db), dataset_id, statuses, warnings=warnings):
            if problem["status"] == Status.OK:
                warned += 1
            else:
                count += 1
            show(problem, text, as_json=as_json)
    if not as_json:
        click.echo(problems_footer(count, warned, warnings=warnings), err=True)


def register(group: click.Group) -> None:
    group.add_command(problems_command)
