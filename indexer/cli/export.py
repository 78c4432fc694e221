"""`indexer export parquet|captions|config|jsonl|kohya|aitk|webshart|musubi`: thin commands over
indexer.export."""

from __future__ import annotations

from typing import Any

import click

from indexer.cli.common import (
    WHERE_HELP,
    Decorator,
    db_option,
    id_option,
    json_option,
    options,
    quiet_option,
    resolve_db,
    selection_options,
    show,
    show_progress,
)
from indexer.errors import ExportIncomplete
from indexer.export.config import ConfigOptions
from indexer.export.musubi import MusubiOptions
from indexer.export.registry import run_export
from indexer.export.selection import Selection
from indexer.render.exports import export_text


class OptionalFloat(click.ParamType):
    """A number, or `none` to leave the key out of the config."""

    name = "NUMBER|none"

    def convert(self, value, param, ctx):  # type: ignore[override]
        if value is None or isinstance(value, float):
            return value
        if str(value).lower() == "none":
            return None
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number (or `none`)", param, ctx)


def row_export_options(*, captions: bool = True, columns: bool = False,
                       where_help: str = WHERE_HELP) -> Decorator:
    """--id, the options that choose the rows (as one `selection`), --db, --quiet, --json: every
    export of rows."""
    return options(id_option(), selection_options(captions=captions, columns=columns, where_help=where_help),
                   db_option, quiet_option, json_option)


def export_and_show(kind: str, db: str | None, quiet: bool, as_json: bool, **values: Any) -> dict:
    """Run `indexer export KIND` through the registry, with a progress bar where one is wanted,
    and print its summary; returns the summary for what the command adds."""
    summary = run_export(kind, resolve_db(db), progress=show_progress(quiet, as_json), **values)
    show(summary, export_text, as_json=as_json, quiet=quiet)
    return summary


@click.group("export")
def export_group() -> None:
    """Write what trainers consume from the index: Parquet, caption files, SimpleTuner config, jsonl,
    sd-scripts metadata, ai-toolkit's size cache, webshart indexes of tar shards, musubi-tuner's JSONL."""


@export_group.command("parquet")
@click.argument("out", type=click.Path(dir_okay=False, path_type=str))
@row_export_options(columns=True)
def parquet_command(out: str, dataset_id: str | None, selection: Selection, db: str | None, quiet: bool,
                    as_json: bool) -> None:
    """Write OUT: width, height, caption, filename (image path relative to the root) per sample."""
    export_and_show("parquet", db, quiet, as_json, selection=selection, out=out, dataset_id=dataset_id)


@export_group.command("captions")
@row_export_options()
@click.option("--overwrite", is_flag=True, help="Also replace .txt files this tool did not write.")
@click.option("--allow-mass-removal", is_flag=True,
              help="Go on when the run would remove more than half of the caption files it wrote.")
def captions_command(dataset_id: str | None, selection: Selection, db: str | None, quiet: bool,
                     as_json: bool, overwrite: bool, allow_mass_removal: bool) -> None:
    """Write <image stem>.txt beside each exported image; only new or changed captions are written."""
    summary = export_and_show("captions", db, quiet, as_json, selection=selection, dataset_id=dataset_id,
                              overwrite=overwrite, allow_mass_removal=allow_mass_removal)
    if not summary["complete"]:
        raise ExportIncomplete(
            f"{summary['failed']:,} caption files under {summary['root']} could not be written or removed "
            f"(e.g. {summary['errors'][0]}); the export is recorded as stale: fix the cause (permissions, a "
            "read-only mount) and rerun `indexer export captions`, which retries them"
        )


@export_group.command("config")
@click.argument("out", type=click.Path(dir_okay=False, path_type=str))
@id_option()
@db_option
@quiet_option
@json_option
@click.option("--parquet", "parquet", metavar="PATH", default=None,
              help="Parquet the entry points at (default: the dataset's last `export parquet`).")
@click.option("--caption-strategy", type=click.Choice(["textfile", "parquet"]), default=None,
              help="Force it (default: textfile only when every image has its .txt, else parquet).")
@click.option("--metadata-backend", type=click.Choice(["parquet", "discovery"]),
              default=ConfigOptions.metadata_backend, show_default=True)
@click.option("--resolution", type=float, default=ConfigOptions.resolution, show_default=True)
@click.option("--resolution-type", type=click.Choice(["area", "pixel", "pixel_area"]),
              default=ConfigOptions.resolution_type, show_default=True)
@click.option("--minimum-image-size", type=OptionalFloat(), default=ConfigOptions.minimum_image_size,
              show_default=True)
@click.option("--maximum-image-size", type=OptionalFloat(), default=ConfigOptions.maximum_image_size,
              show_default=True)
@click.option("--target-downsample-size", type=OptionalFloat(),
              default=ConfigOptions.target_downsample_size, show_default=True)
@click.option("--cache-dir-vae", metavar="DIR", default=None,
              help="VAE cache folder (default: OUT's folder/cache/vae/ID).")
@click.option("--text-embeds-cache-dir", metavar="DIR", default=None,
              help="Text embeds cache folder (default: OUT's folder/cache/text).")
@click.option("--backend", type=click.Choice(["local", "webshart"]), default="local", show_default=True,
              help="local: image files + Parquet; webshart: tar shards read in place (SimpleTuner 4.x).")
