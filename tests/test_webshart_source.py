"""What webshart 0.6.0 is told for each kind of dataset root (webshart_source.py), read from its
code (`discover_dataset`, `DatasetDiscovery.discover_huggingface`, `MetadataResolver`): a folder as
it is, a Hub dataset as its repo id and folder, and the sources it cannot read refused with what
to do. scripts/check_webshart.py --hub reads a Hub dataset through the real webshart."""

from __future__ import annotations

import pytest

from indexer.errors import EXIT_FAILURE, IndexerError
from indexer.export.webshart_source import WebshartSource, same_named_shards, webshart_source


@pytest.mark.parametrize(("root", "source", "subfolder"), [
    ("/data/shards", "/data/shards", None),
    ("hf://datasets/org/name", "org/name", None),
    ("hf://datasets/org/name/data", "org/name", "data"),
    ("hf://datasets/org/name/data/train/", "org/name", "data/train"),
    ("hf://datasets/org/name@main/data", "org/name", "data"),
])
def test_each_readable_root_is_named_as_webshart_takes_it(root, source, subfolder) -> None:
    found = webshart_source(root)
    assert (found.source, found.subfolder, found.hub) == (source, subfolder, root.startswith("hf://"))
    keys = {"source": source, **({"subfolder": subfolder} if subfolder else {})}
    assert found.entry_keys() == keys  # never an hf:// URL: webshart would ask the Hub for that repo


def test_a_hub_shard_is_found_by_its_path_in_the_repo_and_known_by_its_file_name() -> None:
    hub = webshart_source("hf://datasets/org/name/data")
    assert hub.index_folder("part/s0.tar") == "data/part/s0"  # <metadata>/<tar's folder in repo>/<name>
    assert (hub.cache_key(), hub.shard_name("part/s0.tar")) == ("org_name__data", "s0")
    whole = webshart_source("hf://datasets/org/name")
    assert (whole.index_folder("part/s0.tar"), whole.cache_key()) == ("part/s0", "org_name")
    local = webshart_source("/data/shards")
    assert local.index_folder("part/s0.tar") == "part/s0"
    assert (local.cache_key(), local.shard_name("part/s0.tar")) == ("_data_shards", "part/s0")


@pytest.mark.parametrize(("root", "said"), [
    ("s3://bucket/shards", "reads a local folder or a Hugging Face dataset repo, nothing else"),
    ("https://example.invalid/shards", "reads a local folder or a Hugging Face dataset repo, nothing else"),
    ("hf://org/model/shards", "dataset repos only"),
    ("hf://datasets/org", "dataset repos only"),
    ("hf://datasets/org/name/../other", "dataset repos only"),
    ("hf://datasets/org/name@v1.0/data", "`main` revision only"),
    ("hf://datasets/org/name@refs%2Fpr%2F1", "`main` revision only"),
])
def test_roots_webshart_cannot_read_are_refused_with_what_to_do(root, said) -> None:
    with pytest.raises(IndexerError) as refused:
        webshart_source(root)
    assert said in str(refused.value) and "Nothing was written" in str(refused.value)
    assert refused.value.exit_code == EXIT_FAILURE


def test_a_bucket_or_urls_point_at_copying_or_materializing() -> None:
    with pytest.raises(IndexerError) as refused:
        webshart_source("s3://bucket/shards")
    message = str(refused.value)
    assert "it would take s3://... for a Hub repo name" in message
    assert "Copy the shards to a local folder" in message and "indexer materialize DIR" in message


def test_hub_shards_of_one_file_name_are_found() -> None:
    hub = WebshartSource("org/name", "data", hub=True)
    assert same_named_shards(hub, ["a/x.tar", "b/x.tar", "c/y.tar"]) == [("a/x.tar", "b/x.tar")]
    assert same_named_shards(WebshartSource("/data"), ["a/x.tar", "b/x.tar"]) == []
