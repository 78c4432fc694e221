"""Remote roots indexed in place: shards and loose pairs in an S3 bucket (moto's server on
127.0.0.1) and https shards from a shard list (an HTTP server with Range support on 127.0.0.1),
against the rows their local copies give; change detection from the listing; faults."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
from helpers_index import sample_rows
from servers import hub_server, range_server, s3_server

from indexer.errors import EXIT_INCOMPLETE
from indexer.ingest import remote
from indexer.ingest.index import index_root

ROW = ("key, image_ext, json_ext, width, height, size_from, status, warning, meta, shard, json_offset,"
       " image_offset")
SECRET = "s3cr3t-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint, monkeypatch, request):
    """A new bucket on the local S3 server, the AWS settings pointing at it; yields an s3fs handle."""
    import s3fs

    for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", SECRET), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    remote._FILESYSTEMS.clear()
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    name = "b" + secrets.token_hex(6)
    fs.mkdir(name)
    yield fs, name
    remote._FILESYSTEMS.clear()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The Hub stand-in serving tmp_path/repo as the dataset repo org/name, huggingface_hub pointed
    at it (it reads HF_ENDPOINT once, at import: its constants are set too); yields (the repo's
    folder, the requests seen)."""
    from huggingface_hub import constants

    (tmp_path / "repo").mkdir()
    with hub_server("org/name", tmp_path / "repo") as (endpoint, seen):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        remote._FILESYSTEMS.clear()
        yield tmp_path / "repo", seen
    remote._FILESYSTEMS.clear()


pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled


def pairs(sample_files, prefix: str, count: int) -> dict[str, bytes]:
    """The members of `count` small pairs, keys prefix0, prefix1..."""
    return {name: data for i in range(count)
            for name, data in sample_files.members(f"{prefix}{i}", size=(64, 48)).items()}


def dataset_folder(folder: Path, sample_files) -> Path:
    """Two shards (the second cut short inside its third pair) and loose pairs."""
    sample_files.shard(folder / "shards" / "s0.tar", pairs(sample_files, "a", 4))
    cut = folder / "shards" / "s1.tar"
    sample_files.shard(cut, pairs(sample_files, "c", 4))
    cut.write_bytes(cut.read_bytes()[: 512 * 9])
    for key in ("loose/x", "loose/y"):
        sample_files.pair(folder, key, size=(32, 32))
    sample_files.json(folder, "loose/z", '{"width": 5')  # a bad_json sample
    return folder


