"""The options that choose an export's rows are declared once and reach every export alike: the
export commands and `watch` take the same ones, the registry hands them over whole, and what
`watch` is given reaches the exports it re-runs."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest

import indexer.cli.watch as watch_cli
from indexer.cli.export import export_group
from indexer.export.registry import EXPORTS, run_export
from indexer.export.selection import DEFAULT_SELECTION, SELECTION_FIELDS, make_selection
from indexer.ingest.index import index_root

# Options of the export commands that `watch` does not take, and why. Anything else that chooses
# an export's rows, or that every export of rows shares, must be a watch option too.
NOT_FOR_WATCH = {
    "columns": "extra Parquet columns are `export parquet`'s alone: watch's one selection also feeds "
               "the captions export, which has no columns",
    "overwrite": "watch leaves .txt files it did not write alone (follow_up_exports passes overwrite=False)",
}
# The exports `watch --export-parquet/--export-captions` re-runs: every option of theirs is a
# watch option or named above.
FOLLOWED = ("parquet", "captions")
CAPTIONS = {"one": ("a red fox", "A red fox stands in the snow."),
            "two": ("a grey owl", "A grey owl sits on a branch.")}


def options_of(command: click.Command) -> dict[str, click.Option]:
    return {param.name: param for param in command.params if isinstance(param, click.Option)}


def declaration(option: click.Option) -> tuple:
    """What a user types and gets: the flags, repeatable or not, the choices, the default."""
    choices = tuple(option.type.choices) if isinstance(option.type, click.Choice) else None
    return tuple(sorted(option.opts)), option.multiple, option.is_flag, choices, option.default


def selection_options() -> dict[str, click.Option]:
    """Every option of an export command that chooses the rows (a Selection field) or that every
    export of rows shares (--id, --db, --quiet, --json, ...), by parameter name."""
    row_exports = [options_of(command) for command in export_group.commands.values()
                   if set(options_of(command)) & set(SELECTION_FIELDS)]
    shared = set.intersection(*(set(options) for options in row_exports))
    found: dict[str, click.Option] = {}
    for options in row_exports:
        found.update({name: option for name, option in options.items()
                      if name in SELECTION_FIELDS or name in shared})
    return found


def test_every_selection_option_of_an_export_is_a_watch_option() -> None:
    watch = options_of(watch_cli.watch_command)
    chosen = selection_options()
    assert {"captions", "caption_mode", "where", "columns", "dataset_id", "db"} <= set(chosen)
    missing = sorted(name for name in chosen if name not in watch and name not in NOT_FOR_WATCH)
    assert missing == [], f"export options watch lacks: {missing}; add them to watch or to NOT_FOR_WATCH"
    for name in set(chosen) & set(SELECTION_FIELDS) - set(NOT_FOR_WATCH):
        assert declaration(watch[name]) == declaration(chosen[name]), name  # declared once, shared
    for name in set(chosen) - set(SELECTION_FIELDS) - set(NOT_FOR_WATCH):
        assert watch[name].opts == chosen[name].opts, name
    for kind in FOLLOWED:
        own = sorted(set(options_of(export_group.commands[kind])) - set(watch) - set(NOT_FOR_WATCH))
        assert own == [], f"`export {kind}` options watch lacks: {own}"


def test_the_export_functions_default_to_the_default_selection() -> None:
    """A keyword default that drifted from Selection's would make the Python API and the CLI
    export different rows for the same (absent) option."""
    for kind, spec in EXPORTS.items():
        params = inspect.signature(spec.function()).parameters
        for name in set(SELECTION_FIELDS) & set(params):
            assert params[name].default == getattr(DEFAULT_SELECTION, name), (kind, name)


def test_the_registry_refuses_what_an_export_does_not_take(db_path: Path) -> None:
    with pytest.raises(TypeError, match="captions"):  # loose: the choice of rows is the selection's
        run_export("parquet", db_path, out="x.parquet", captions=("long_caption",))
    with pytest.raises(TypeError, match="captions"):  # sizes only: a caption field cannot apply
        run_export("aitk", db_path, make_selection(["long_caption"]))
    with pytest.raises(TypeError, match="overwrite"):
        run_export("jsonl", db_path, out="x.jsonl", overwrite=True)


@pytest.fixture
def two_captions(gen, data_root: Path, db_path: Path) -> Path:
    for key, (short, long) in CAPTIONS.items():
        record = {"width": 1024, "height": 768, "short_caption": short, "long_caption": long}
        (data_root / f"{key}.json").write_text(json.dumps(record), "utf-8")
        (data_root / f"{key}.png").write_bytes(gen.png_bytes(1024, 768))
    index_root(db_path, data_root, workers=1)
    return data_root


@pytest.fixture
def follow_ups(cli, monkeypatch, data_root: Path, db_path: Path):
    """follow_ups(*options) -> the follow-up actions `indexer watch ROOT *options` hands watch_root."""
    def run(*options: str) -> dict:
        seen: dict = {}

        def fake_watch_root(db, root, **kwargs) -> dict:
            seen.update(kwargs["after_change"])
            return {"event": "stopped"}

        monkeypatch.setattr(watch_cli, "watch_root", fake_watch_root)
        result = cli("watch", data_root, "--db", db_path, "--quiet", *options)
        assert result.exit_code == 0, result.stderr
        return seen

    return run


def test_watch_caption_mode_reaches_the_parquet_export(two_captions: Path, follow_ups,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "watched.parquet"
    both = ("--caption", "short_caption", "--caption", "long_caption")
    every = follow_ups("--export-parquet", out, *both, "--caption-mode", "all")
    assert every["parquet"]("data")["rows"] == 2
    assert {row["filename"]: row["caption"] for row in pq.read_table(out).to_pylist()} == {
        f"{key}.png": list(captions) for key, captions in CAPTIONS.items()}
    first = follow_ups("--export-parquet", out, "--caption", "long_caption", "--caption-mode", "first")
    assert first["parquet"]("data")["rows"] == 2
    table = pq.read_table(out).to_pylist()
    assert {row["filename"]: row["caption"] for row in table} == {
        f"{key}.png": long for key, (_short, long) in CAPTIONS.items()}


def test_watch_caption_mode_reaches_the_captions_export(two_captions: Path, follow_ups) -> None:
    actions = follow_ups("--export-captions", "--caption", "short_caption", "--caption", "long_caption",
                         "--caption-mode", "all")
    assert actions["captions"]("data")["written"] == 2
    texts = {key: (two_captions / f"{key}.txt").read_text("utf-8") for key in CAPTIONS}
    assert texts == {key: "\n".join(captions) for key, captions in CAPTIONS.items()}


def test_watch_refuses_a_bad_selection_before_it_starts(cli, monkeypatch, data_root: Path,
                                                         db_path: Path) -> None:
    monkeypatch.setattr(watch_cli, "watch_root", lambda *args, **kwargs: pytest.fail("watch started"))
    result = cli("watch", data_root, "--db", db_path, "--export-captions", "--caption", 'short"caption')
    assert result.exit_code == 1 and "is not a usable JSON field name" in result.stderr


@pytest.mark.parametrize("options", [
    {},
    {"captions": ["long_caption", "short_caption"], "where": "  width >= 1024 ", "caption_mode": "all"},
    {"captions": ["a.b"], "columns": ["key", "aspect_ratio", "source"], "where": " "},
])
def test_an_export_given_a_selection_s_fields_builds_the_same_selection(options: dict) -> None:
    """The registry hands a Selection to an export as keywords, which the export checks again:
    that must change nothing."""
    selection = make_selection(**options)
    assert make_selection(**dataclasses.asdict(selection)) == selection
