"""Released schema files never change: schema/RELEASED.sha256 pins each one.

A database made with a released file is upgraded by the files after it, never by editing it (an
edit reaches only new databases and leaves the old ones without what it added). A schema file
not yet listed is unreleased and may still change; releasing it appends its hash.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from indexer import store

LIST_NAME = "RELEASED.sha256"
FIX = ("put the change in a new schema/NNN_*.sql instead (see README, Schema) and restore the "
       "released file, e.g. `git checkout <last release> -- schema/{name}`")


def released(folder: Path) -> dict[str, str]:
    """File name -> sha256, from the list in sha256sum's format (# lines are comments)."""
    entries = {}
    for number, line in enumerate((folder / LIST_NAME).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](\S+)", line)
        assert match, f"{LIST_NAME} line {number} is not `<sha256>  <file>`: {line!r}"
        entries[match.group(2)] = match.group(1)
    return entries


def problems(folder: Path) -> list[str]:
    """What is wrong with the released files in folder, one line each (empty: all is well)."""
    found = []
    listed = released(folder)
    for name, expected in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            found.append(f"schema/{name} was released and is missing; " + FIX.format(name=name))
            continue
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            found.append(f"schema/{name} was released and has changed (sha256 {actual}, released "
                         f"{expected}); " + FIX.format(name=name))
    numbers = [int(name[:3]) for name in listed if name[:3].isdigit()]
    last = max(numbers, default=0)
    for path in sorted(folder.glob("*.sql")):
        if path.name[:3].isdigit() and int(path.name[:3]) <= last and path.name not in listed:
            found.append(f"schema/{path.name} is older than the last released file but not in "
                         f"{LIST_NAME}: a released file's line was removed, or it was renamed")
    return found


def test_released_schema_files_are_unchanged():
    listed = released(store.schema_dir())
    assert "006_dataset_json_bytes.sql" in listed  # the list itself was not emptied
    found = problems(store.schema_dir())
    assert not found, "\n".join(found)


def test_each_schema_number_is_used_once():
    """user_version records a number: a second file with it would never be applied."""
    numbers = [number for number, _ in store.schema_files()]
    assert len(numbers) == len(set(numbers)), [path.name for _, path in store.schema_files()]


def test_the_check_catches_an_edited_and_a_missing_file(tmp_path):
    folder = tmp_path / "schema"
    shutil.copytree(store.schema_dir(), folder)
    assert problems(folder) == []
    upcoming = store.schema_files()[-1][0] + 1
    (folder / f"{upcoming:03d}_not_released_yet.sql").write_text("CREATE TABLE t (x);\n", encoding="utf-8")
    assert problems(folder) == []  # new files may change until they are listed
    with (folder / "001_core.sql").open("a", encoding="utf-8") as sql:
        sql.write("-- an innocent-looking edit\n")
    (folder / "004_shards.sql").unlink()
    found = problems(folder)
    assert len(found) == 2
    assert found[0].startswith("schema/001_core.sql was released and has changed")
    assert found[1].startswith("schema/004_shards.sql was released and is missing")
    assert all("new schema/NNN_*.sql" in line for line in found)
