"""export captions: only changes written, users' .txt respected, own stale files removed, root kept."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path

import pytest

from indexer.errors import IndexerError
from indexer.export.captions import export_captions
from indexer.ingest.index import index_root
from indexer.inspect import stats
from indexer.render.stats import format_stats


@pytest.fixture
def small(sample_files, data_root: Path, db_path: Path) -> Path:
    for number in range(6):
        sample_files.pair(data_root, f"sub/s{number}", short_caption=f"caption {number} café")
    sample_files.pair(data_root, "top", short_caption="top caption", ext="jpg")
    index_root(db_path, data_root, workers=1)
    return data_root


def txt_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text("utf-8") for p in folder.rglob("*.txt")}


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*.txt")}


def test_first_run_writes_every_caption_and_rerun_writes_nothing(small: Path, db_path: Path) -> None:
    first = export_captions(db_path)
    assert (first["written"], first["unchanged"]) == (7, 0)
    assert txt_files(small) == {**{f"sub/s{n}.txt": f"caption {n} café" for n in range(6)},
                                "top.txt": "top caption"}
    before = mtimes(small)
    second = export_captions(db_path)
    assert (second["written"], second["unchanged"], second["adopted"]) == (0, 7, 0)
    assert mtimes(small) == before
    assert not [p for p in small.rglob("*") if p.name.endswith(".indexer-tmp")]


def test_only_changed_captions_are_rewritten(sample_files, small: Path, db_path: Path) -> None:
    export_captions(db_path)
    before = mtimes(small)
    sample_files.pair(small, "sub/s2", short_caption="a new caption")
    index_root(db_path, small, workers=1)
    summary = export_captions(db_path)
    assert (summary["written"], summary["unchanged"]) == (1, 6)
    assert (small / "sub/s2.txt").read_text("utf-8") == "a new caption"
    after = mtimes(small)
    assert [name for name in after if after[name] != before[name]] == ["s2.txt"]


def test_users_own_txt_is_left_alone_unless_overwrite(small: Path, db_path: Path) -> None:
    (small / "top.txt").write_text("my own words", encoding="utf-8")
    summary = export_captions(db_path)
    assert summary["left_alone"] == 1 and summary["written"] == 6
    assert (small / "top.txt").read_text("utf-8") == "my own words"
    forced = export_captions(db_path, overwrite=True)
    assert (forced["overwritten"], forced["left_alone"]) == (1, 0)
    assert (small / "top.txt").read_text("utf-8") == "top caption"


def test_a_txt_edited_after_export_becomes_the_users(small: Path, db_path: Path) -> None:
    export_captions(db_path)
    (small / "sub/s1.txt").write_text("edited by hand, longer", encoding="utf-8")
    assert export_captions(db_path)["left_alone"] == 1
    removed = export_captions(db_path, where="key != 'sub/s1'")
    assert removed["removed"] == 0  # not ours any more: never deleted
    assert (small / "sub/s1.txt").read_text("utf-8") == "edited by hand, longer"


def test_identical_txt_is_adopted_after_the_database_is_rebuilt(small: Path, db_path: Path) -> None:
    export_captions(db_path)
    before = mtimes(small)
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    index_root(db_path, small, workers=1)
    summary = export_captions(db_path)
    assert (summary["adopted"], summary["written"], summary["left_alone"]) == (7, 0, 0)
    assert mtimes(small) == before
    assert export_captions(db_path)["unchanged"] == 7  # adopted files are ours from now on


def test_removes_only_its_own_files_for_samples_no_longer_exported(small: Path, db_path: Path) -> None:
    export_captions(db_path)
    (small / "stray.txt").write_text("not a sample's caption", encoding="utf-8")
    summary = export_captions(db_path, where="key LIKE 'sub/%' AND key != 'sub/s0'")
    assert summary["removed"] == 2 and summary["excluded"]["where"] == 2
    assert set(txt_files(small)) == {f"sub/s{n}.txt" for n in range(1, 6)} | {"stray.txt"}
    rows = sqlite3.connect(db_path).execute("SELECT count(*) FROM caption_files").fetchone()[0]
    assert rows == 5


def test_removed_sample_loses_its_caption(small: Path, db_path: Path) -> None:
    export_captions(db_path)
    (small / "sub/s3.json").unlink()
    (small / "sub/s3.png").unlink()
    index_root(db_path, small, workers=1)
    summary = export_captions(db_path)
    assert summary["removed"] == 1 and not (small / "sub/s3.txt").exists()


def test_hostile_image_name_never_leads_outside_the_root(sample_files, data_root: Path, db_path: Path,
                                                         tmp_path: Path) -> None:
    sample_files.pair(data_root, "evil", short_caption="evil caption", image_name="../../outside.png")
    sample_files.pair(data_root, "abs", short_caption="abs caption", image_name=str(tmp_path / "abs.png"))
    index_root(db_path, data_root, workers=1)
    summary = export_captions(db_path)
    assert summary["written"] == 2
    assert txt_files(data_root) == {"evil.txt": "evil caption", "abs.txt": "abs caption"}
    outside = [p for p in tmp_path.rglob("*.txt") if data_root not in p.parents]
    assert outside == []


def test_symlinked_txt_is_not_followed(small: Path, db_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("do not touch", encoding="utf-8")
    os.symlink(target, small / "top.txt")
    assert export_captions(db_path)["left_alone"] == 1
    assert export_captions(db_path, overwrite=True)["overwritten"] == 1
    assert target.read_text("utf-8") == "do not touch"
    assert not (small / "top.txt").is_symlink()
    assert (small / "top.txt").read_text("utf-8") == "top caption"


def test_caption_option_and_exclusions(sample_files, small: Path, db_path: Path) -> None:
    sample_files.pair(small, "nocap", short_caption="", long_caption="the long one")
    index_root(db_path, small, workers=1)
    assert export_captions(db_path)["excluded"] == {"no_caption": 1}
    summary = export_captions(db_path, captions=("short_caption", "long_caption"))
    assert summary["excluded"] == {} and (small / "nocap.txt").read_text("utf-8") == "the long one"


def test_cli_reports_counts(cli, small: Path, db_path: Path) -> None:
    (small / "top.txt").write_text("mine", encoding="utf-8")
    result = cli("export", "captions", "--db", db_path)
    assert result.exit_code == 0
    assert "written 6" in result.stdout and "left alone 1" in result.stdout
    summary = json.loads(cli("export", "captions", "--db", db_path, "--json").stdout)
    assert (summary["unchanged"], summary["left_alone"]) == (6, 1)


def test_a_run_killed_while_creating_files_is_finished_by_the_next(small: Path, db_path: Path) -> None:
    export_captions(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE caption_files SET size = -1, mtime_ns = -1 WHERE path = 'top.txt'")
    conn.commit()
    conn.close()
    (small / "top.txt").write_text("top ca", encoding="utf-8")  # half written when the run died
    summary = export_captions(db_path)
    assert (summary["written"], summary["left_alone"]) == (1, 0)
    assert (small / "top.txt").read_text("utf-8") == "top caption"


@pytest.fixture
def many(sample_files, data_root: Path, db_path: Path) -> Path:
    for number in range(24):
        sample_files.pair(data_root, f"m{number:02d}", short_caption=f"caption {number}",
                          kind="even" if number % 2 else "odd")
    index_root(db_path, data_root, workers=1)
    return data_root


def owned_records(db_path: Path) -> int:
    return sqlite3.connect(db_path).execute("SELECT count(*) FROM caption_files").fetchone()[0]


def test_a_misspelt_caption_field_is_refused_and_removes_nothing(cli, many: Path, db_path: Path) -> None:
    export_captions(db_path)
    before = mtimes(many)
    with pytest.raises(IndexerError) as caught:
        export_captions(db_path, captions=("short_captoin",))
    assert "--caption short_captoin (closest: short_caption)" in str(caught.value)
    assert mtimes(many) == before and owned_records(db_path) == 24
    result = cli("export", "captions", "--db", db_path, "--caption", "short_captoin", "--allow-mass-removal")
    assert result.exit_code == 1 and "short_captoin" in result.stderr
    assert mtimes(many) == before


def test_removing_more_than_half_needs_confirmation(cli, many: Path, db_path: Path) -> None:
    export_captions(db_path)
    before = mtimes(many)
    with pytest.raises(IndexerError, match=r"would remove 13 of the 24 caption files .*13 excluded by the"
                                           r" --where.*--allow-mass-removal"):
        export_captions(db_path, where="key < 'm11'")
    assert mtimes(many) == before and owned_records(db_path) == 24
    assert export_captions(db_path, where="key < 'm12'")["removed"] == 12  # half: no question asked
    export_captions(db_path)
    nothing = cli("export", "captions", "--db", db_path, "--where", "meta ->> '$.kind' = 'none'")
    assert nothing.exit_code == 1 and "would remove 24 of the 24" in nothing.stderr
    assert len(txt_files(many)) == 24
    confirmed = cli("export", "captions", "--db", db_path, "--where", "key < 'm11'", "--allow-mass-removal",
                    "--json")
    assert confirmed.exit_code == 0 and json.loads(confirmed.stdout)["removed"] == 13
    assert sorted(txt_files(many)) == [f"m{n:02d}.txt" for n in range(11)]


def test_a_handful_may_always_be_removed(small: Path, db_path: Path) -> None:
    export_captions(db_path)
    assert export_captions(db_path, where="0")["removed"] == 7  # all of them, but only 7
    assert txt_files(small) == {}


def test_samples_gone_from_the_index_count_as_removals(many: Path, db_path: Path) -> None:
    export_captions(db_path)
    for number in range(13):
        for ext in ("json", "png"):
            (many / f"m{number:02d}.{ext}").unlink()
    index_root(db_path, many, workers=1)
    with pytest.raises(IndexerError, match="13 no longer in the index"):
        export_captions(db_path)
    assert len(txt_files(many)) == 24
    assert export_captions(db_path, allow_mass_removal=True)["removed"] == 13


def refuse(monkeypatch: pytest.MonkeyPatch, name: str, suffixes: tuple[str, ...]) -> None:
    """Make os.<name> fail with EACCES for caption paths (tests run as root, who ignores modes)."""
    real = getattr(os, name)

    def denied(path, *args, **kwargs):
        if str(path).endswith(suffixes):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, denied)


def export_state(db_path: Path) -> tuple:
    return sqlite3.connect(db_path).execute("SELECT rows, failed, stale FROM export_status").fetchone()


def test_files_that_cannot_be_written_make_the_export_incomplete_and_are_retried(
        cli, small: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        refuse(patch, "open", (".txt", ".indexer-tmp"))
        summary = export_captions(db_path)
        assert (summary["failed"], summary["written"], summary["rows"]) == (7, 0, 0)
        assert summary["complete"] is False
        assert "Permission denied" in summary["errors"][0]
        assert export_state(db_path) == (0, 7, 1)
        figures = stats.dataset_stats(db_path, None)
        assert figures["exports"][0]["stale"] is True
        assert "STALE: 7 files could not be written" in format_stats(figures)
        result = cli("export", "captions", "--db", db_path, "--json")
        assert result.exit_code == 4 and json.loads(result.stdout)["failed"] == 7
        assert "rerun `indexer export captions`, which retries them" in result.stderr
    assert txt_files(small) == {} and owned_records(db_path) == 0
    retried = export_captions(db_path)
    assert (retried["written"], retried["failed"], retried["complete"]) == (7, 0, True)
    assert export_state(db_path) == (7, 0, 0)
    assert cli("export", "captions", "--db", db_path).exit_code == 0


def test_a_file_that_cannot_be_removed_is_removed_by_the_next_run(small: Path, db_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    export_captions(db_path)
    with monkeypatch.context() as patch:
        refuse(patch, "unlink", ("top.txt",))
        summary = export_captions(db_path, where="key != 'top'")
        assert (summary["removed"], summary["failed"], summary["rows"]) == (0, 1, 6)
        assert export_state(db_path) == (6, 1, 1)
    assert (small / "top.txt").exists()
    again = export_captions(db_path, where="key != 'top'")
    assert (again["removed"], again["failed"]) == (1, 0)
    assert not (small / "top.txt").exists() and export_state(db_path) == (6, 0, 0)