def upload(fs, bucket: str, folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.pipe(f"{bucket}/data/{path.relative_to(folder).as_posix()}", path.read_bytes())


def rows(db: Path) -> list[tuple]:
    return sample_rows(db, tuple(ROW.split(", ")), order="key")


def test_a_bucket_gives_the_rows_its_local_copy_gives(tmp_path, bucket, cli, sample_files, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, name = bucket
    local = dataset_folder(tmp_path / "local", sample_files)
    upload(fs, name, local)
    index_root(tmp_path / "local.sqlite", local, workers=1)
    result = cli("index", f"s3://{name}/data", "--db", tmp_path / "remote.sqlite", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.output)
    assert rows(tmp_path / "remote.sqlite") == rows(tmp_path / "local.sqlite")
    assert {r[0] for r in rows(tmp_path / "remote.sqlite")} >= {"a0", "c0", "c1", "loose/x", "loose/z"}
    assert summary["shards"]["read"] == 2 and len(summary["shards"]["errors"]) == 1
    assert "s1.tar" in summary["shards"]["errors"][0] and "cut short" in summary["shards"]["errors"][0]
    per_shard = {entry["shard"]: entry for entry in summary["shards"]["per_shard"]}
    assert per_shard["shards/s0.tar"]["requests"] >= 1 and per_shard["shards/s0.tar"]["bytes"] > 0
    # exports that write beside the samples (or paths a trainer opens) say to materialize first
    refused = cli("export", "captions", "--db", tmp_path / "remote.sqlite")
    assert refused.exit_code == 1 and f"lives at s3://{name}/data" in refused.stderr
    assert "materialize" in refused.stderr and not (tmp_path / "s3:").exists()
    parquet = cli("export", "parquet", tmp_path / "x.parquet", "--db", tmp_path / "remote.sqlite")
    assert parquet.exit_code == 0, parquet.stderr
    # webshart's indexes of the remote shards go to a local folder, the same as for the local copy
    for source in ("remote", "local"):
        (tmp_path / f"meta-{source}").mkdir()
        made = cli("export", "webshart", "--metadata", tmp_path / f"meta-{source}", "--db",
                   tmp_path / f"{source}.sqlite")
        assert made.exit_code == 0, made.stderr
    for index in ("shards/s0.json", "shards/s1.json"):
        remote_index = (tmp_path / "meta-remote" / index).read_bytes()
        assert remote_index == (tmp_path / "meta-local" / index).read_bytes()
    # but webshart cannot read a bucket: no SimpleTuner entry can point at it
    config = tmp_path / "multidatabackend.json"
    no_entry = cli("export", "config", config, "--backend", "webshart", "--db", tmp_path / "remote.sqlite")
    assert no_entry.exit_code == 1 and f"webshart cannot read shards at s3://{name}/data" in no_entry.stderr
    assert "indexer materialize DIR" in no_entry.stderr and not config.exists()
    # credentials reach neither the database nor what the run prints
    assert SECRET.encode() not in (tmp_path / "remote.sqlite").read_bytes()
    assert SECRET not in result.output + result.stderr


def test_a_rerun_reads_only_what_the_listing_says_changed(tmp_path, bucket, cli, sample_files):
    fs, name = bucket
    upload(fs, name, dataset_folder(tmp_path / "local", sample_files))
    db = tmp_path / "remote.sqlite"
    url = f"s3://{name}/data"
    assert cli("index", url, "--db", db).exit_code == 0

    again = json.loads(cli("index", url + "/", "--db", db, "--json").output)  # the same dataset
    assert (again["files_read"], again["shards"]["read"], again["added"], again["changed"]) == (0, 0, 0, 0)
    assert again["shards"]["requests"] == 0

    edited = {"width": 32, "height": 32, "short_caption": "new"}
    fs.pipe(f"{name}/data/loose/x.json", json.dumps(edited).encode())
    fs.rm(f"{name}/data/loose/y.json")
    fs.rm(f"{name}/data/loose/y.png")
    shard = tmp_path / "s0.tar"
    sample_files.shard(shard, {n: b for n, b in sample_files.members("a9", size=(64, 48)).items()})
    fs.pipe(f"{name}/data/shards/s0.tar", shard.read_bytes())
    changed = json.loads(cli("index", url, "--db", db, "--json").output)
    assert (changed["files_read"], changed["shards"]["read"]) == (1 + 1, 1)
    keys = {r[0] for r in rows(db)}
    assert "a9" in keys and "a0" not in keys and "loose/y" not in keys
    assert [r[8] for r in rows(db) if r[0] == "loose/x"] == [json.dumps(edited, separators=(",", ":"))]


def test_https_shards_from_a_shard_list_and_their_faults(tmp_path, cli, sample_files, monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.001)
    local = tmp_path / "local"
    for n in range(3):
        sample_files.shard(local / f"s{n}.tar", pairs(sample_files, f"k{n}", 3))
    index_root(tmp_path / "local.sqlite", local, workers=1)
    with range_server(local) as (base, faults):
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{base}/s{n}.tar?token={SECRET}\n" for n in range(3)))
        db = tmp_path / "remote.sqlite"
        faults.unavailable, faults.resets = 3, 1  # a 503 burst and a dropped connection: retried
        result = cli("index", "--shard-list", urls, "--db", db, "--json", "--workers", "4")
        assert result.exit_code == 0, result.stderr
        assert rows(db) == rows(tmp_path / "local.sqlite")
        assert SECRET.encode() not in db.read_bytes() and SECRET not in result.output
        no_entry = cli("export", "config", tmp_path / "c.json", "--backend", "webshart", "--db", db)
        assert no_entry.exit_code == 1 and f"webshart cannot read shards at {base}" in no_entry.stderr
        assert SECRET not in no_entry.stderr and not (tmp_path / "c.json").exists()

        # replaced between listing and read: nothing of it is recorded, the run says so (exit 4)
        real_info = remote._http_info

        def replace_after_listing(url: str, rel: str):
            info = real_info(url, rel)
            if rel == "s1.tar":
                sample_files.shard(local / "s1.tar", sample_files.members("new", size=(64, 48)))
            return info

        monkeypatch.setattr(remote, "_http_info", replace_after_listing)
        os.utime(local / "s1.tar", (1, 1))  # a new Last-Modified: the listing shows a change
        replaced = cli("index", "--shard-list", urls, "--db", db, "--json")
        assert replaced.exit_code == EXIT_INCOMPLETE
        assert "changed while it was read" in json.loads(replaced.output)["unread"][0]
        assert "new" not in {r[0] for r in rows(db)} and "k10" in {r[0] for r in rows(db)}
        monkeypatch.setattr(remote, "_http_info", real_info)
        assert cli("index", "--shard-list", urls, "--db", db).exit_code == 0
        assert "new" in {r[0] for r in rows(db)} and "k10" not in {r[0] for r in rows(db)}

        # a server that stays unavailable: that shard is not read, the others are, exit 4
        sample_files.shard(local / "s2.tar", sample_files.members("late", size=(64, 48)))
        faults.unavailable = 1000
        down = cli("index", "--shard-list", urls, "--db", db, "--json")
        assert down.exit_code == 1 and "cannot list" in down.stderr  # the listing itself failed
        faults.unavailable = 0
        assert {"k20"} <= {r[0] for r in rows(db)}  # nothing was taken for deleted


def test_a_truncated_object_is_a_damaged_shard_and_the_run_goes_on(tmp_path, cli, sample_files,
                                                                    monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.001)
    local = tmp_path / "local"
    for n in range(2):
        sample_files.shard(local / f"s{n}.tar", pairs(sample_files, f"k{n}", 3))
    with range_server(local) as (base, faults):
        faults.truncate_to["s1.tar"] = 512 * 5
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{base}/s0.tar\n{base}/s1.tar\n")
        result = cli("index", "--shard-list", urls, "--db", tmp_path / "db.sqlite", "--json")
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.output)
        assert "cut short" in summary["shards"]["errors"][0]
        assert {r[0] for r in rows(tmp_path / "db.sqlite")} == {"k00", "k01", "k02", "k10"}


def test_a_remote_root_needs_the_extra_only_when_used_and_says_what_is_wrong(tmp_path, cli):
    both = cli("index", "s3://x/y", "--shard-list", tmp_path / "u.txt", "--db", tmp_path / "db.sqlite")
    assert both.exit_code == 2 and "not both" in both.stderr
    (tmp_path / "u.txt").write_text("ftp://nope/a.tar\n")
    wrong = cli("index", "--shard-list", tmp_path / "u.txt", "--db", tmp_path / "db.sqlite")
    assert wrong.exit_code == 1 and "one http:// or https:// URL a line" in wrong.stderr


def test_a_hub_dataset_through_huggingface_hubs_own_filesystem(tmp_path, cli, sample_files, monkeypatch,
                                                               hub):
    repo, seen = hub
    local = dataset_folder(repo / "data", sample_files)
    index_root(tmp_path / "local.sqlite", local, workers=1)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    db = tmp_path / "hub.sqlite"
    result = cli("index", "hf://datasets/org/name/data", "--db", db, "--json")
    assert result.exit_code == 0, result.stderr
    assert rows(db) == rows(tmp_path / "local.sqlite")
    ranges = [line for line in seen if "/resolve/" in line]
    assert ranges and all("bytes=" in line for line in ranges)  # read by range, never whole
    again = json.loads(cli("index", "hf://datasets/org/name/data", "--db", db, "--json").output)
    assert (again["files_read"], again["shards"]["read"]) == (0, 0)
    assert SECRET.encode() not in db.read_bytes() and SECRET not in result.output


def test_hf_endpoint_is_read_when_the_run_starts_not_when_huggingface_hub_was_imported(
        tmp_path, cli, sample_files, monkeypatch, hub):
    """A process that imported huggingface_hub before HF_ENDPOINT was set (a notebook, a service)
    still reads from the endpoint set now."""
    from huggingface_hub import constants

    repo, seen = hub
    local = dataset_folder(repo / "data", sample_files)
    index_root(tmp_path / "local.sqlite", local, workers=1)
    dead = "http://127.0.0.1:9"  # what huggingface_hub took at import: nothing answers there
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        dead + "/{repo_id}/resolve/{revision}/{filename}")
    result = cli("index", "hf://datasets/org/name/data", "--db", tmp_path / "hub.sqlite", "--json")
    assert result.exit_code == 0, result.stderr
    assert rows(tmp_path / "hub.sqlite") == rows(tmp_path / "local.sqlite")
    assert any("/resolve/" in line for line in seen)


