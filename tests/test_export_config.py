"""export config: SimpleTuner's rules, caption_strategy choice, merge into an existing file; jsonl."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from indexer.errors import IndexerError
from indexer.export.captions import export_captions
from indexer.export.config import ConfigOptions, export_config
from indexer.export.jsonl import export_jsonl
from indexer.export.parquet import export_parquet
from indexer.ingest.index import index_root


@pytest.fixture
def clean(gen, data_root: Path, db_path: Path, tmp_path: Path) -> Path:
    gen.make_dataset(data_root, 40, faults=0, seed=5, subfolders=2)
    index_root(db_path, data_root, workers=1)
    export_parquet(db_path, tmp_path / "d.parquet")
    return data_root


def entries(path: Path) -> list[dict]:
    return json.loads(path.read_text("utf-8"))


def test_default_entry_matches_the_seed_and_the_parquet(clean: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "multidatabackend.json"
    summary = export_config(db_path, out)
    image, text = entries(out)
    assert image["id"] == "data" and image["type"] == "local"
    assert image["instance_data_dir"] == str(clean.resolve())
    assert (image["resolution"], image["resolution_type"], image["minimum_image_size"],
            image["maximum_image_size"], image["target_downsample_size"]) == (1.0, "area", 0.75, 2.0, 1.75)
    assert image["metadata_backend"] == "parquet"
    block = image["parquet"]
    assert block["path"] == str(tmp_path / "d.parquet") and block["identifier_includes_extension"] is True
    names = pq.read_schema(block["path"]).names
    for column in ("filename_column", "caption_column", "width_column", "height_column"):
        assert block[column] in names
    assert image["caption_strategy"] == summary["caption_strategy"] == "parquet"
    assert "no caption files" in summary["reason"]
    assert text["dataset_type"] == "text_embeds" and text["default"] is True


def test_textfile_once_every_image_has_its_txt(clean: Path, db_path: Path, tmp_path: Path) -> None:
    export_captions(db_path)
    summary = export_config(db_path, tmp_path / "c.json")
    assert summary["caption_strategy"] == "textfile"
    (clean / "part000" / "zz_lonely.png").write_bytes(b"\x89PNG")  # an image SimpleTuner finds
    summary = export_config(db_path, tmp_path / "c.json")
    assert summary["caption_strategy"] == "parquet" and "zz_lonely" in summary["reason"]
    with pytest.raises(IndexerError, match=r"textfile refused.*part000/zz_lonely\.png"):
        export_config(db_path, tmp_path / "c.json", options=ConfigOptions(caption_strategy="textfile"))


@pytest.mark.parametrize(("options", "rule"), [
    (ConfigOptions(target_downsample_size=None), "without target_downsample_size"),
    (ConfigOptions(maximum_image_size=20.0), "must be < 20"),
    (ConfigOptions(resolution_type="pixel", maximum_image_size=1024, target_downsample_size=256),
     "must be >= 512"),
    (ConfigOptions(metadata_backend="discovery", caption_strategy="parquet"),
     "needs metadata_backend parquet"),
])
def test_configs_simpletuner_rejects_are_refused(clean: Path, db_path: Path, tmp_path: Path,
                                                 options: ConfigOptions, rule: str) -> None:
    out = tmp_path / "r.json"
    with pytest.raises(IndexerError, match=rule):
        export_config(db_path, out, options=options)
    assert not out.exists()


def test_missing_parquet_is_refused(clean: Path, db_path: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexerError, match="does not exist"):
        export_config(db_path, tmp_path / "r.json", parquet=tmp_path / "nope.parquet")
    (tmp_path / "d.parquet").unlink()
    with pytest.raises(IndexerError, match="does not exist"):
        export_config(db_path, tmp_path / "r.json")


def test_pixel_sizes_are_accepted(clean: Path, db_path: Path, tmp_path: Path) -> None:
    options = ConfigOptions(resolution=1024, resolution_type="pixel", minimum_image_size=768,
                            maximum_image_size=2048, target_downsample_size=1536)
    summary = export_config(db_path, tmp_path / "p.json", options=options)
    assert summary["entry"]["resolution_type"] == "pixel"
    assert any("minimum_image_size 768" in w for w in summary["warnings"])  # 640x480 samples


def test_merge_replaces_same_id_and_keeps_the_rest(clean: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    other = {"id": "other", "type": "local", "instance_data_dir": "/x", "crop": True}
    embeds = {"id": "my-embeds", "dataset_type": "text_embeds", "default": True, "type": "local",
              "cache_dir": "/c"}
    out.write_text(json.dumps([other, {"id": "data", "stale": 1}, embeds]), encoding="utf-8")
    summary = export_config(db_path, out)
    merged = entries(out)
    assert summary["replaced"] is True
    assert merged[0] == other and merged[2] == embeds and merged[1]["id"] == "data"
    assert "stale" not in merged[1]
    assert sum(1 for e in merged if e.get("default") is True) == 1


def test_invalid_existing_file_is_left_alone(clean: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "seed.json"
    seed = '[{"id": "dalle3", "type": "local"},]'
    out.write_text(seed, encoding="utf-8")
    with pytest.raises(IndexerError, match="not valid JSON"):
        export_config(db_path, out)
    assert out.read_text("utf-8") == seed


def test_upper_case_extension_warning(sample_files, clean: Path, db_path: Path, tmp_path: Path) -> None:
    sample_files.pair(clean, "SHOUT", ext="PNG", size=(1024, 1024),
                      json_text='{"width": 1024, "height": 1024, "short_caption": "x"}')
    index_root(db_path, clean, workers=1)
    summary = export_config(db_path, tmp_path / "u.json", parquet=tmp_path / "d.parquet")
    assert any("upper-case" in w and "SHOUT.PNG" in w for w in summary["warnings"])


def test_cli_config_and_bad_value(cli, clean: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    result = cli("export", "config", out, "--db", db_path, "--maximum-image-size", "none",
                 "--target-downsample-size", "none")
    assert result.exit_code == 0 and "caption_strategy parquet" in result.stdout
    assert "maximum_image_size" not in entries(out)[0]
    refused = cli("export", "config", out, "--db", db_path, "--maximum-image-size", "25")
    assert refused.exit_code == 1 and "< 20" in refused.stderr
    before = out.read_bytes()
    swapped = cli("export", "config", out, "--db", db_path, "--minimum-image-size", "3",
                  "--maximum-image-size", "1")
    assert swapped.exit_code == 1 and "minimum_image_size 3.0 is larger than maximum_image_size 1.0" \
        in swapped.stderr
    assert out.read_bytes() == before
    equal = cli("export", "config", out, "--db", db_path, "--minimum-image-size", "1",
                "--maximum-image-size", "1")
    assert equal.exit_code == 0, equal.stderr
    assert cli("export", "config", out, "--db", db_path, "--minimum-image-size", "3",
               "--maximum-image-size", "none", "--target-downsample-size", "none").exit_code == 0


@pytest.mark.parametrize("merge", [False, True])
def test_the_config_file_ends_with_a_newline(cli, clean: Path, db_path: Path, tmp_path: Path,
                                             merge: bool) -> None:
    out = tmp_path / "nl.json"
    if merge:
        out.write_text('[{"id": "other", "type": "local"}]', encoding="utf-8")  # no newline of its own
    export_config(db_path, out)
    assert out.read_bytes().endswith(b"]\n") and not out.read_bytes().endswith(b"\n\n")
    result = cli("export", "config", out, "--db", db_path, "--json")
    assert result.exit_code == 0 and result.stdout.endswith("}\n")
    assert out.read_bytes().endswith(b"]\n") and len(entries(out)) == 2 + merge


def test_jsonl_is_imagefolder_metadata(clean: Path, db_path: Path, tmp_path: Path) -> None:
    out = clean / "metadata.jsonl"
    summary = export_jsonl(db_path, out, where="width >= 1024")
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert len(lines) == summary["rows"] > 0
    for line in lines:
        assert set(line) == {"file_name", "text"} and (clean / line["file_name"]).is_file() and line["text"]
    assert export_jsonl(db_path, out, where="width >= 1024")["up_to_date"] is True
    assert export_jsonl(db_path, out)["up_to_date"] is False


def test_jsonl_refuses_a_misspelt_caption_and_an_empty_where(cli, clean: Path, db_path: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "metadata.jsonl"
    typo = cli("export", "jsonl", out, "--db", db_path, "--caption", "short_captoin")
    assert typo.exit_code == 1 and "--caption short_captoin (closest: short_caption" in typo.stderr
    empty = cli("export", "jsonl", out, "--db", db_path, "--where", "width > 100000")
    assert empty.exit_code == 1 and "matches none of the 40 exportable samples" in empty.stderr
    assert not out.exists()


def test_names_that_are_not_utf8_are_shown_escaped_and_warned_about(cli, clean: Path, db_path: Path,
                                                                     tmp_path: Path) -> None:
    export_captions(db_path)
    (clean / os.fsdecode(b"bad\xff.png")).write_bytes(b"\x89PNG")  # index skips it; SimpleTuner finds it
    (clean / os.fsdecode(b"dir\xfe")).mkdir()
    (clean / os.fsdecode(b"dir\xfe") / "SHOUT.PNG").write_bytes(b"\x89PNG")
    out = tmp_path / "c.json"
    summary = export_config(db_path, out)
    assert summary["caption_strategy"] == "parquet" and "bad\\xff.png" in summary["reason"]
    utf8 = [w for w in summary["warnings"] if "not valid UTF-8" in w]
    assert len(utf8) == 1 and "2 image paths" in utf8[0] and "bad\\xff.png" in utf8[0]
    assert any("dir\\xfe/SHOUT.PNG" in w for w in summary["warnings"] if "upper-case" in w)
    result = cli("export", "config", out, "--db", db_path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["reason"] == summary["reason"]
    with pytest.raises(IndexerError, match=r"textfile refused.*bad\\xff\.png"):
        export_config(db_path, out, options=ConfigOptions(caption_strategy="textfile"))


def test_a_dataset_without_an_exportable_sample_gets_no_config(cli, sample_files, data_root: Path,
                                                               db_path: Path,
                                                               tmp_path: Path) -> None:
    sample_files.pair(data_root, "lonely", image=False)  # missing_image
    sample_files.pair(data_root, "broken", json_text="{")  # bad_json
    sample_files.pair(data_root, "torn", json_text="")  # bad_json
    index_root(db_path, data_root, workers=1)
    export_parquet(db_path, tmp_path / "empty.parquet")  # an empty export is still written
    out = tmp_path / "multidatabackend.json"
    result = cli("export", "config", out, "--db", db_path)
    assert result.exit_code == 1
    assert "no exportable sample" in result.stderr
    assert "3 samples (bad_json 2, missing_image 1)" in result.stderr
    assert "indexer problems --db" in result.stderr
    assert not out.exists()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM exports WHERE kind = 'config'").fetchone()[0] == 0
    conn.close()


def test_a_dataset_with_no_sample_at_all_gets_no_config(data_root: Path, db_path: Path,
                                                        tmp_path: Path) -> None:
    index_root(db_path, data_root, workers=1)
    out = tmp_path / "c.json"
    with pytest.raises(IndexerError, match="has no sample at all"):
        export_config(db_path, out, options=ConfigOptions(metadata_backend="discovery"))
    assert not out.exists()


def test_an_empty_parquet_gets_no_config(sample_files, data_root: Path, db_path: Path,
                                         tmp_path: Path) -> None:
    for key in ("a", "b"):  # exportable, but their short_caption is blank
        sample_files.pair(data_root, key, record={"width": 1024, "height": 768, "short_caption": " ",
                                                  "long_caption": "long"})
    index_root(db_path, data_root, workers=1)
    parquet = tmp_path / "empty.parquet"
    assert export_parquet(db_path, parquet)["rows"] == 0
    out = tmp_path / "c.json"
    with pytest.raises(IndexerError, match=r"has no rows \(excluded: no_caption 2 when it was exported\)"):
        export_config(db_path, out)
    assert not out.exists()
    export_parquet(db_path, parquet, captions=("long_caption",))
    assert export_config(db_path, out)["entry"]["parquet"]["path"] == str(parquet)
