"""The code layout README's "Code layout" describes: imports follow the flow of the data, and the
package root offers the library API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import indexer

PACKAGE = Path(indexer.__file__).resolve().parent
# What each part may import (besides itself): the stages below it in the flow, never one after it.
BASE = {"errors", "wording", "progress", "store", "media", "atomic", "unsynced"}
ALLOWED = {
    "base": {"base"},
    "db": {"base"},
    "ingest": {"base", "db"},
    "extract": {"base", "db", "ingest"},
    "watch": {"base", "db", "ingest"},
    "export": {"base", "db", "ingest"},
    "inspect": {"base", "db", "ingest"},
    "materialize": {"base", "db", "ingest", "extract", "export"},
    "render": {"base", "db", "inspect"},
    "cli": {"base", "db", "ingest", "extract", "watch", "export", "inspect", "render", "materialize", "root"},
}
# A module this long holds more than one idea: past the ceiling, split it where it would put a
# section banner (as extract/ and ingest/pipeline.py were split), rather than let it grow on.
MAX_LINES = 450
# The three writers meet only in the ingest's write path (ingest/pipeline.py) and run lifecycle
# (ingest/run.py): none imports another's modules, except watch's rescans and batches, which are
# index updates inside watch's own run.
WRITERS = ("indexer.ingest.index", "indexer.extract", "indexer.watch")
WRITERS_MEET = {"indexer.ingest.index.update_dataset", "indexer.ingest.index.update_paths"}


def modules() -> list[tuple[str, Path]]:
    return [(".".join(("indexer", *path.relative_to(PACKAGE).with_suffix("").parts)), path)
            for path in sorted(PACKAGE.rglob("*.py"))]


def part(module: str) -> str:
    """indexer.export.parquet -> export; indexer.store -> base; indexer, indexer.__version__ -> root;
    a module at the package root that no part claims -> unplaced."""
    names = module.split(".")[1:]
    is_module = bool(names) and ((PACKAGE / names[0]).is_dir() or (PACKAGE / f"{names[0]}.py").is_file())
    if not is_module or names[0] in ("__init__", "__main__"):  # the root itself, or a name in it
        return "root"
    if names[0] in BASE:
        return "base"
    return names[0] if names[0] in ALLOWED else "unplaced"


def writer(module: str) -> str | None:
    """Which of the three writers a module (or a name in one) belongs to, if any."""
    return next((w for w in WRITERS if module == w or module.startswith(w + ".")), None)


def imports(path: Path) -> set[str]:
    """Every indexer module a file imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("indexer")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("indexer"):
            assert node.module is not None
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # a module or a name in it
    return found


def test_imports_follow_the_flow():
    wrong = []
    for module, path in modules():
        if part(module) == "root":
            continue
        for target in imports(path):
            if part(target) not in ALLOWED.get(part(module), set()) | {part(module)}:
                wrong.append(f"{module} imports {target}")
    assert wrong == []
    assert {part(module) for module, _path in modules()} == {"root", *ALLOWED}


