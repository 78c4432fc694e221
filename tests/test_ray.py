"""`--engine ray` against a real local Ray instance the tests start, on 127.0.0.1 only: a Ray run
(index, extract, materialize) writes the files and database a local run writes, incremental equals
fresh, and a task whose worker dies is run again (once: it succeeds; every time: its call's
fallback stands in, the run goes on), the summary counting the retries."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_index import sample_rows

from indexer.errors import EXIT_INCOMPLETE
from indexer.extract import extract_shards
from indexer.ingest.engines import TASK_RETRIES, pool_for, run_report
from indexer.ingest.index import index_root
from indexer.ingest.workers import map_in_order
from indexer.materialize import place
from indexer.render.materialize import format_materialize_summary

ROW = "key, image_ext, json_ext, width, height, size_from, status, error, warning, meta, shard, json_offset"


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance on loopback only (Ray 2.60 binds the machine's other address unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    try:
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        yield ray
    finally:
        ray.shutdown()


pytestmark = pytest.mark.usefixtures("no_racy")  # files the test just wrote count as settled


def rows(db: Path) -> list[tuple]:
    return sample_rows(db, tuple(ROW.split(", ")), order="key")


def dataset(root: Path, gen, sample_files) -> Path:
    gen.make_dataset(root / "loose", 300, faults=0.2, seed=5)
    members = {n: b for i in range(20) for n, b in sample_files.members(f"m{i}", size=(64, 48)).items()}
    sample_files.shard(root / "shards" / "s0.tar", members)
    return root


def test_a_ray_run_writes_what_a_local_run_writes_and_reruns_stay_equal(tmp_path, ray_local, gen,
                                                                         sample_files):
    root = dataset(tmp_path / "data", gen, sample_files)
    local, on_ray = tmp_path / "local.sqlite", tmp_path / "ray.sqlite"
    index_root(local, root, workers=1)
    summary = index_root(on_ray, root, engine="ray", keys_per_commit=64)  # several tasks
    assert rows(on_ray) == rows(local)
    assert summary["engine"] == "ray" and set(summary["tasks_by_node"]) == {"127.0.0.1"}
    assert summary["task_retries"] == summary["tasks_failed"] == 0 and 0 < summary["writer_busy"] <= 1

    for path in sorted((root / "loose").rglob("*.json"))[:40:4]:  # edit, remove, add
        path.write_text('{"width": 9, "height": 9, "short_caption": "edited"}')
    for path in sorted((root / "loose").rglob("*.png"))[5:8]:
        path.unlink()
    sample_files.pair(root / "loose", "new/one", size=(10, 10))
    index_root(on_ray, root, engine="ray")
    fresh = tmp_path / "fresh.sqlite"
    index_root(fresh, root, workers=1)
    assert rows(on_ray) == rows(fresh)


def test_extract_on_ray_places_and_records_what_a_local_extract_does(tmp_path, ray_local, sample_files):
    shards = []
    for n in range(3):
        members = {k: v for i in range(5)
                   for k, v in sample_files.members(f"s{n}/k{i}", size=(64, 48)).items()}
        shards.append(tmp_path / f"s{n}.tar")
        sample_files.shard(shards[-1], members)
    local = extract_shards(tmp_path / "local.sqlite", shards, tmp_path / "local")
    on_ray = extract_shards(tmp_path / "ray.sqlite", shards, tmp_path / "ray", engine="ray")
    assert on_ray["failures"] == [] and on_ray["tasks_by_node"] == {"127.0.0.1": 3}
    assert 0 < on_ray["writer_busy"] <= 1 and 0 < local["writer_busy"] <= 1
    assert rows(tmp_path / "ray.sqlite") == rows(tmp_path / "local.sqlite") and local["samples"] == 15
    def placed(folder: Path) -> dict:
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    assert placed(tmp_path / "ray") == placed(tmp_path / "local")


def test_a_driver_killed_mid_run_then_run_again_ends_as_a_fresh_run(tmp_path, ray_local, gen):
    root = tmp_path / "data"
    gen.make_dataset(root, 3000, faults=0.1, seed=9)
    db = tmp_path / "ray.sqlite"
    code = ("import sys; from indexer.ingest.index import index_root;"
            " index_root(sys.argv[1], sys.argv[2], engine='ray', keys_per_commit=32, workers=2)")
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-c", code, str(db), str(root)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and driver.poll() is None and not _committed(db):
        time.sleep(0.02)
    driver.kill()
    driver.wait()
    [(status,)] = sqlite3.connect(db).execute("SELECT status FROM runs").fetchall()
    assert status == "running"  # killed mid-run: a kill records nothing
    assert 0 < len(rows(db)) < 3000

    index_root(db, root, engine="ray")
    index_root(tmp_path / "fresh.sqlite", root, workers=1)
    assert rows(db) == rows(tmp_path / "fresh.sqlite")


def _committed(db: Path) -> bool:
    """Whether a batch of samples is in the database yet (False while it is being created)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
        try:
            return conn.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _die_once(marker: str, value: int) -> int:
    """Kills its worker the first time it runs for a value with a marker path (Ray runs it again)."""
    if marker and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return value * 2


def _die_always(value: int) -> int:
    if value == 3:
        os._exit(1)
    return value * 2


