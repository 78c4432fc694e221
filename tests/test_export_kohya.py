"""export kohya: sd-scripts' fine-tuning JSONL, checked by a reader that mirrors sd-scripts' loop."""

from __future__ import annotations

import io
import json
import os
import sqlite3
from pathlib import Path

import imagesize
import pytest
from helpers_export import exif_jpeg, exif_payload, with_segment, xmp_jpeg

from indexer.errors import IndexerError
from indexer.export.exif import parse_jpeg, read_jpeg_header
from indexer.export.kohya import export_kohya
from indexer.ingest.index import index_root


def sd_scripts_read(metadata_file: str, image_dir: str | None) -> dict[str, dict]:
    """FineTuningDataset's JSONL branch (sd-scripts library/train_util.py, commit 48d368fa)."""
    assert metadata_file.endswith(".jsonl")  # else sd-scripts json.load()s the whole file
    metadata: dict[str, dict] = {}
    with open(metadata_file, encoding="utf-8") as f:
        for line in f:
            line_md = json.loads(line)  # a blank line raises here, as in sd-scripts
            image_md = {"caption": line_md.get("caption", "")}
            if "image_size" in line_md:
                image_md["image_size"] = line_md["image_size"]
            if "tags" in line_md:
                image_md["tags"] = line_md["tags"]
            metadata[line_md["image_path"]] = image_md
    for image_key, image_md in metadata.items():
        if not os.path.isabs(image_key):
            assert image_dir is not None, f"image_dir is required when image paths are relative: {image_key}"
            image_md["abs_path"] = os.path.join(image_dir, image_key)
        else:
            image_md["abs_path"] = image_key
        if "image_size" in image_md:
            image_md["image_size"] = tuple(image_md["image_size"])  # width, height
        image_md["caption"].split("\n")  # a list caption fails here: 'list' object has no attribute 'split'
    return metadata


def stored_size(path: str) -> tuple[int, int]:
    """The size sd-scripts' own imagesize 1.4.1 reads: as stored, never rotated."""
    if path.endswith((".jpg", ".jpeg")):
        header = read_jpeg_header(path)
        assert header is not None
        return header.width, header.height
    return imagesize.get(path)


@pytest.fixture
def dataset(gen, sample_files, data_root: Path, db_path: Path) -> Path:
    gen.make_dataset(data_root, 24, faults=0, seed=3, subfolders=2)
    sample_files.pair(data_root, "extra/two", record={
        "width": 1024, "height": 768, "short_caption": "first caption\n",
        "short_caption2": ["second caption", "first caption", "third\nwith a break"]})
    index_root(db_path, data_root, workers=1)
    return data_root


