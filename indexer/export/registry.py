"""Every export by name, and the one way each is run: `indexer export` runs each kind through here,
and so do the follow-up actions `indexer watch` re-runs after a change, so both pass the same
options in the same way.

A caller hands over the user's choice of rows as one Selection (built once, by make_selection)
and the kind's own options. Each export function's signature is the only list of what it takes:
the Selection's fields it names are filled from the Selection, the rest from the caller's values,
and anything it does not take is refused rather than dropped.

The functions are loaded on first use: `indexer watch` without exports never imports pyarrow.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from indexer.export.selection import DEFAULT_SELECTION, SELECTION_FIELDS, Selection

ExportFunction = Callable[..., dict]  # (db_path, **options) -> the export's summary


@dataclass(frozen=True)
class ExportKind:
    """Where a kind's export function lives: imported only when the export runs."""

    module: str
    function_name: str

    def function(self) -> ExportFunction:
        return getattr(importlib.import_module(self.module), self.function_name)

    def arguments(self, selection: Selection, values: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of this kind's function: the Selection's fields it takes, then the
        other values. A value it does not take, a Selection field passed loose, or a choice of rows
        it cannot honour (say --caption for sizes only) is a caller's bug: TypeError."""
        takes = inspect.signature(self.function()).parameters
        chosen = {name: getattr(selection, name) for name in SELECTION_FIELDS if name in takes}
        unused = [name for name in SELECTION_FIELDS
                  if name not in takes and getattr(selection, name) != getattr(DEFAULT_SELECTION, name)]
        wrong = sorted(set(values) - set(takes) | set(values) & set(SELECTION_FIELDS) | set(unused))
        if wrong:
            raise TypeError(f"{self.function_name}: {', '.join(wrong)} do not apply here (the choice of "
                            f"rows goes in the selection; it takes {', '.join(takes)})")
        return {**chosen, **values}


EXPORTS: dict[str, ExportKind] = {
    "parquet": ExportKind("indexer.export.parquet", "export_parquet"),
    "captions": ExportKind("indexer.export.captions", "export_captions"),
    "config": ExportKind("indexer.export.config", "export_config"),
    "jsonl": ExportKind("indexer.export.jsonl", "export_jsonl"),
    "kohya": ExportKind("indexer.export.kohya", "export_kohya"),
    "aitk": ExportKind("indexer.export.aitk", "export_aitk"),
    "webshart": ExportKind("indexer.export.webshart", "export_webshart"),
    "musubi": ExportKind("indexer.export.musubi", "export_musubi"),
}


def run_export(kind: str, db_path: str | os.PathLike[str], selection: Selection = DEFAULT_SELECTION,
               **values: Any) -> dict:
    """Run one export of the database: these rows (`selection`, from make_selection) with the
    kind's other option values (out, dataset_id, progress, ...); returns its summary."""
    spec = EXPORTS[kind]
    return spec.function()(db_path, **spec.arguments(selection, values))


def export_action(kind: str, db_path: str | os.PathLike[str], function: ExportFunction | None = None, *,
                  selection: Selection = DEFAULT_SELECTION, **values: Any) -> Callable[[str], dict]:
    """This export as a follow-up action: called with a dataset id, it exports that dataset.

    `function` replaces the library function (tests inject fakes); it gets the same arguments.
    """
    spec = EXPORTS[kind]
    db_path = os.fspath(db_path)

    def action(dataset: str) -> dict:
        run = function or spec.function()
        return run(db_path, **spec.arguments(selection, {**values, "dataset_id": dataset}))

    return action


def follow_up_exports(
    db_path: str | os.PathLike[str],
    selection: Selection = DEFAULT_SELECTION,
    *,
    export_parquet: str | os.PathLike[str] | None = None,
    export_captions: bool = False,
    allow_mass_removal: bool = False,
    exporters: Mapping[str, ExportFunction] | None = None,
) -> dict[str, Callable[[str], dict]]:
    """The exports `indexer watch --export-parquet/--export-captions` re-runs after each change,
    as `watch_root(after_change=...)` takes them, both of the rows `selection` chooses.
    `exporters` may replace the export functions by kind ({"parquet": f, "captions": g}), for tests."""
    exporters = exporters or {}
    actions = {}
    if export_parquet:
        actions["parquet"] = export_action("parquet", db_path, exporters.get("parquet"), selection=selection,
                                           out=os.fspath(export_parquet), progress=False)
    if export_captions:
        actions["captions"] = export_action("captions", db_path, exporters.get("captions"),
                                            selection=selection, overwrite=False,
                                            allow_mass_removal=allow_mass_removal, progress=False)
    return actions
