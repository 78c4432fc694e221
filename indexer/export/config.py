"""`export config`: SimpleTuner's multidatabackend.json entry for a dataset, checked before writing.

Every rule here is one SimpleTuner enforces at start-up (refused, with the rule) or a way it
silently drops images (warned), so a config this writes is one SimpleTuner accepts as it is.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from indexer import store
from indexer.atomic import atomic_file
from indexer.db.readonly import connect_readonly
from indexer.db.status import Status
from indexer.errors import IndexerError
from indexer.export.discovery import ImageScan, scan_images
from indexer.export.record import output_path, record_export
from indexer.export.select import options_json, sample_reasons
from indexer.wording import counts_text

PARQUET_COLUMNS = {"filename_column": "filename", "caption_column": "caption",
                   "width_column": "width", "height_column": "height"}
TEXT_EMBEDS_ID = "text-embeds"



@dataclass
class ConfigOptions:
    """The entry's tunables; None leaves a key out.

    The defaults are for 1-megapixel training by area: resolution 1.0 megapixels, images below
    0.75 MP skipped, those above 2.0 MP downsampled to 1.75 MP first.
    """

    resolution: float = 1.0
    resolution_type: str = "area"
    minimum_image_size: float | None = 0.75
    maximum_image_size: float | None = 2.0
    target_downsample_size: float | None = 1.75
    metadata_backend: str = "parquet"
    caption_strategy: str | None = None  # None: choose textfile or parquet from what is on disk
    cache_dir_vae: str | None = None
    text_embeds_cache_dir: str | None = None
    backend: str = "local"  # local (files + Parquet) or webshart (tar shards read in place)
    webshart_cache_dir: str | None = None


def export_config(
    db_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    parquet: str | os.PathLike[str] | None = None,
    options: ConfigOptions | None = None,
) -> dict:
    """Write (or merge into) OUT an image entry for the dataset plus a default text_embeds entry."""
    options = options or ConfigOptions()
    path = output_path(out, "json")
    check_sizes(options)
    if not os.path.exists(db_path):
        raise IndexerError(
            f"database {db_path} does not exist: run `indexer index ROOT --db {db_path}` first"
        )
    if options.backend == "webshart":
        from indexer.export.webshart_config import export_webshart_config  # it builds on this module

        return export_webshart_config(db_path, path, dataset_id, options)
    conn, _guard = connect_readonly(db_path, upgrade=True)
    try:
        dataset, root = store.resolve_dataset(conn, dataset_id)
        check_exportable(dataset, root, sample_reasons(conn, dataset), db_path, path)
        data_version = conn.execute(
            "SELECT data_version FROM datasets WHERE id = ?", (dataset,)).fetchone()[0]
        parquet_path = _parquet_path(conn, dataset, parquet, options)
        captions_exported = conn.execute(
            "SELECT 1 FROM exports WHERE dataset = ? AND kind = 'captions'", (dataset,)
        ).fetchone() is not None
        small = count_small_images(conn, dataset, options)
    finally:
        conn.close()
    scan = scan_images(root)
    strategy, reason = choose_caption_strategy(options, scan, captions_exported, root,
                                               list_captions=has_list_captions(parquet_path))
    entry = image_entry(dataset, root, path, parquet_path, strategy, options)
    entries, replaced = merge_entries(read_existing(path), entry, text_embeds_entry(path, options))
    with atomic_file(path) as temp:
        temp.write_text(json.dumps(entries, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = {
        "kind": "config", "dataset": dataset, "path": str(path), "caption_strategy": strategy,
        "reason": reason, "replaced": replaced, "entries": len(entries), "entry": entry,
        "warnings": warnings(scan, small, options),
    }
    record_export(db_path, dataset, "config", path,
                  options=options_json({**vars(options), "parquet": parquet_path}),
                  data_version=data_version, rows=None, summary=summary, file_path=path)
    return summary


def check_sizes(options: ConfigOptions) -> None:
    """SimpleTuner's size rules: refuse what its config validation would reject."""
    if options.resolution_type not in ("area", "pixel", "pixel_area"):
        raise IndexerError(f"resolution_type {options.resolution_type!r}: use area, pixel or pixel_area")
    if options.maximum_image_size is not None and options.target_downsample_size is None:
        raise IndexerError(
            "maximum_image_size is set without target_downsample_size: SimpleTuner refuses that; "
            "set --target-downsample-size too (or --maximum-image-size none)"
        )
    low, high = options.minimum_image_size, options.maximum_image_size
    if low is not None and high is not None and low > high:
        raise IndexerError(
            f"minimum_image_size {low} is larger than maximum_image_size {high}: SimpleTuner would skip "
            "every image below the minimum and shrink every one above the maximum, so the sizes are "
            "swapped or mistyped; give --minimum-image-size <= --maximum-image-size"
        )
    sized = {"maximum_image_size": options.maximum_image_size,
             "target_downsample_size": options.target_downsample_size}
    for name, value in sized.items():
        if value is None:
            continue
        if options.resolution_type in ("area", "pixel_area") and value >= 20:
            raise IndexerError(
                f"{name} {value} with resolution_type area must be < 20 (megapixels): SimpleTuner refuses "
                "larger values; give megapixels, or use --resolution-type pixel for pixel sizes"
            )
        if options.resolution_type == "pixel" and value < 512:
            raise IndexerError(
                f"{name} {value} with resolution_type pixel must be >= 512 (pixels): SimpleTuner refuses "
                "smaller values; give pixels, or use --resolution-type area for megapixels"
            )
    if options.metadata_backend not in ("parquet", "discovery"):
        raise IndexerError(f"metadata_backend {options.metadata_backend!r}: use parquet or discovery")
    if options.caption_strategy == "parquet" and options.metadata_backend != "parquet":
        raise IndexerError(
            "caption_strategy parquet needs metadata_backend parquet: SimpleTuner refuses it with the "
            f"{options.metadata_backend} backend; use --metadata-backend parquet or "
            "--caption-strategy textfile"
        )


