"""`export musubi OUT.jsonl [--config OUT.toml]`: musubi-tuner's image JSONL and its dataset config.

musubi-tuner (kohya-ss: Qwen-Image, FLUX.2, Wan, HunyuanVideo, ...) reads a dataset given as
`image_jsonl_file` line by line (ImageJsonlDatasource): `json.loads` of every line, so a blank
line aborts; `image_path` handed to `Image.open` as it is, so a relative path would be relative to
wherever training runs (paths here are absolute); `caption` required (a KeyError without it) and
used as one prompt. It opens every image to bucket it: no size is written.

It trains from its caches, not from the JSONL: `<stem>_<W>x<H>_<arch>.safetensors` (latents) and
`<stem>_<arch>_te.safetensors` (text encoder output) in the dataset's cache_directory, named by
the image file's stem alone. Two images with one stem in different folders would share a text
encoder output (and a latent when their sizes match), so only the first in key order is
exported; the others are left out as `same_stem` and named. One text encoder output an image is
also one caption an image: --caption-mode all is refused (joined, its captions would be a single
prompt with line breaks inside).

The TOML is the dataset config musubi's ConfigSanitizer validates, and it refuses any key its
schema does not know: one `[[datasets]]` table with `image_jsonl_file`, `cache_directory`
(required for a JSONL dataset: musubi's caching stops on "cache_directory is required" without
it), `resolution`, `enable_bucket`, `bucket_no_upscale`, `batch_size` and `num_repeats`. An
existing config keeps `[general]` and its other datasets (re-written, so its comments go); the
dataset with the same image_jsonl_file is replaced. Cache folders must differ between datasets
(musubi refuses a config where two share one).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from indexer.atomic import atomic_file
from indexer.errors import IndexerError
from indexer.export import DEFAULT_CAPTIONS
from indexer.export.jsonl import write_json_lines
from indexer.export.record import output_path
from indexer.export.select import ReadSnapshot
from indexer.export.selection import make_selection

ONE_CAPTION = (
    "--caption-mode all is refused for musubi: musubi-tuner caches one text encoder output per image "
    "(<stem>_<arch>_te.safetensors), so it trains on one caption an image, and the captions joined would "
    "be one prompt with line breaks inside; nothing was written. Export one caption (--caption-mode "
    "first, with --caption fallbacks)"
)
EXAMPLES = 5
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class MusubiOptions:
    """The dataset's settings in the TOML. resolution is (width, height); the defaults are for
    1-megapixel image training with aspect-ratio buckets."""

    cache_directory: str | None = None  # default: OUT's folder/cache/musubi/<OUT's stem>
    resolution: tuple[int, int] = (1024, 1024)
    enable_bucket: bool = True
    bucket_no_upscale: bool = False
    batch_size: int = 1
    num_repeats: int = 1


def export_musubi(
    db_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
    captions: Sequence[str] = DEFAULT_CAPTIONS,
    where: str | None = None,
    caption_mode: str = "first",
    config: str | os.PathLike[str] | None = None,
    settings: MusubiOptions | None = None,
    progress: bool = False,
) -> dict:
    """Write OUT (unless the last export there holds the same rows) and, with `config`, the TOML
    that names it (only when its bytes change); return the summary. Every refusal comes first."""
    selection = make_selection(captions, where, caption_mode=caption_mode)
    if selection.caption_mode == "all":
        raise IndexerError(ONE_CAPTION)
    path = output_path(out, "jsonl")
    toml = None
    if config is not None:
        toml = dataset_config(output_path(config, "toml"), path, settings or MusubiOptions())
    lines = MusubiLines()
    summary = write_json_lines(db_path, path, "musubi", selection, selection.options(), lines,
                               dataset_id=dataset_id, progress=progress, counts=lines.counts)
    if toml is not None:
        config_path, text = toml
        summary["config"] = {"path": str(config_path), "written": write_if_changed(config_path, text)}
    return summary


@dataclass
class MusubiLines:
    """Encodes batches of selected rows as musubi JSONL lines, leaving out images whose stem an
    earlier image took (their caches would collide)."""

    stems: dict[str, str] = field(default_factory=dict)  # stem -> the image exported with it
    counts: dict = field(default_factory=lambda: {"same_stem_examples": []})

    def __call__(self, snapshot: ReadSnapshot, batch: list[tuple]) -> bytes:
        root = str(snapshot.root)
        lines = []
        for _key, image, _width, _height, caption in batch:
            stem = os.path.splitext(os.path.basename(image))[0]
            first = self.stems.setdefault(stem, image)
            if first != image:
                snapshot.excluded["same_stem"] += 1
                if len(self.counts["same_stem_examples"]) < EXAMPLES:
                    self.counts["same_stem_examples"].append(f"{image} (stem of {first})")
                continue
            lines.append(orjson.dumps({"image_path": os.path.join(root, image), "caption": caption}) + b"\n")
        return b"".join(lines)


def dataset_config(config: Path, jsonl: Path, settings: MusubiOptions) -> tuple[Path, str]:
    """The TOML to write: the existing config with this JSONL's dataset replaced or added."""
    if config.suffix != ".toml":
        raise IndexerError(f"--config {config}: musubi-tuner reads a dataset config as TOML only when its "
                           "name ends in .toml; name it so. Nothing was written")
    check_settings(settings)
    existing = read_config(config)
    cache = settings.cache_directory or str(jsonl.parent / "cache" / "musubi" / jsonl.stem)
    entry = {"image_jsonl_file": str(jsonl), "cache_directory": str(Path(cache).expanduser().absolute()),
             "resolution": list(settings.resolution), "enable_bucket": settings.enable_bucket,
             "bucket_no_upscale": settings.bucket_no_upscale, "batch_size": settings.batch_size,
             "num_repeats": settings.num_repeats}
    others = [dataset for dataset in existing.get("datasets", [])
              if dataset.get("image_jsonl_file") != str(jsonl)]
    for dataset in others:
        if dataset.get("cache_directory") == entry["cache_directory"]:
            raise IndexerError(f"{config}: another dataset already caches into {entry['cache_directory']}, "
                               "and musubi-tuner refuses two datasets with one cache_directory; give "
                               "--cache-directory DIR. Nothing was written")
    merged = {**existing, "datasets": [*others, entry]}
    return config, toml_text(merged)