def test_a_hub_dataset_gets_the_webshart_entry_webshart_reads(tmp_path, cli, sample_files, monkeypatch, hub):
    """The entry names the repo and folder (webshart takes any source that is not a folder for a
    repo id) and the local indexes, laid out at the shards' paths in the repo, where webshart's
    metadata resolver looks; what SimpleTuner cached of a changed shard goes on the next export."""
    repo, _seen = hub
    local = dataset_folder(repo / "data", sample_files)
    index_root(tmp_path / "local.sqlite", local, workers=1)
    (tmp_path / "meta-local").mkdir()
    assert cli("export", "webshart", "--metadata", tmp_path / "meta-local", "--db",
               tmp_path / "local.sqlite").exit_code == 0
    meta, db, config = tmp_path / "meta", tmp_path / "hub.sqlite", tmp_path / "multidatabackend.json"
    meta.mkdir()
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert cli("index", "hf://datasets/org/name/data", "--db", db).exit_code == 0
    early = cli("export", "config", config, "--backend", "webshart", "--db", db)
    assert early.exit_code == 1 and "run `indexer export webshart --db" in early.stderr
    beside = cli("export", "webshart", "--db", db)  # nothing is written to the Hub
    assert beside.exit_code == 1 and "give --metadata DIR, a local folder" in beside.stderr
    assert "--metadata DIR` first" in early.stderr and not config.exists()
    assert cli("export", "webshart", "--metadata", meta, "--db", db).exit_code == 0
    for shard in ("s0", "s1"):  # the same bytes as the local copy's, at the path in the repo
        local_index = (tmp_path / "meta-local" / "shards" / f"{shard}.json").read_bytes()
        assert (meta / "data" / "shards" / f"{shard}.json").read_bytes() == local_index
    result = cli("export", "config", config, "--backend", "webshart", "--db", db)
    assert result.exit_code == 0, result.stderr
    entry = json.loads(config.read_text())[0]
    assert (entry["source"], entry["subfolder"], entry["metadata"]) == ("org/name", "data", str(meta))
    assert "HF_TOKEN" in result.stdout and SECRET not in config.read_text() + result.stdout
    cache = Path(entry["webshart"]["cache_dir"])
    copies = [cache / "metadata_cache" / "org_name__data" / f"{shard}.json" for shard in ("s0", "s1")]
    downloads = [cache / "shard_cache" / f"{shard}.tar" for shard in ("s0", "s1")]
    for path in (*copies, *downloads, cache / "aspect_ratio_bucket_indices_data.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    sample_files.shard(local / "shards" / "s0.tar", pairs(sample_files, "n", 2))
    assert cli("index", "hf://datasets/org/name/data", "--db", db).exit_code == 0
    summary = json.loads(cli("export", "webshart", "--metadata", meta, "--db", db, "--json").output)
    assert summary["cleared"] == {"index_copies": 1, "shard_downloads": 1, "bucket_files": 1}
    assert [path.exists() for path in (*copies, *downloads)] == [False, True, False, True]
    (meta / "data" / "shards" / "s1.json").unlink()
    missing = cli("export", "config", config, "--backend", "webshart", "--db", db)
    assert missing.exit_code == 1 and not json.loads(config.read_text())[0].get("notes")
    assert f"no index where webshart looks for it (first: {meta}/data/shards/s1.json)" in missing.stderr


def test_hub_shards_webshart_would_take_for_one_get_no_entry(tmp_path, cli, sample_files, hub):
    repo, _seen = hub
    for folder in ("a", "b"):
        sample_files.shard(repo / "data" / folder / "x.tar", pairs(sample_files, folder, 1))
    meta, db, config = tmp_path / "meta", tmp_path / "hub.sqlite", tmp_path / "multidatabackend.json"
    meta.mkdir()
    assert cli("index", "hf://datasets/org/name/data", "--db", db).exit_code == 0
    assert cli("export", "webshart", "--metadata", meta, "--db", db).exit_code == 0
    refused = cli("export", "config", config, "--backend", "webshart", "--db", db)
    assert refused.exit_code == 1 and "(first: a/x.tar and b/x.tar)" in refused.stderr
    assert "knows a Hub shard by its file name alone" in refused.stderr and not config.exists()


def test_an_empty_listing_of_an_indexed_bucket_changes_nothing(tmp_path, bucket, cli, sample_files):
    fs, name = bucket
    upload(fs, name, dataset_folder(tmp_path / "local", sample_files))
    db = tmp_path / "remote.sqlite"
    assert cli("index", f"s3://{name}/data", "--db", db).exit_code == 0
    kept = rows(db)
    fs.rm(f"{name}/data", recursive=True)  # or a wrong endpoint that shows an empty bucket
    empty = cli("index", f"s3://{name}/data", "--db", db)
    assert empty.exit_code == 1 and "lists no object" in empty.stderr and rows(db) == kept


def test_an_https_root_asks_for_a_shard_list(tmp_path, cli):
    result = cli("index", "https://example.invalid/shards/", "--db", tmp_path / "db.sqlite")
    assert result.exit_code == 1 and "--shard-list FILE" in result.stderr
