"""indexer: an incremental SQLite index of image+caption samples, and the exports trainers consume.

The library API (README "Python API") is importable from here; each name is loaded on first use,
so `import indexer` stays cheap (the exports need pyarrow, watch needs watchdog).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
API = {
    "index_root": "indexer.ingest.index",
    "extract_shards": "indexer.extract",
    # `indexer.materialize` is the package (Python sets it once it is imported), so the function
    # is offered under a name of its own
    "materialize_samples": "indexer.materialize",
    "watch_root": "indexer.watch",
    "follow_up_exports": "indexer.export.registry",
    "run_export": "indexer.export.registry",
    "make_selection": "indexer.export.selection",
    "export_parquet": "indexer.export.parquet",
    "export_captions": "indexer.export.captions",
    "export_config": "indexer.export.config",
    "ConfigOptions": "indexer.export.config",
    "export_jsonl": "indexer.export.jsonl",
    "export_kohya": "indexer.export.kohya",
    "export_aitk": "indexer.export.aitk",
    "export_webshart": "indexer.export.webshart",
    "export_musubi": "indexer.export.musubi",
    "MusubiOptions": "indexer.export.musubi",
    "dataset_stats": "indexer.inspect.stats",
    "list_problems": "indexer.inspect.problems",
    "search": "indexer.inspect.search",
    "search_hits": "indexer.inspect.search",
    "run_query": "indexer.render.rows",
    "write_report": "indexer.render.html",
    "Status": "indexer.db.status",
    "IndexerError": "indexer.errors",
}
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    module = API.get(name)
    if module is None:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