def _parquet_path(conn: sqlite3.Connection, dataset: str, parquet: str | os.PathLike[str] | None,
                  options: ConfigOptions) -> str | None:
    """The Parquet the entry points at: the named one, else the dataset's last export."""
    if options.metadata_backend != "parquet":
        return None
    if parquet is None:
        row = conn.execute(
            "SELECT path FROM exports WHERE dataset = ? AND kind = 'parquet'"
            " ORDER BY exported_at DESC, id DESC LIMIT 1", (dataset,)).fetchone()
        if row is None:
            raise IndexerError(
                f"no Parquet exported for dataset {dataset!r} yet: run `indexer export parquet OUT` first, "
                "or name one with --parquet PATH"
            )
        parquet = row[0]
    path = Path(parquet).expanduser().absolute()
    if not path.is_file():
        raise IndexerError(
            f"parquet path {path} does not exist: SimpleTuner would fail to load it; "
            "run `indexer export parquet` to (re)create it or pass --parquet PATH"
        )
    check_parquet_columns(path)
    check_parquet_rows(conn, dataset, path)
    return str(path)


def check_exportable(dataset: str, root: Path, reasons: dict[str, int], db_path: str | os.PathLike[str],
                     out: Path) -> None:
    """Refuse a config for a dataset SimpleTuner would find nothing to train on in."""
    if reasons.get("exportable"):
        return
    total = sum(reasons.values())
    if not total:
        raise IndexerError(
            f"dataset {dataset!r} has no sample at all, so a config would train on nothing; {out} was not "
            f"written. Put <key>.json + image pairs under {root} and run `indexer index {root}`"
        )
    counts = counts_text(dict(sorted(reasons.items())))
    raise IndexerError(
        f"dataset {dataset!r} has no exportable sample (status ok with a width and height) among its "
        f"{total:,} samples ({counts}): SimpleTuner would find nothing to train on, so {out} was not "
        f"written. `indexer problems --db {db_path}` names each file and what to fix; then run "
        f"`indexer index {root}` again"
    )