def check_settings(settings: MusubiOptions) -> None:
    numbers = {"resolution": min(settings.resolution), "batch_size": settings.batch_size,
               "num_repeats": settings.num_repeats}
    for name, value in numbers.items():
        if value < 1:
            raise IndexerError(f"--{name.replace('_', '-')} must be at least 1; nothing was written")


def read_config(config: Path) -> dict:
    """An existing dataset config, refused (untouched) unless musubi could read it too."""
    if not config.exists():
        return {}
    try:
        found = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise IndexerError(f"{config} exists but is not valid TOML ({exc}); fix it or choose another "
                           "--config (it was left as it is, and nothing was written)") from exc
    datasets = found.get("datasets", [])
    if set(found) - {"general", "datasets"} or not isinstance(datasets, list):
        raise IndexerError(f"{config} is not a musubi-tuner dataset config ([general] and [[datasets]] "
                           "only); choose another --config (it was left as it is, and nothing was written)")
    return found


def toml_text(config: dict) -> str:
    """[general] (when there is one), then every [[datasets]] table."""
    tables = [("[general]", config["general"])] if config.get("general") else []
    tables += [("[[datasets]]", dataset) for dataset in config["datasets"]]
    return "\n".join(header + "\n" + "".join(f"{toml_key(key)} = {toml_value(value)}\n"
                                            for key, value in items.items())
                     for header, items in tables)


def toml_key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else toml_string(key)


def toml_value(value: object) -> str:
    """The value types musubi's schema takes: strings, booleans, numbers and arrays of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and value == value and abs(value) != float("inf"):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise IndexerError(f"the dataset config holds {value!r}, which is not a value musubi-tuner's config "
                       "takes; choose another --config (nothing was written)")


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, plus DEL, which TOML wants escaped too."""
    return orjson.dumps(text).decode().replace("\x7f", "\\u007f")


def write_if_changed(path: Path, text: str) -> bool:
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    with atomic_file(path) as temp:
        temp.write_bytes(data)
    return True