# What each stage after ingest may use of it, by name: the ingest's published interface. A new
# name here is a decision (a seam widened), not a side effect of an import.
INGEST_FOR = {
    "extract": {
        "recorder": {"Recorder", "ScratchBatch"}, "rows": {"CompactResult", "compact"},
        "records": {"StatRow", "recorded_files"}, "read": {"SampleRecord", "read_sample"},
        "change": {"FileRecord", "NS_PER_SECOND", "clamp_int64"},
        "guard": {"REPORT", "describe", "failed_record", "raise_if_environment"},
        "tar_members": {"Member", "TarCompressed", "TarDamaged", "TarReadError", "iter_members"},
        "tar_policy": {"*"}, "pipeline": {"KEYS_PER_COMMIT"},
        "walk": {"JSON_EXTENSION", "SAMPLE_EXTENSIONS", "STAGING_PREFIX", "is_utf8", "split_sample_path"},
        "workers": {"LARGE_TASKS_AHEAD", "default_workers", "init_worker", "map_in_order"},
        "run": {"resolve_root", "writer_run"},
        "engines": {"default_readers", "fallback_for", "pool_for", "run_report"},
        "derived": {"build_derived", "defer_derived"},
        "bulk": {"SCRATCH_SUFFIX", "remove_scratch_folder", "scratch_folder", "scratch_path",
                 "write_scratch"},
    },
    "watch": {
        "change": {"*"}, "index": {"update_dataset", "update_paths"},
        "run": {"resolve_root", "writer_run"}, "walk": {"STAGING_PREFIX", "split_sample_path", "walk"},
        "workers": {"default_workers"},
    },
    "export": {"walk": {"STAGING_PREFIX"}, "change": {"NS_PER_SECOND"}},
    "materialize": {
        "recorder": {"Recorder", "SHOWN_LIMIT"}, "rows": {"compact"}, "records": {"recorded_files"},
        "change": {"ShardRecord", "current_signature", "object_record", "object_shard_record",
                   "shard_record"},
        "guard": {"describe", "raise_if_environment"}, "run": {"writer_run"},
        "remote": {"ObjectInfo", "RemoteRoot", "is_remote", "shard_list_root"}, "shards": {"stored_shards"},
        "walk": {"STAGING_PREFIX", "split_sample_path"},
        "workers": {"LARGE_TASKS_AHEAD", "map_in_order"},
        "engines": {"ENGINES", "default_readers", "fallback_for", "pool_for", "run_report"},
    },
    "inspect": {"derived": {"deferred_status"}},
    "render": {},
    "cli": {"index": {"index_root"}, "engines": {"ENGINES"}},
}


def ingest_names(path: Path) -> set[tuple[str, str]]:
    """(ingest module, name) of every name a file takes from the ingest ('*': the module itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "indexer.ingest":
            found |= {(alias.name, "*") for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("indexer.ingest."):
            found |= {(node.module.split(".")[2], alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[2], "*") for alias in node.names
                      if alias.name.startswith("indexer.ingest.")}
    return found


def test_later_stages_use_only_the_ingests_published_names():
    wrong = []
    for module, path in modules():
        stage = part(module)
        if stage not in INGEST_FOR:
            continue
        allowed = INGEST_FOR[stage]
        wrong += [f"{module} imports indexer.ingest.{source}.{name}"
                  for source, name in sorted(ingest_names(path))
                  if not ({name, "*"} & allowed.get(source, set()))]
    assert wrong == []


def test_index_extract_and_watch_meet_only_in_the_ingest_pipeline_and_run():
    crossing = []
    for module, path in modules():
        own = writer(module)
        if own is None:
            continue
        crossing += [f"{module} imports {target}" for target in sorted(imports(path))
                     if writer(target) not in (None, own) and target not in WRITERS_MEET]
    assert crossing == []
    lifecycle = {writer(module) for module, path in modules()
                 if "indexer.ingest.run.writer_run" in imports(path)}
    write_path = {writer(module) for module, path in modules()
                  if any(target.startswith("indexer.ingest.recorder.") for target in imports(path))}
    assert lifecycle >= set(WRITERS) and write_path >= {"indexer.ingest.index", "indexer.extract"}


def test_no_module_is_over_the_line_ceiling():
    long = {module: n for module, path in modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_the_package_root_offers_the_library_api_and_loads_it_on_first_use():
    code = ("import sys, indexer; loaded = [m for m in sys.modules if m.startswith(('pyarrow', 'watchdog'))];"
            " [getattr(indexer, name) for name in indexer.__all__]; print(len(loaded))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0"
    for name in indexer.API:
        assert callable(getattr(indexer, name)), name
    page = (PACKAGE.parent / "docs" / "reference" / "python-api.md").read_text(encoding="utf-8")
    for name in ("index_root", "export_parquet", "watch_root", "search", "dataset_stats"):
        assert f"indexer.{name}(" in page, f"the Python API page's example does not show {name}"
    assert not [name for name in indexer.API if f"`{name}" not in page], "not on the Python API page"


def test_every_export_command_runs_through_the_registry_with_its_summary_and_api_name():
    from indexer.cli.export import export_group
    from indexer.export.registry import EXPORTS
    from indexer.render.exports import SUMMARY_LINES

    assert set(export_group.commands) == set(EXPORTS) == set(SUMMARY_LINES)
    assert {spec.function_name for spec in EXPORTS.values()} <= set(indexer.API)
