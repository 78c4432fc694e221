"""export aitk: ai-toolkit's .aitk_size.json, checked by a lookup that mirrors ai-toolkit's own."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

import pytest
from helpers_export import exif_jpeg

from indexer.errors import IndexerError
from indexer.export.aitk import CACHE_NAME, export_aitk, st_mtime_seconds
from indexer.ingest import change
from indexer.ingest.index import index_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@pytest.fixture
def settled(monkeypatch):
    """Files written by the test before a scan count as settled (the real window is 3 s)."""
    monkeypatch.setattr(change, "RACY_WINDOW_NS", 0)


def aitk_sizes(folder_path: str) -> dict[str, tuple[int, int] | None]:
    """ai-toolkit's load (toolkit/data_loader.py + FileItemDTO, commit 27a03a91): for each image
    its walk finds, the cached (width, height) it would use, or None where it measures the file."""
    try:
        with open(os.path.join(folder_path, ".aitk_size.json")) as f:
            size_database = json.load(f)
        if "__version__" not in size_database or size_database["__version__"] != "0.1.2":
            size_database = {}
    except Exception:
        size_database = {}
    file_list = []
    for root, dirs, files in os.walk(folder_path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        file_list.extend(os.path.join(root, file) for file in files
                         if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith("."))
    file_list = [x for x in file_list if os.path.basename(os.path.dirname(x)) != "_controls"]
    found: dict[str, tuple[int, int] | None] = {}
    for path in file_list:
        file_key = path.replace(folder_path, "")
        file_stats = os.stat(path)
        file_signature = f"{file_stats.st_size}:{int(file_stats.st_mtime)}"
        db_entry = size_database.get(file_key)
        hit = db_entry is not None and len(db_entry) >= 3 and db_entry[2] == file_signature
        found[os.path.relpath(path, folder_path)] = tuple(db_entry[:2]) if hit else None
    return found


def recorded_sizes(db_path: Path) -> dict[str, tuple[int, int]]:
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT image, width, height FROM samples WHERE status = 'ok'").fetchall()
    conn.close()
    return {image: (width, height) for image, width, height in rows}


@pytest.fixture
def dataset(gen, sample_files, settled, data_root: Path, db_path: Path) -> Path:
    gen.make_dataset(data_root, 20, faults=0, seed=9, subfolders=2)
    sample_files.pair(data_root, "part000/deeper/w", ext="webp", size=(512, 384))
    sample_files.pair(data_root, "orphan", json_file=False)  # missing_json: ai-toolkit still loads it
    index_root(db_path, data_root, workers=1)
    return data_root


def test_every_exported_image_is_a_hit_with_the_index_size(dataset: Path, db_path: Path) -> None:
    summary = export_aitk(db_path)
    cache_file = dataset / CACHE_NAME
    assert summary["path"] == str(cache_file) and summary["rows"] == 21 and summary["existing"] == "none"
    document = json.loads(cache_file.read_text("ascii"))
    assert document["__version__"] == "0.1.2"
    assert all(key.startswith("/") for key in document if key != "__version__")
    sizes = aitk_sizes(str(dataset.resolve()))
    recorded = recorded_sizes(db_path)
    assert sizes.pop("orphan.png") is None  # not in the export: ai-toolkit measures it
    assert sizes == recorded and len(sizes) == 21
    assert summary["excluded"] == {"missing_json": 1}


def test_signature_rounds_like_st_mtime_on_real_files(tmp_path: Path) -> None:
    probe = tmp_path / "probe.png"
    probe.write_bytes(b"x")
    rng = random.Random(7)
    values = [1_700_000_000_999_999_999, 1_700_000_000_000_000_000, 1_700_000_000_500_000_001, 0, 999_999_999]
    values += [rng.randrange(10**9, 4 * 10**18) for _ in range(300)]
    values += [second * 10**9 + rng.randrange(999_999_000, 10**9)  # fractions that round up
               for second in rng.sample(range(10**9, 2 * 10**9), 3000)]
    naive_wrong = 0
    for mtime_ns in values:
        os.utime(probe, ns=(mtime_ns, mtime_ns))
        st = os.stat(probe)
        assert st.st_mtime_ns == mtime_ns
        assert st_mtime_seconds(st.st_mtime_ns) == int(st.st_mtime), mtime_ns
        naive_wrong += int(mtime_ns / 1e9) != int(st.st_mtime)
    assert naive_wrong > 0  # the values do reach the cases where int(mtime_ns / 1e9) is wrong


def naive_misses(probe: Path, count: int) -> list[int]:
    """mtimes (ns) for which int(mtime_ns / 1e9) differs from int(st_mtime), found on a real file."""
    probe.write_bytes(b"")
    found = []
    for second in range(1_650_000_000, 1_650_100_000, 9973):
        for fraction in range(999_999_700, 1_000_000_000, 3):
            mtime_ns = second * 10**9 + fraction
            os.utime(probe, ns=(mtime_ns, mtime_ns))
            if int(mtime_ns / 1e9) != int(os.stat(probe).st_mtime):
                found.append(mtime_ns)
                break
        if len(found) == count:
            return found
    raise AssertionError("no mtime where int(mtime_ns / 1e9) is wrong: widen the search")


def test_fractional_mtimes_hit_after_a_real_index(sample_files, settled, data_root: Path, db_path: Path,
                                                  tmp_path: Path) -> None:
    mtimes = [1_650_000_000 * 10**9 + fraction for fraction in (0, 1, 499_999_999, 999_999_999)]
    mtimes += naive_misses(tmp_path / "probe", 3)
    for number, mtime_ns in enumerate(mtimes):
        sample_files.pair(data_root, f"m{number}")
        os.utime(data_root / f"m{number}.png", ns=(mtime_ns, mtime_ns))
    index_root(db_path, data_root, workers=1)
    export_aitk(db_path)
    sizes = aitk_sizes(str(data_root.resolve()))
    assert sizes == {f"m{number}.png": (1024, 768) for number in range(len(mtimes))}


def test_a_subfolder_gets_keys_relative_to_it(dataset: Path, db_path: Path) -> None:
    folder = dataset.resolve() / "part000"
    summary = export_aitk(db_path, folder=folder)
    assert summary["path"] == str(folder / CACHE_NAME) and not (dataset / CACHE_NAME).exists()
    sizes = aitk_sizes(str(folder))
    recorded = recorded_sizes(db_path)
    assert sizes == {image.removeprefix("part000/"): size for image, size in recorded.items()
                     if image.startswith("part000/")}
    assert "deeper/w.webp" in sizes and summary["rows"] == len(sizes)
    assert summary["excluded"]["outside_folder"] == len(recorded) - len(sizes)
    slash = export_aitk(db_path, folder=str(folder) + "/")  # folder_path written with a trailing slash
    assert all(not key.startswith("/") for key in json.loads((folder / CACHE_NAME).read_text()))
    assert aitk_sizes(str(folder) + "/") == sizes and slash["rows"] == len(sizes)
    assert slash["dropped"] == len(sizes)  # the keys made for the other spelling are never looked up


def test_a_folder_outside_the_root_is_refused(cli, dataset: Path, db_path: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(IndexerError, match="outside the dataset root"):
        export_aitk(db_path, folder=outside)
    (dataset / "escape").symlink_to(outside)
    result = cli("export", "aitk", "--db", db_path, "--folder", dataset / "escape")
    assert result.exit_code == 1 and "outside the dataset root" in result.stderr
    missing = cli("export", "aitk", "--db", db_path, "--folder", dataset / "nope")
    assert missing.exit_code == 1 and "is not a folder" in missing.stderr
    assert not list(outside.iterdir()) and not (dataset / CACHE_NAME).exists()


def test_images_ai_toolkit_would_measure_differently_are_left_out(gen, sample_files, settled, data_root: Path,
                                                                   db_path: Path) -> None:
    caption = {"short_caption": "x", "width": 1200, "height": 800}
    images = {"rotated.jpg": exif_jpeg(gen, 1200, 800, 6), "flipped.jpg": exif_jpeg(gen, 1200, 800, 3),
              "lying.jpg": gen.jpeg_bytes(640, 480), "plain.jpeg": gen.jpeg_bytes(1200, 800),
              ".hidden/h.png": gen.png_bytes(1200, 800), "c/_controls/k.png": gen.png_bytes(1200, 800),
              ".dot.png": gen.png_bytes(1200, 800)}
    for name, data in images.items():
        key, ext = name.rsplit(".", 1)
        sample_files.pair(data_root, key, ext=ext, image_data=data, record=caption)
    index_root(db_path, data_root, workers=1)
    summary = export_aitk(db_path)
    # .dot.png is a hidden file, never indexed; the hidden folder and _controls are ai-toolkit's skips
    assert summary["excluded"] == {"exif_rotated": 1, "size_differs": 1, "not_loaded": 2}
    sizes = aitk_sizes(str(data_root.resolve()))
    assert sizes == {"rotated.jpg": None, "lying.jpg": None, "flipped.jpg": (1200, 800),
                     "plain.jpeg": (1200, 800)}


def test_recently_changed_images_are_left_out(sample_files, data_root: Path, db_path: Path) -> None:
    sample_files.pair(data_root, "fresh")  # seconds old when indexed: its record is racy
    index_root(db_path, data_root, workers=1)
    summary = export_aitk(db_path)
    assert summary["rows"] == 0 and summary["excluded"] == {"recently_changed": 1}
    assert aitk_sizes(str(data_root.resolve())) == {"fresh.png": None}


def test_existing_entries_are_kept_only_while_they_match(gen, sample_files, dataset: Path, db_path: Path,
                                                         tmp_path: Path) -> None:
    rotated = dataset / "rotated.jpg"
    sample_files.pair(dataset, "rotated", ext="jpg", image_data=exif_jpeg(gen, 1200, 800, 6),
                      record={"short_caption": "x", "width": 1200, "height": 800})
    (tmp_path / "outside.png").write_bytes(b"o")
    index_root(db_path, dataset, workers=1)
    (dataset / ".thumbs").mkdir()
    (dataset / ".thumbs" / "t.png").write_bytes(b"t")  # ai-toolkit never walks into it
    st = rotated.stat()
    outside = os.stat(tmp_path / "outside.png")
    hidden = os.stat(dataset / ".thumbs" / "t.png")
    orphan = os.stat(dataset / "orphan.png")
    any_image = next(image for image in recorded_sizes(db_path) if image.endswith(".png"))
    cache_file = dataset / CACHE_NAME
    cache_file.write_text(json.dumps({
        "__version__": "0.1.2",
        "/rotated.jpg": [800, 1200, f"{st.st_size}:{int(st.st_mtime)}"],  # what ai-toolkit measured
        "/gone.png": [10, 10, "1:1"],
        "/orphan.png": [5, 5, "0:0"],  # stale signature
        "/../outside.png": [1, 1, f"{outside.st_size}:{int(outside.st_mtime)}"],  # outside the root
        f"/{any_image}": [1, 1, "wrong"],
        "/.thumbs/t.png": [1, 1, f"{hidden.st_size}:{int(hidden.st_mtime)}"],
        "//orphan.png": [5, 5, f"{orphan.st_size}:{int(orphan.st_mtime)}"],  # never looked up
    }))
    summary = export_aitk(db_path)
    assert (summary["existing"], summary["kept"], summary["dropped"]) == ("merged", 1, 5)
    sizes = aitk_sizes(str(dataset.resolve()))
    assert sizes["rotated.jpg"] == (800, 1200) and sizes["orphan.png"] is None
    assert sizes[any_image] == recorded_sizes(db_path)[any_image]
    document = json.loads(cache_file.read_text())
    assert not {"/../outside.png", "/gone.png", "/.thumbs/t.png", "//orphan.png"} & set(document)
    cache_file.write_text(json.dumps({"__version__": "0.1.1", "/rotated.jpg": [800, 1200, "x"]}))
    old = export_aitk(db_path)
    assert old["existing"].startswith("replaced (not version 0.1.2") and old["kept"] == 0
    assert "/rotated.jpg" not in json.loads(cache_file.read_text())


def test_up_to_date_until_ai_toolkit_rewrites_it_or_options_change(dataset: Path, db_path: Path) -> None:
    first = export_aitk(db_path)
    again = export_aitk(db_path)
    assert again["up_to_date"] is True and again["rows"] == first["rows"]
    cache_file = dataset / CACHE_NAME
    document = json.loads(cache_file.read_text())
    with open(cache_file, "w") as f:  # ai-toolkit's save after a load
        json.dump(document, f)
    rewritten = export_aitk(db_path)
    assert rewritten["up_to_date"] is False and rewritten["existing"] == "merged"
    narrower = export_aitk(db_path, where="key LIKE 'part001/%'")
    assert narrower["up_to_date"] is False and narrower["rows"] < first["rows"]
    assert narrower["kept"] == first["rows"] - narrower["rows"]  # still valid: kept from the file
    assert not [p for p in dataset.iterdir() if ".tmp-" in p.name]


def test_cli_aitk(cli, dataset: Path, db_path: Path) -> None:
    result = cli("export", "aitk", "--db", db_path, "--where", "width >= 1")
    assert result.exit_code == 0, result.stderr
    assert f"folder_path must be exactly {dataset.resolve()}" in result.stdout
    as_json = cli("export", "aitk", "--db", db_path, "--where", "width >= 1", "--json")
    assert json.loads(as_json.stdout)["up_to_date"] is True
    empty = cli("export", "aitk", "--db", db_path, "--where", "width > 100000")
    assert empty.exit_code == 1 and "matches none" in empty.stderr
