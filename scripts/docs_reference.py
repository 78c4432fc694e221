"""The generated parts of the documentation, written into the pages by cog (`cog -r -I scripts
docs/*.md docs/*/*.md`; CI runs `cog --check`, which fails when a page is out of date):

- the CLI reference (docs/reference/cli.md): every command's `--help`, the click group walked
  recursively, at a fixed width so the page does not depend on the terminal that ran cog;
- the exit codes (docs/reference/exit-codes.md): the EXIT_* constants of indexer/errors.py with the
  comment beside each, which is the one place an exit code is described.

tests/test_docs.py imports it to check that every option and exit code is in those pages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
from click.testing import CliRunner

ERRORS = Path(__file__).resolve().parent.parent / "indexer" / "errors.py"
HELP_WIDTH = 100  # columns of the rendered --help, whatever the terminal


def commands(group: click.Command | None = None, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    """Every command under the indexer group, depth first, sorted by name: (path, command)."""
    if group is None:
        from indexer.cli import main

        group = main
    yield path, group
    if isinstance(group, click.Group):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            yield from commands(group.get_command(ctx, name), (*path, name))


def help_text(path: tuple[str, ...]) -> str:
    from indexer.cli import main

    result = CliRunner().invoke(main, [*path, "--help"], prog_name="indexer", terminal_width=HELP_WIDTH)
    if result.exit_code != 0:
        raise RuntimeError(f"indexer {' '.join(path)} --help failed: {result.output}")
    return result.output.rstrip() + "\n"


def cli_reference() -> str:
    """The CLI reference: a heading and the `--help` output of each command."""
    parts = []
    for path, _command in commands():
        name = " ".join(("indexer", *path))
        level = "###" if len(path) > 1 else "##"
        parts.append(f"{level} {name}\n\n```text\n{help_text(path)}```\n")
    return "\n".join(parts)


def exit_codes(errors_py: Path = ERRORS) -> list[tuple[int, str, str]]:
    """(code, constant name, meaning) for each `EXIT_NAME = N  # meaning` in errors.py; comment
    lines indented under it continue the meaning. Sorted by code."""
    found: list[tuple[int, str, str]] = []
    current: list | None = None
    for line in errors_py.read_text().splitlines():
        head = re.match(r"^(EXIT_[A-Z_]+) = (\d+)\s*(?:#\s*(.*))?$", line)
        more = re.match(r"^\s+#\s*(.*)$", line)
        if head:
            current = [int(head[2]), head[1], head[3] or ""]
            found.append(current)  # type: ignore[arg-type]
        elif more and current is not None:
            current[2] += " " + more[1]
        else:
            current = None
    return sorted((code, name, meaning.strip()) for code, name, meaning in found)


def exit_code_table() -> str:
    rows = [f"| {code} | `{name}` | {meaning} |" for code, name, meaning in exit_codes()]
    return "\n".join(["| code | name in `indexer/errors.py` | meaning |", "|---|---|---|", *rows]) + "\n"


def schema_columns() -> str:
    """Every table and view of a database the current schema files create, with its columns in
    order (generated columns marked), from an in-memory database: the list cannot miss a column."""
    import sqlite3

    from indexer import store

    conn = sqlite3.connect(":memory:", isolation_level=None)
    version = store.migrate(conn)
    names = conn.execute(
        "SELECT type, name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
        " AND name NOT LIKE 'samples_fts_%' ORDER BY type, name").fetchall()
    lines = [f"A database at schema version {version} (`PRAGMA user_version`) holds:", ""]
    for kind, name in names:
        columns = []
        for column in conn.execute(f"PRAGMA table_xinfo('{name}')"):
            if column[6] == 1:  # a virtual table's hidden column (samples_fts, rank)
                continue
            generated = column[6] in (2, 3)  # hidden: 2 virtual, 3 stored generated column
            columns.append(f"`{column[1]}`" + (" (generated)" if generated else ""))
        lines.append(f"- `{name}` ({kind}): " + ", ".join(columns))
    conn.close()
    return "\n".join(lines) + "\n"


def changelog() -> str:
    """CHANGELOG.md as it is, for the site's changelog page (the file stays at the repository root,
    where people look for it)."""
    return (ERRORS.parent.parent / "CHANGELOG.md").read_text()