def test_absolute_paths_need_no_train_data_dir(dataset: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "meta.jsonl"
    summary = export_kohya(db_path, out)
    for image_dir in (None, str(tmp_path / "elsewhere")):
        metadata = sd_scripts_read(str(out), image_dir)
        assert len(metadata) == summary["rows"] == 25
        for image_md in metadata.values():
            assert os.path.isfile(image_md["abs_path"])
            assert image_md["abs_path"].startswith(str(dataset.resolve()) + "/")
            assert image_md["image_size"] == stored_size(image_md["abs_path"])
            assert image_md["caption"]
    assert summary["sizes_left_out"] == {} and summary["relative"] is False


def test_relative_paths_join_to_the_root(dataset: Path, db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "meta.jsonl"
    export_kohya(db_path, out, relative=True)
    with pytest.raises(AssertionError, match="image_dir is required"):
        sd_scripts_read(str(out), None)
    metadata = sd_scripts_read(str(out), str(dataset))
    assert "extra/two.png" in metadata
    assert all(os.path.isfile(md["abs_path"]) for md in metadata.values())


def test_several_captions_are_one_string_and_no_line_is_blank(dataset: Path, db_path: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "meta.jsonl"
    export_kohya(db_path, out, captions=("short_caption", "short_caption2"), caption_mode="all")
    text = out.read_text("utf-8")
    assert text.endswith("}\n") and "" not in text.split("\n")[:-1]
    caption = sd_scripts_read(str(out), None)[str(dataset.resolve() / "extra/two.png")]["caption"]
    assert caption == "first caption\nsecond caption\nthird\nwith a break"
    assert caption.split("\n")[0] == "first caption"  # what sd-scripts trains on without --enable_wildcard
    export_kohya(db_path, out, captions=("short_caption", "short_caption2"))
    assert sd_scripts_read(str(out), None)[str(dataset.resolve() / "extra/two.png")]["caption"] == \
        "first caption"


@pytest.mark.parametrize("name", ["meta.json", "meta.JSONL", "meta.jsonl.txt", "meta"])
def test_a_name_sd_scripts_would_not_read_as_jsonl_is_refused(cli, dataset: Path, db_path: Path,
                                                              tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    with pytest.raises(IndexerError, match=r"ends in \.jsonl"):
        export_kohya(db_path, out)
    result = cli("export", "kohya", out, "--db", db_path)
    assert result.exit_code == 1 and "only when its name ends in .jsonl" in result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_up_to_date_until_options_data_or_file_change(sample_files, dataset: Path, db_path: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "meta.jsonl"
    assert export_kohya(db_path, out)["up_to_date"] is False
    again = export_kohya(db_path, out)
    assert again["up_to_date"] is True and again["rows"] == 25 and again["sizes_left_out"] == {}
    assert export_kohya(db_path, out, relative=True)["up_to_date"] is False
    assert export_kohya(db_path, out, relative=True)["up_to_date"] is True
    assert export_kohya(db_path, out, relative=True, caption_mode="all")["up_to_date"] is False
    sample_files.pair(dataset, "extra/three")
    index_root(db_path, dataset, workers=1)
    changed = export_kohya(db_path, out, relative=True, caption_mode="all")
    assert changed["up_to_date"] is False and changed["rows"] == 26
    out.write_text("edited\n", encoding="utf-8")
    assert export_kohya(db_path, out, relative=True, caption_mode="all")["up_to_date"] is False
    assert len(sd_scripts_read(str(out), str(dataset))) == 26
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    conn = sqlite3.connect(db_path)
    options = json.loads(conn.execute("SELECT options FROM exports WHERE kind = 'kohya'").fetchone()[0])
    conn.close()
    assert options["relative"] is True and options["caption_mode"] == "all"


def test_jpeg_sizes_sd_scripts_would_measure_differently_are_left_out(gen, sample_files, data_root: Path,
                                                                       db_path: Path,
                                                                       tmp_path: Path) -> None:
    caption = {"short_caption": "x"}
    files = {
        "rotated": exif_jpeg(gen, 1200, 800, 6),  # EXIF rotate 90: the index may hold 800x1200
        "upside_down": exif_jpeg(gen, 1200, 800, 3, order="II"),  # no axis swap: size kept
        "lying_json": gen.jpeg_bytes(640, 480),  # the JSON says 1200x800
        "plain": gen.jpeg_bytes(1200, 800),
    }
    for key, data in files.items():
        sample_files.pair(data_root, key, ext="jpg", image_data=data,
                          record={"width": 1200, "height": 800, **caption})
    sample_files.pair(data_root, "nojson", size=(64, 32), record=caption)  # size from the PNG header
    index_root(db_path, data_root, workers=1)
    out = tmp_path / "meta.jsonl"
    summary = export_kohya(db_path, out)
    assert summary["sizes_left_out"] == {"exif_rotated": 1, "size_differs": 1}
    metadata = {Path(key).stem: md for key, md in sd_scripts_read(str(out), None).items()}
    assert "image_size" not in metadata["rotated"] and "image_size" not in metadata["lying_json"]
    assert metadata["upside_down"]["image_size"] == metadata["plain"]["image_size"] == (1200, 800)
    assert metadata["nojson"]["image_size"] == (64, 32)
    for image_md in metadata.values():
        if "image_size" in image_md:
            assert image_md["image_size"] == stored_size(image_md["abs_path"])


def test_jpeg_header_orientation(gen, tmp_path: Path) -> None:
    for order in ("II", "MM"):
        header = parse_jpeg(io.BytesIO(exif_jpeg(gen, 30, 20, 8, order)))
        assert header is not None and (header.width, header.height, header.orientation) == (30, 20, 8)
        assert header.swaps_axes
    plain = parse_jpeg(io.BytesIO(gen.jpeg_bytes(30, 20)))
    assert plain is not None and plain.orientation == 1 and not plain.swaps_axes
    xmp = parse_jpeg(io.BytesIO(xmp_jpeg(gen, 30, 20, 6)))  # Pillow reads XMP when EXIF has none
    assert xmp is not None and xmp.orientation == 6
    both = with_segment(xmp_jpeg(gen, 30, 20, 6), 0xE1, exif_payload(1))  # EXIF wins over XMP
    assert parse_jpeg(io.BytesIO(both)).orientation == 1  # type: ignore[union-attr]
    damaged = with_segment(gen.jpeg_bytes(30, 20), 0xE1, b"Exif\x00\x00XX\x00*")
    assert parse_jpeg(io.BytesIO(damaged)) is None
    assert parse_jpeg(io.BytesIO(gen.png_bytes(30, 20))) is None
    assert parse_jpeg(io.BytesIO(gen.jpeg_bytes(30, 20)[:12])) is None  # cut before the frame header
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert read_jpeg_header(str(fifo)) is None  # returns at once: never opened for a blocking read
    assert read_jpeg_header(str(tmp_path / "missing.jpg")) is None