@click.option("--webshart-cache-dir", metavar="DIR", default=None,
              help="webshart bucket cache (default: OUT's folder/cache/webshart/ID).")
def config_command(out: str, dataset_id: str | None, db: str | None, quiet: bool, as_json: bool,
                   parquet: str | None, **settings: object) -> None:
    """Write (or merge into) OUT.json a SimpleTuner multidatabackend entry for the dataset."""
    summary = run_export("config", resolve_db(db), out=out, dataset_id=dataset_id, parquet=parquet,
                         options=ConfigOptions(**settings))  # type: ignore[arg-type]
    show(summary, export_text, as_json=as_json, quiet=quiet)
    if not as_json:
        for warning in summary["warnings"]:
            click.echo(f"warning: {warning}", err=True)


@export_group.command("webshart")
@row_export_options()
@click.option("--metadata", metavar="DIR", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Write the indexes under DIR (at the shards' paths under the root; a Hub dataset's: "
                   "in the repo) instead of beside them.")
def webshart_command(dataset_id: str | None, selection: Selection, db: str | None, quiet: bool,
                     as_json: bool, metadata: str | None) -> None:
    """Write X.json beside each indexed X.tar (or under --metadata): webshart's index, with sizes and
    captions, for SimpleTuner's `type: webshart`."""
    export_and_show("webshart", db, quiet, as_json, selection=selection, dataset_id=dataset_id,
                    metadata=metadata)


@export_group.command("jsonl")
@click.argument("out", type=click.Path(dir_okay=False, path_type=str))
@row_export_options()
def jsonl_command(out: str, dataset_id: str | None, selection: Selection, db: str | None, quiet: bool,
                  as_json: bool) -> None:
    """Write OUT as Hugging Face imagefolder metadata (file_name + text); ROOT/metadata.jsonl fits."""
    export_and_show("jsonl", db, quiet, as_json, selection=selection, out=out, dataset_id=dataset_id)


@export_group.command("kohya")
@click.argument("out", type=click.Path(dir_okay=False, path_type=str))
@row_export_options()
@click.option("--relative", is_flag=True,
              help="Write image paths relative to the dataset root (then sd-scripts' --train_data_dir "
                   "must be the root); default: absolute paths, right whatever train_data_dir is.")
def kohya_command(out: str, dataset_id: str | None, selection: Selection, db: str | None, quiet: bool,
                  as_json: bool, relative: bool) -> None:
    """Write OUT.jsonl as sd-scripts fine-tuning metadata: image_path, caption, image_size."""
    export_and_show("kohya", db, quiet, as_json, selection=selection, out=out, dataset_id=dataset_id,
                    relative=relative)


class Resolution(click.ParamType):
    """musubi-tuner's resolution: one number (a square) or WIDTHxHEIGHT."""

    name = "N|WxH"

    def convert(self, value, param, ctx):  # type: ignore[override]
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().split("x")
        if len(parts) in (1, 2) and all(part.isdigit() for part in parts):
            width, height = int(parts[0]), int(parts[-1])
            return width, height
        self.fail(f"{value!r} is not a resolution: give 1024 or 1328x1328", param, ctx)


@export_group.command("musubi")
@click.argument("out", type=click.Path(dir_okay=False, path_type=str))
@row_export_options()
@click.option("--config", metavar="OUT.toml", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Also write (or merge into) musubi-tuner's dataset config naming OUT.")
@click.option("--cache-directory", metavar="DIR", default=None,
              help="musubi's latent and text encoder cache for this dataset (default: OUT's "
                   "folder/cache/musubi/<OUT's name>).")
@click.option("--resolution", type=Resolution(), default="1024", show_default=True)
@click.option("--no-bucket", "enable_bucket", flag_value=False, default=True,
              help="One resolution for every image instead of aspect-ratio buckets.")
@click.option("--bucket-no-upscale", is_flag=True, help="Never upscale an image to fill its bucket.")
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True)
@click.option("--num-repeats", type=click.IntRange(1), default=1, show_default=True)
def musubi_command(out: str, dataset_id: str | None, selection: Selection, db: str | None, quiet: bool,
                   as_json: bool, config: str | None, **settings: Any) -> None:
    """Write OUT.jsonl as musubi-tuner's image JSONL (image_path, caption), and with --config its TOML."""
    export_and_show("musubi", db, quiet, as_json, selection=selection, out=out, dataset_id=dataset_id,
                    config=config, settings=MusubiOptions(**settings))


@export_group.command("aitk")
@row_export_options(captions=False,
                    where_help="Boolean expression over samples columns, e.g. \"width >= 1024\" (read-only).")
@click.option("--folder", metavar="DIR", default=None,
              help="ai-toolkit's folder_path, exactly as in its config: the dataset root (default) or a "
                   "folder under it; keys are relative to it and images outside it are left out.")
def aitk_command(dataset_id: str | None, selection: Selection, db: str | None, quiet: bool, as_json: bool,
                 folder: str | None) -> None:
    """Write (or merge into) FOLDER/.aitk_size.json: ai-toolkit's image size cache."""
    export_and_show("aitk", db, quiet, as_json, selection=selection, dataset_id=dataset_id, folder=folder)


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(export_group)
