"""The options that choose an export's rows and their caption (--caption, --caption-mode, --where,
--column), carried whole as one Selection.

The CLI builds it once from the options of `indexer export` and `indexer watch`, before anything
runs, and the registry spreads its fields into the export function's keywords, so every way into
an export passes the same choice the same way. The export functions check those keywords again
with make_selection (they are the Python API too); a Selection's own fields come out unchanged.
Kept free of pyarrow and SQLite: `indexer watch` builds one without loading the exports;
select.py runs it against the database.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from indexer.errors import IndexerError
from indexer.export import CAPTION_MODES, DEFAULT_CAPTIONS

FIELD_NAME = re.compile(r"^[^\"\\\x00-\x1f]+$")
DEFAULT_COLUMNS = ("width", "height", "caption", "filename")
WHERE_EXAMPLE = "--where \"width >= 1024 AND source != 'twitter'\""


@dataclass(frozen=True)
class Selection:
    """The options that decide which rows an export holds and what their caption is."""

    captions: tuple[str, ...] = DEFAULT_CAPTIONS  # () for an export without captions
    where: str | None = None
    columns: tuple[str, ...] = ()
    caption_mode: str = "first"

    def options(self) -> dict:
        """What shapes the rows, as recorded in exports.options: a change is never "up to date"."""
        return {"captions": list(self.captions), "caption_mode": self.caption_mode, "where": self.where,
                "columns": list(self.columns)}


SELECTION_FIELDS = tuple(field.name for field in dataclasses.fields(Selection))
DEFAULT_SELECTION = Selection()


def make_selection(captions: Sequence[str] | None = None, where: str | None = None,
                   columns: Sequence[str] = (), caption_mode: str = "first") -> Selection:
    """Validate the user's options once, before any file is touched."""
    if caption_mode not in CAPTION_MODES:
        raise IndexerError(f"--caption-mode {caption_mode!r}: use {' or '.join(CAPTION_MODES)}")
    captions = tuple(captions or DEFAULT_CAPTIONS)
    for name in captions:
        json_path(name, "--caption")
    seen: set[str] = set()
    for name in columns:
        json_path(name, "--column")
        if name in DEFAULT_COLUMNS:
            raise IndexerError(f"--column {name}: the Parquet always has a {name!r} column; drop it")
        if name in seen:
            raise IndexerError(f"--column {name} is given twice; give each column once")
        seen.add(name)
    return Selection(captions, clean_where(where), tuple(columns), caption_mode)


def size_selection(where: str | None) -> Selection:
    """A selection for an export that holds sizes only: a sample needs no caption to be in it."""
    return Selection(captions=(), where=clean_where(where))


def clean_where(where: str | None) -> str | None:
    where = where.strip() if where and where.strip() else None
    if where is not None:
        check_where_text(where)
    return where


def json_path(name: str, option: str) -> str:
    """A SQLite JSON path for a top-level field; the name is quoted, so dots are literal."""
    if not name or not FIELD_NAME.match(name):
        raise IndexerError(
            f"{option} {name!r} is not a usable JSON field name (empty, or holds a quote, backslash "
            "or control character); give the field's name as it appears in the sample JSON"
        )
    return f'$."{name}"'


def check_where_text(where: str) -> None:
    """Refuse what could make --where more than one boolean expression over samples."""
    depth = 0
    quote: str | None = None
    previous = ""
    for char in where:
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"`[":
            quote = "]" if char == "[" else char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                break
        elif char == ";" or previous + char in ("--", "/*"):
            depth = -1
            break
        previous = "" if quote else char
    if depth != 0 or quote:
        raise IndexerError(
            f"--where {where!r} is not one boolean expression (unbalanced parenthesis or quote, a ';' or "
            f"a comment); write a condition over samples columns, e.g. {WHERE_EXAMPLE}"
        )