def check_parquet_rows(conn: sqlite3.Connection, dataset: str, path: Path) -> None:
    """An empty Parquet makes SimpleTuner skip every image (no row: `metadata_missing`)."""
    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise IndexerError(f"{path} is not a readable Parquet file ({exc}); re-export it") from exc
    if rows:
        return
    found = conn.execute("SELECT summary FROM exports WHERE dataset = ? AND kind = 'parquet' AND path = ?",
                         (dataset, str(path))).fetchone()
    excluded = (json.loads(found[0]) if found and found[0] else {}).get("excluded") or {}
    why = f" (excluded: {counts_text(excluded)} when it was exported)" if excluded else ""
    raise IndexerError(
        f"the Parquet {path} has no rows{why}: SimpleTuner would skip every image for lack of a row, "
        "so the config was not written. Re-export it with a --caption field the samples fill and a "
        f"--where that keeps some (`indexer export parquet {path} --caption FIELD`), or name another "
        "with --parquet PATH"
    )


def check_parquet_columns(path: Path) -> None:
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise IndexerError(f"{path} is not a readable Parquet file ({exc}); re-export it") from exc
    missing = [name for name in PARQUET_COLUMNS.values() if name not in schema.names]
    if missing:
        raise IndexerError(
            f"{path} has no {', '.join(missing)} column(s): the config's parquet block names them; "
            "point --parquet at a file made by `indexer export parquet`"
        )
    if str(schema.field("filename").type) not in ("string", "large_string"):
        raise IndexerError(f"{path}: column filename must hold strings for SimpleTuner to match files")


def has_list_captions(parquet_path: str | None) -> bool:
    """Whether the Parquet's caption column holds several captions a row (`--caption-mode all`)."""
    if parquet_path is None:
        return False
    return pa.types.is_list(pq.read_schema(parquet_path).field("caption").type)


def choose_caption_strategy(options: ConfigOptions, scan: ImageScan, captions_exported: bool,
                            root: Path, *, list_captions: bool = False) -> tuple[str, str]:
    """textfile only when SimpleTuner will find a .txt for every image it discovers, and the
    Parquet does not hold every caption of each image itself (a list caption column)."""
    complete = scan.images > 0 and scan.without_caption_count == 0
    if options.caption_strategy == "textfile":
        if not complete:
            first = ", ".join(scan.without_caption) or "(no images found)"
            raise IndexerError(
                f"caption_strategy textfile refused: {scan.without_caption_count:,} of "
                f"{scan.images:,} images under {root} have no .txt, and SimpleTuner aborts on the first one "
                f"(e.g. {first}); "
                "run `indexer export captions`, and caption or move the images it does not export "
                "(see their status in the samples table), or use --caption-strategy parquet"
            )
        return "textfile", "forced by --caption-strategy textfile; every image has its .txt"
    if options.caption_strategy == "parquet":
        return "parquet", "forced by --caption-strategy parquet"
    if options.metadata_backend != "parquet":
        if complete:
            return "textfile", "every image has a .txt and the metadata backend is not parquet"
        raise IndexerError(
            f"no usable caption strategy: {scan.without_caption_count:,} images have no .txt and "
            "captions from parquet need --metadata-backend parquet; run `indexer export captions` or "
            "use the parquet backend"
        )
    if list_captions:
        return "parquet", ("the Parquet holds every caption of each image (a list caption column, "
                           "--caption-mode all); SimpleTuner draws one of them at each step")
    if not captions_exported:
        return "parquet", ("no caption files exported (`indexer export captions`), so captions come "
                           "from the Parquet")
    if not complete:
        return "parquet", (f"{scan.without_caption_count:,} of {scan.images:,} images have no .txt "
                           f"(e.g. {', '.join(scan.without_caption[:2])}); textfile would abort")
    return "textfile", "caption files are exported and every image under the root has its .txt"