def test_a_task_whose_worker_dies_runs_again_or_gives_way_to_its_fallback(tmp_path, ray_local):
    ray_pool = pool_for("ray", None, io_bound=False)
    run_report("ray")  # what earlier tests left counted
    calls = [(str(tmp_path / "died") if value == 2 else "", value) for value in range(5)]
    assert list(map_in_order(_die_once, calls, 2, 4, pool_of=ray_pool)) == [0, 2, 4, 6, 8]
    assert (tmp_path / "died").exists()  # the worker did die once
    report = run_report("ray")
    assert (report["task_retries"], report["tasks_failed"]) == (1, 0)  # Ray's attempt number
    assert report["tasks_by_node"] == {"127.0.0.1": 5}

    failed = list(map_in_order(_die_always, [(value,) for value in range(5)], 2, 4, pool_of=ray_pool,
                               on_error=lambda call, exc: ("failed", call[0], type(exc).__name__)))
    assert failed[:3] == [0, 2, 4] and failed[4] == 8
    assert failed[3][:2] == ("failed", 3)
    report = run_report("ray")
    assert (report["task_retries"], report["tasks_failed"]) == (TASK_RETRIES, 1)
    assert report["tasks_by_node"] == {"127.0.0.1": 4}


def materialize_source(folder: Path, sample_files) -> Path:
    """Three shards of four pairs, and two loose pairs beside them."""
    for n in range(3):
        members = {k: v for i in range(4)
                   for k, v in sample_files.members(f"sub/k{n}{i}", size=(32 + 4 * n + i, 24)).items()}
        sample_files.shard(folder / f"s{n}.tar", members)
    for key in ("loose/x", "loose/y"):
        sample_files.files(folder, sample_files.members(key, size=(61, 24)))
    return folder


def placed_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_materialize_on_ray_places_and_records_what_a_local_run_does(tmp_path, ray_local, cli, sample_files):
    source = materialize_source(tmp_path / "shards", sample_files)
    runs = {}
    for engine in ("local", "ray"):
        (tmp_path / engine).mkdir()
        db = tmp_path / engine / "db.sqlite"
        index_root(db, source, workers=1)
        result = cli("materialize", tmp_path / engine / "out", "--db", db, "--where", "width % 2 = 0",
                     "--engine", engine, "--workers", "2", "--json")
        assert result.exit_code == 0, result.stderr
        runs[engine] = json.loads(result.stdout)
    on_ray = runs["ray"]
    assert placed_files(tmp_path / "ray" / "out") == placed_files(tmp_path / "local" / "out")
    assert rows(tmp_path / "ray" / "db.sqlite") == rows(tmp_path / "local" / "db.sqlite")
    assert (on_ray["fetched"], on_ray["failed_count"]) == (runs["local"]["fetched"], 0) == (6, 0)
    assert sum(on_ray["tasks_by_node"].values()) > 1 and set(on_ray["tasks_by_node"]) == {"127.0.0.1"}
    assert 0 < on_ray["writer_busy"] <= 1 and on_ray["task_retries"] == 0
    assert "ray: tasks " in format_materialize_summary(on_ray) and "on 127.0.0.1; 0 attempts retried" in \
        format_materialize_summary(on_ray)
    again = index_root(tmp_path / "ray" / "db.sqlite", tmp_path / "ray" / "out")
    assert again["files_read"] == 0  # every placed file recorded as it is


def _dies_on_shard_s1(task: place.MaterializeTask) -> place.TaskOutcome:
    """A materialize task that kills its worker whenever it holds a sample of s1.tar."""
    if any(wanted.shard == "s1.tar" for wanted, _files in task.todo):
        os._exit(1)
    return place.run_task(task)


def test_a_materialize_task_that_always_dies_is_recorded_and_the_run_goes_on(tmp_path, ray_local, cli,
                                                                             sample_files, monkeypatch):
    source = materialize_source(tmp_path / "shards", sample_files)
    db, out = tmp_path / "db.sqlite", tmp_path / "out"
    index_root(db, source, workers=1)
    monkeypatch.setattr(sys.modules["indexer.materialize"], "run_task", _dies_on_shard_s1)
    result = cli("materialize", out, "--db", db, "--engine", "ray", "--workers", "2", "--json")
    assert result.exit_code == EXIT_INCOMPLETE, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(f["key"] for f in summary["failed"]) == [f"sub/k1{i}" for i in range(4)]
    assert all("its materialize task failed" in f["error"] for f in summary["failed"])
    assert summary["fetched"] == 10 and summary["tasks_failed"] >= 1
    assert summary["task_retries"] == TASK_RETRIES * summary["tasks_failed"]
    assert sorted({name.split(".")[0] for name in placed_files(out)}) == sorted(
        {f"sub/k{n}{i}" for n in (0, 2) for i in range(4)} | {"loose/x", "loose/y"})
    assert not [p for p in out.iterdir() if p.name.startswith(".indexer-")]  # staging folders gone

    monkeypatch.undo()  # the next run fetches only what is missing
    again = cli("materialize", out, "--db", db, "--engine", "ray", "--json")
    assert again.exit_code == 0, again.stderr
    rerun = json.loads(again.stdout)
    assert (rerun["fetched"], rerun["in_place"], rerun["failed_count"]) == (4, 10, 0)
