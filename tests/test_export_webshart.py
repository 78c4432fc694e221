"""`export webshart` beyond the index format itself (tests/test_shards.py): where each sample's JSON
sidecar is, for SimpleTuner's `webshart.caption_key`, and what SimpleTuner and webshart cached from
an old index going away when the index changes.

The cache layout used here is webshart 0.6.0's and SimpleTuner 4.10.1's; scripts/check_webshart.py
--demo checks it against the real webshart, with its cache enabled as SimpleTuner enables it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers_export import write_shard

from indexer.errors import IndexerError
from indexer.export.webshart import export_webshart
from indexer.ingest.index import index_root

BUCKET_FILES = ("aspect_ratio_bucket_indices_shards.json", "aspect_ratio_bucket_metadata_shards.json",
                "aspect_ratio_bucket_indices_shards.json_captions.json",
                "aspect_ratio_bucket_indices_captions_0123456789abcdef_shards.json")
OTHER_FILES = ("aspect_ratio_bucket_indices_other.json", "vae/x.pt", "notes.json")


pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled


def pair(gen, key: str, caption: str | None = None, size=(640, 480)) -> dict[str, bytes]:
    record = {"width": size[0], "height": size[1], "short_caption": caption or f"caption of {key}",
              "long_caption": f"long {key}"}
    return {f"{key}.json": json.dumps(record).encode(), f"{key}.png": gen.png_bytes(*size)}


@pytest.fixture
def shards(tmp_path: Path, gen) -> Path:
    root = tmp_path / "shards"
    write_shard(root / "part" / "a.tar", {**pair(gen, "a1"), **pair(gen, "a2", "one\ntwo")})
    write_shard(root / "b.tar", pair(gen, "b1"))
    return root


@pytest.fixture
def exported(tmp_path: Path, shards: Path, cli) -> tuple[Path, Path]:
    """The shards indexed and exported, with `export config --backend webshart` written: (db, config)."""
    db = tmp_path / "db.sqlite"
    index_root(db, shards, workers=1)
    export_webshart(db)
    config = tmp_path / "multidatabackend.json"
    result = cli("export", "config", config, "--db", db, "--backend", "webshart")
    assert result.exit_code == 0, result.stderr
    return db, config


def webshart_copy(metadata_cache: Path, root: Path, shard: str) -> Path:
    """Where webshart 0.6.0 keeps its copy of a shard's index for a local source."""
    return metadata_cache / str(root).replace("/", "_") / f"{shard}.json"


def fill_caches(cache_dir: Path, root: Path, metadata_cache: Path | None = None) -> list[Path]:
    """What a SimpleTuner run leaves in its webshart cache folder: every file it would write."""
    metadata_cache = metadata_cache or cache_dir / "metadata_cache"
    paths = [webshart_copy(metadata_cache, root, shard) for shard in ("part/a", "b")]
    paths += [cache_dir / name for name in (*BUCKET_FILES, *OTHER_FILES)]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    return paths


def change_shard(gen, shards: Path, db: Path) -> None:
    """Rewrite part/a.tar with a sample in front (every offset moves) and index it again."""
    members = {**pair(gen, "a0"), **pair(gen, "a1"), **pair(gen, "a2", "one\ntwo")}
    write_shard(shards / "part" / "a.tar", members)
    index_root(db, shards, workers=1)


def cache_dir_of(config: Path) -> Path:
    return Path(json.loads(config.read_text())[0]["webshart"]["cache_dir"])


def test_each_image_says_where_its_json_sidecar_is(exported, shards: Path, gen) -> None:
    data = (shards / "part" / "a.tar").read_bytes()
    files = json.loads((shards / "part" / "a.json").read_text())["files"]
    members = {**pair(gen, "a1"), **pair(gen, "a2", "one\ntwo")}
    assert sorted(files) == ["a1.png", "a2.png"]
    for name, entry in files.items():
        assert entry["json_path"] == name.replace(".png", ".json")
        start, length = entry["json_offset"], entry["json_length"]
        assert type(start) is int and type(length) is int
        assert data[start : start + length] == members[entry["json_path"]]
        assert json.loads(data[start : start + length])["short_caption"] == entry["captions"]


