"""Every export by name: its library function and how its keyword arguments are built from option
values. `indexer export` runs each kind through here, and so do the follow-up actions `indexer
watch` re-runs after a change, so both pass the same options in the same way.

The functions are loaded on first use: `indexer watch` without exports never imports pyarrow.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from indexer.export import DEFAULT_CAPTIONS

ExportFunction = Callable[..., dict]  # (db_path, **options) -> the export's summary
OptionBuilder = Callable[[Mapping[str, Any]], dict[str, Any]]
SELECTION = ("dataset_id", "captions", "caption_mode", "where", "progress")


def takes(*names: str) -> OptionBuilder:
    """An option builder passing exactly these options (captions defaulted); any other is a bug."""
    allowed = frozenset(names)

    def build(values: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise TypeError(f"options {', '.join(unknown)} do not apply here (takes {', '.join(names)})")
        options = dict(values)
        if "captions" in options:
            options["captions"] = tuple(options["captions"] or DEFAULT_CAPTIONS)
        return options

    return build


@dataclass(frozen=True)
class ExportKind:
    module: str
    function_name: str
    options: OptionBuilder

    def function(self) -> ExportFunction:
        return getattr(importlib.import_module(self.module), self.function_name)


EXPORTS: dict[str, ExportKind] = {
    "parquet": ExportKind("indexer.export.parquet", "export_parquet", takes("out", *SELECTION, "columns")),
    "captions": ExportKind("indexer.export.captions", "export_captions",
                           takes(*SELECTION, "overwrite", "allow_mass_removal")),
    "config": ExportKind("indexer.export.config", "export_config",
                         takes("out", "dataset_id", "parquet", "options")),
    "jsonl": ExportKind("indexer.export.jsonl", "export_jsonl", takes("out", *SELECTION)),
    "kohya": ExportKind("indexer.export.kohya", "export_kohya", takes("out", *SELECTION, "relative")),
    "aitk": ExportKind("indexer.export.aitk", "export_aitk",
                       takes("dataset_id", "where", "folder", "progress")),
    "webshart": ExportKind("indexer.export.webshart", "export_webshart", takes(*SELECTION, "metadata")),
}


def run_export(kind: str, db_path: str | os.PathLike[str], **values: Any) -> dict:
    """Run one export of the database with these option values; returns its summary."""
    spec = EXPORTS[kind]
    return spec.function()(db_path, **spec.options(values))


def export_action(kind: str, db_path: str | os.PathLike[str], function: ExportFunction | None = None,
                  **values: Any) -> Callable[[str], dict]:
    """This export as a follow-up action: called with a dataset id, it exports that dataset.

    `function` replaces the library function (tests inject fakes); it gets the same options.
    """
    spec = EXPORTS[kind]
    db_path = os.fspath(db_path)

    def action(dataset: str) -> dict:
        run = function or spec.function()
        return run(db_path, **spec.options({**values, "dataset_id": dataset}))

    return action


def follow_up_exports(
    db_path: str | os.PathLike[str],
    *,
    export_parquet: str | os.PathLike[str] | None = None,
    export_captions: bool = False,
    captions: tuple[str, ...] = DEFAULT_CAPTIONS,
    where: str | None = None,
    allow_mass_removal: bool = False,
    exporters: Mapping[str, ExportFunction] | None = None,
) -> dict[str, Callable[[str], dict]]:
    """The exports `indexer watch --export-parquet/--export-captions` re-runs after each change,
    as `watch_root(after_change=...)` takes them. `exporters` may replace the export functions by
    kind ({"parquet": f, "captions": g}), for tests."""
    exporters = exporters or {}
    shared = {"captions": captions, "where": where, "progress": False}
    actions = {}
    if export_parquet:
        actions["parquet"] = export_action("parquet", db_path, exporters.get("parquet"),
                                           out=os.fspath(export_parquet), **shared)
    if export_captions:
        actions["captions"] = export_action("captions", db_path, exporters.get("captions"), overwrite=False,
                                            allow_mass_removal=allow_mass_removal, **shared)
    return actions
