"""`export musubi`: musubi-tuner's image JSONL and dataset config, as its loaders read them
(ImageJsonlDatasource, ConfigSanitizer; scripts/check_musubi.py runs musubi's own code on them)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from indexer.errors import IndexerError
from indexer.export.musubi import MusubiOptions, export_musubi, toml_string
from indexer.ingest.index import index_root

# The keys musubi-tuner's ConfigSanitizer takes in an image dataset table (DATASET_ASCENDABLE_SCHEMA
# and IMAGE_DATASET_DISTINCT_SCHEMA of its dataset/config_utils.py); any other key is refused.
MUSUBI_IMAGE_KEYS = {"caption_extension", "batch_size", "num_repeats", "resolution", "enable_bucket",
                     "bucket_no_upscale", "image_directory", "image_jsonl_file", "cache_directory",
                     "control_directory", "multiple_target", "fp_latent_window_size", "fp_1f_clean_indices",
                     "fp_1f_target_index", "fp_1f_no_post", "no_resize_control", "control_resolution"}


@pytest.fixture
def dataset(sample_files, data_root: Path, db_path: Path) -> Path:
    sample_files.pair(data_root, "a/x")
    sample_files.pair(data_root, "b/x", ext="jpg")  # the same stem as a/x: its musubi caches would collide
    sample_files.pair(data_root, "c", record={"width": 64, "height": 64, "short_caption": "two\nlines"})
    sample_files.pair(data_root, "d", record={"width": 64, "height": 64, "short_caption": ""})
    index_root(db_path, data_root, workers=1)
    return data_root


def lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "\n\n" not in text  # musubi's json.loads of a blank line aborts
    return [json.loads(line) for line in text.splitlines()]


def test_one_line_an_image_with_its_absolute_path_and_caption(dataset: Path, db_path: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    summary = export_musubi(db_path, out)
    assert lines(out) == [
        {"image_path": str(dataset / "a" / "x.png"), "caption": "caption of a/x"},
        {"image_path": str(dataset / "c.png"), "caption": "two\nlines"},  # one prompt, as the field is
    ]
    assert summary["rows"] == 2 and summary["excluded"] == {"no_caption": 1, "same_stem": 1}
    assert summary["same_stem_examples"] == ["b/x.jpg (stem of a/x.png)"]
    again = export_musubi(db_path, out)
    assert again["up_to_date"] and again["same_stem_examples"] == summary["same_stem_examples"]


def test_the_dataset_config_is_one_musubi_validates(dataset: Path, db_path: Path, tmp_path: Path) -> None:
    out, config = tmp_path / "train.jsonl", tmp_path / "dataset.toml"
    settings = MusubiOptions(resolution=(1328, 1024), enable_bucket=False, num_repeats=2)
    summary = export_musubi(db_path, out, config=config, settings=settings)
    found = tomllib.loads(config.read_text(encoding="utf-8"))
    assert set(found) == {"datasets"}
    (entry,) = found["datasets"]
    assert set(entry) <= MUSUBI_IMAGE_KEYS
    cache = str(tmp_path / "cache" / "musubi" / "train")
    assert entry == {"image_jsonl_file": str(out), "cache_directory": cache,
                     "resolution": [1328, 1024], "enable_bucket": False, "bucket_no_upscale": False,
                     "batch_size": 1, "num_repeats": 2}
    assert summary["config"] == {"path": str(config), "written": True}
    assert export_musubi(db_path, out, config=config, settings=settings)["config"]["written"] is False


def test_an_existing_config_keeps_the_rest(dataset: Path, db_path: Path, tmp_path: Path) -> None:
    out, config = tmp_path / "train.jsonl", tmp_path / "dataset.toml"
    config.write_text('# mine\n[general]\ncaption_extension = ".txt"\nresolution = [960, 544]\n\n'
                      '[[datasets]]\nimage_directory = "/data/other"\ncache_directory = "/cache/other"\n'
                      '"odd key" = "é\\u007f"\n')
    export_musubi(db_path, out, config=config)
    export_musubi(db_path, out, config=config, settings=MusubiOptions(resolution=(768, 768)))
    found = tomllib.loads(config.read_text(encoding="utf-8"))
    assert found["general"] == {"caption_extension": ".txt", "resolution": [960, 544]}
    assert found["datasets"][0] == {"image_directory": "/data/other", "cache_directory": "/cache/other",
                                    "odd key": "é\x7f"}
    assert [d.get("image_jsonl_file") for d in found["datasets"]] == [None, str(out)]  # replaced, not added
    assert found["datasets"][1]["resolution"] == [768, 768]


@pytest.mark.parametrize(("config_text", "settings", "message"), [
    ("[[datasets]]\nimage_directory = 'x'\ncache_directory = '{cache}'\n", MusubiOptions(),
     "another dataset already caches into"),
    ("[[datasets]\n", MusubiOptions(), "is not valid TOML"),
    ("[model]\nname = 'x'\n", MusubiOptions(), "is not a musubi-tuner dataset config"),
    ("[[datasets]]\nwhen = 1979-05-27\n", MusubiOptions(), "not a value musubi-tuner's config takes"),
    ("", MusubiOptions(batch_size=0), "--batch-size must be at least 1"),
])
def test_a_config_musubi_would_refuse_is_refused_before_anything_is_written(
        dataset: Path, db_path: Path, tmp_path: Path, config_text: str, settings: MusubiOptions,
        message: str) -> None:
    out, config = tmp_path / "train.jsonl", tmp_path / "dataset.toml"
    text = config_text.format(cache=tmp_path / "cache" / "musubi" / "train")
    config.write_text(text)
    with pytest.raises(IndexerError, match=message):
        export_musubi(db_path, out, config=config, settings=settings)
    assert not out.exists() and config.read_text() == text


def test_several_captions_and_a_config_not_named_toml_are_refused(dataset: Path, db_path: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    with pytest.raises(IndexerError, match="one text encoder output per image"):
        export_musubi(db_path, out, captions=("short_caption", "long_caption"), caption_mode="all")
    with pytest.raises(IndexerError, match=r"as TOML only when its name ends in \.toml"):
        export_musubi(db_path, out, config=tmp_path / "dataset.json")
    assert not out.exists() and not (tmp_path / "dataset.json").exists()


def test_the_command(cli, dataset: Path, db_path: Path, tmp_path: Path) -> None:
    out, config = tmp_path / "train.jsonl", tmp_path / "dataset.toml"
    result = cli("export", "musubi", out, "--db", db_path, "--config", config, "--resolution", "1328x1328",
                 "--no-bucket", "--cache-directory", tmp_path / "c", "--where", "key != 'c'")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "  excluded: no_caption 1, same_stem 1, where 1",
        "  left out, their stem names an earlier image's musubi caches: b/x.jpg (stem of a/x.png)",
        f"  dataset config {config}: written"]
    (entry,) = tomllib.loads(config.read_text())["datasets"]
    assert (entry["resolution"], entry["enable_bucket"], entry["cache_directory"]) == (
        [1328, 1328], False, str(tmp_path / "c"))
    bad = cli("export", "musubi", out, "--db", db_path, "--resolution", "big")
    assert bad.exit_code == 2 and "is not a resolution" in bad.stderr


@pytest.mark.parametrize("text", ["plain", 'a "quote" and \\ back', "line\nbreak\ttab", "del\x7f",
                                  "東京 café", "\x00"])
def test_toml_strings_read_back_as_written(text: str) -> None:
    assert tomllib.loads(f"key = {toml_string(text)}\n")["key"] == text