def test_a_changed_index_takes_what_simpletuner_cached_from_the_old_one(exported, shards: Path, gen,
                                                                        cli) -> None:
    db, config = exported
    cache_dir = cache_dir_of(config)
    paths = fill_caches(cache_dir, shards)
    unchanged = export_webshart(db)
    assert unchanged["written"] == 0
    assert unchanged["cleared"] == {"index_copies": 0, "shard_downloads": 0, "bucket_files": 0}
    assert all(path.exists() for path in paths)
    change_shard(gen, shards, db)
    result = cli("export", "webshart", "--db", db)
    assert result.exit_code == 0, result.stderr
    assert "removed from SimpleTuner's webshart caches" in result.stdout
    assert "1 cached shard indexes, 4 bucket cache files" in result.stdout
    gone = {path for path in paths if not path.exists()}
    assert gone == {webshart_copy(cache_dir / "metadata_cache", shards, "part/a"),
                    *(cache_dir / name for name in BUCKET_FILES)}
    assert "a0.png" in json.loads((shards / "part" / "a.json").read_text())["files"]


def test_the_cache_folders_are_those_the_config_names_now(exported, shards: Path, gen,
                                                          tmp_path: Path) -> None:
    db, config = exported
    entries = json.loads(config.read_text())
    elsewhere, copies = tmp_path / "elsewhere", tmp_path / "copies"
    entries[0]["webshart"].update(cache_dir=str(elsewhere), metadata_cache_dir=str(copies))
    entries.append({**entries[0], "id": "relative", "webshart": {"cache_dir": "cache/here"}})
    config.write_text(json.dumps(entries))
    paths = fill_caches(elsewhere, shards, copies)
    change_shard(gen, shards, db)
    summary = export_webshart(db)
    assert summary["cleared"] == {"index_copies": 1, "shard_downloads": 0, "bucket_files": 4}
    gone = {path for path in paths if not path.exists()}
    assert gone == {webshart_copy(copies, shards, "part/a"), *(elsewhere / name for name in BUCKET_FILES)}
    assert summary["notes"] == [
        f"{config}: entry 'relative' names no absolute webshart.cache_dir (and metadata_cache_dir), so its "
        "caches depend on where SimpleTuner runs: remove their metadata_cache folder and "
        "aspect_ratio_bucket_* files yourself after an index changed"]


def test_writing_the_config_empties_the_cache_folder_it_names(exported, shards: Path, cli) -> None:
    db, config = exported
    cache_dir = cache_dir_of(config)
    paths = fill_caches(cache_dir, shards)
    result = cli("export", "config", config, "--db", db, "--backend", "webshart", "--json")
    assert result.exit_code == 0, result.stderr
    cleared = json.loads(result.stdout)["cleared"]
    assert cleared == {"index_copies": 2, "shard_downloads": 0, "bucket_files": 4}
    assert [path for path in paths if path.exists()] == [cache_dir / name for name in OTHER_FILES]


def test_a_cached_index_that_cannot_be_removed_keeps_the_old_index(exported, shards: Path, gen) -> None:
    db, config = exported
    stuck = webshart_copy(cache_dir_of(config) / "metadata_cache", shards, "part/a")
    (stuck / "inside").mkdir(parents=True)  # a folder where the copy goes: unlink fails
    before = (shards / "part" / "a.json").read_bytes()
    change_shard(gen, shards, db)
    with pytest.raises(IndexerError, match=r"cannot remove .*a\.json .*SimpleTuner would go on reading"):
        export_webshart(db)
    assert (shards / "part" / "a.json").read_bytes() == before  # so the next run tries again
    (stuck / "inside").rmdir()
    stuck.rmdir()
    assert export_webshart(db)["written"] == 1


def test_all_mode_keeps_each_caption_whole(exported, shards: Path) -> None:
    db, _config = exported
    export_webshart(db, captions=("short_caption", "long_caption"), caption_mode="all")
    files = json.loads((shards / "part" / "a.json").read_text())["files"]
    assert files["a2.png"]["captions"] == ["one\ntwo", "long a2"]
    assert files["a1.png"]["captions"] == ["caption of a1", "long a1"]


def test_samples_of_a_shard_without_its_row_leave_the_other_indexes_whole(tmp_path, sample_files):
    """A kill between a shard's samples and its tar_shards row leaves samples naming a shard with
    no row: the shards after it in path order still get every file."""
    data = tmp_path / "data"
    for n in range(3):
        members = {k: v for i in range(2) for k, v in sample_files.members(f"k{n}{i}", size=(64, 48)).items()}
        sample_files.shard(data / f"s{n}.tar", members)
    db = tmp_path / "db.sqlite"
    index_root(db, data, workers=1)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM tar_shards WHERE path = 's0.tar'")
    conn.close()
    export_webshart(db)
    for n in (1, 2):
        assert set(json.loads((data / f"s{n}.json").read_bytes())["files"]) == {f"k{n}0.png", f"k{n}1.png"}
