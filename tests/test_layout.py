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
BASE = {"errors", "wording", "progress", "store"}
ALLOWED = {
    "base": {"base"},
    "db": {"base"},
    "ingest": {"base", "db"},
    "watch": {"base", "db", "ingest"},
    "export": {"base", "db", "ingest"},
    "inspect": {"base", "db", "ingest"},
    "render": {"base", "db", "inspect"},
    "cli": {"base", "db", "ingest", "watch", "export", "inspect", "render", "root"},
}


def part(module: str) -> str:
    """indexer.export.parquet -> export; indexer.ingest.index -> ingest; indexer -> root."""
    names = module.split(".")[1:]
    if not names or names[0] in ("__init__", "__main__"):
        return "root"
    if names[0] in BASE:
        return "base"
    if names[0] in ALLOWED:
        return names[0]
    return "ingest"  # index, scan, read, extract, derived


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
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("indexer", *path.relative_to(PACKAGE).with_suffix("").parts))
        if part(module) == "root":
            continue
        for target in imports(path):
            if part(target) not in ALLOWED[part(module)] | {part(module)}:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_package_root_offers_the_library_api_and_loads_it_on_first_use():
    code = ("import sys, indexer; loaded = [m for m in sys.modules if m.startswith(('pyarrow', 'watchdog'))];"
            " [getattr(indexer, name) for name in indexer.__all__]; print(len(loaded))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0"
    for name in indexer.API:
        assert callable(getattr(indexer, name)), name
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    for name in ("index_root", "export_parquet", "watch_root", "search", "dataset_stats"):
        assert f"{name}(" in readme, f"README's Python API example does not show {name}"


def test_every_export_command_runs_through_the_registry_with_its_summary_and_api_name():
    from indexer.cli.export import export_group
    from indexer.export.registry import EXPORTS
    from indexer.render.exports import SUMMARY_LINES

    assert set(export_group.commands) == set(EXPORTS) == set(SUMMARY_LINES)
    assert {spec.function_name for spec in EXPORTS.values()} <= set(indexer.API)