def count_small_images(conn: sqlite3.Connection, dataset: str, options: ConfigOptions) -> int:
    """Exportable samples below minimum_image_size, which SimpleTuner skips silently."""
    if options.minimum_image_size is None:
        return 0
    if options.resolution_type == "pixel":
        test = "min(width, height) < :minimum"
        minimum = options.minimum_image_size
    else:
        test = "width * height < :minimum"
        minimum = options.minimum_image_size * 1_000_000
    return conn.execute(
        f"SELECT count(*) FROM samples WHERE dataset = :dataset AND status = '{Status.OK}' AND {test}",
        {"dataset": dataset, "minimum": minimum},
    ).fetchone()[0]


def warnings(scan: ImageScan, small: int, options: ConfigOptions) -> list[str]:
    found = []
    if scan.upper_case_count:
        found.append(
            f"{scan.upper_case_count:,} images have upper-case extensions SimpleTuner never discovers "
            f"(e.g. {', '.join(scan.upper_case)}); rename them to lower case and re-index"
        )
    if scan.not_utf8_count:
        found.append(
            f"{scan.not_utf8_count:,} image paths are not valid UTF-8 (e.g. {', '.join(scan.not_utf8)}): "
            "`indexer index` skips them, so no export holds them, but SimpleTuner still finds them; "
            "rename them (e.g. with `convmv`) and run index again"
        )
    if small:
        unit = "pixels on the short edge" if options.resolution_type == "pixel" else "megapixels"
        found.append(
            f"{small:,} samples are below minimum_image_size {options.minimum_image_size} ({unit}); "
            "SimpleTuner skips them silently (lower --minimum-image-size to keep them)"
        )
    return found


def image_entry(dataset: str, root: Path, out: Path, parquet_path: str | None, strategy: str,
                options: ConfigOptions) -> dict:
    entry: dict = {
        "id": dataset,
        "type": "local",
        "instance_data_dir": str(root),
        "resolution": options.resolution,
        "resolution_type": options.resolution_type,
    }
    for name in ("minimum_image_size", "maximum_image_size", "target_downsample_size"):
        value = getattr(options, name)
        if value is not None:
            entry[name] = value
    entry["cache_dir_vae"] = options.cache_dir_vae or str(out.parent / "cache" / "vae" / dataset)
    entry["caption_strategy"] = strategy
    entry["metadata_backend"] = options.metadata_backend
    if parquet_path is not None:
        entry["parquet"] = {"path": parquet_path, **PARQUET_COLUMNS, "identifier_includes_extension": True}
    return entry


def text_embeds_entry(out: Path, options: ConfigOptions) -> dict:
    return {
        "id": TEXT_EMBEDS_ID,
        "dataset_type": "text_embeds",
        "default": True,
        "type": "local",
        "cache_dir": options.text_embeds_cache_dir or str(out.parent / "cache" / "text"),
    }


def read_existing(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexerError(
            f"{path} exists but is not valid JSON ({exc}); fix it (e.g. a trailing comma) or choose "
            "another OUT — it was left as it is"
        ) from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise IndexerError(f"{path} is not a list of dataset entries as SimpleTuner expects; fix it or "
                           "choose another OUT — it was left as it is")
    return entries


def merge_entries(existing: list[dict], entry: dict, text_embeds: dict) -> tuple[list[dict], bool]:
    """Replace the entry with the same id in place; add a default text_embeds entry if none is."""
    entries = [dict(e) for e in existing]
    replaced = False
    for number, old in enumerate(entries):
        if old.get("id") == entry["id"]:
            entries[number] = entry
            replaced = True
    if not replaced:
        entries.append(entry)
    has_default = any(e.get("dataset_type") == "text_embeds" and e.get("default") is True
                      for e in entries if e.get("id") != TEXT_EMBEDS_ID)
    ours = [n for n, e in enumerate(entries) if e.get("id") == TEXT_EMBEDS_ID]
    if not has_default:
        if ours:
            entries[ours[0]] = {**entries[ours[0]], **text_embeds}
        else:
            entries.append(text_embeds)
    return entries, replaced
