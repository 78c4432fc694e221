"""export kohya and export aitk, given a user's mistake or a broken environment, end in one clear
line and a documented exit code, like every command in test_cli_errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_errors import CASES, assert_one_clear_line, broken, indexed, run

__all__ = ["indexed"]  # a fixture shared with test_cli_errors


def trainer_commands(db: Path, out_dir: Path) -> dict[str, list[str]]:
    return {
        "export kohya": ["export", "kohya", str(out_dir / "x.jsonl"), "--db", str(db)],
        "export aitk": ["export", "aitk", "--db", str(db), "--folder", str(out_dir)],
    }


@pytest.mark.parametrize("case", CASES)
def test_trainer_exports_fail_in_one_line(indexed, case: str) -> None:
    tmp, root, good_db = indexed
    db, _root, out_dir = broken(tmp, root, good_db, case)
    for name, args in trainer_commands(db, out_dir).items():
        proc = run(args)
        assert_one_clear_line(proc, f"{case} / {name}")


def test_trainer_exports_work_on_the_good_inputs(indexed) -> None:
    tmp, root, good_db = indexed
    out = tmp / "good-kohya.jsonl"
    run(["export", "kohya", str(out), "--db", str(good_db)], expect_ok=True)
    assert out.read_text("utf-8").count("\n") == 20
    run(["export", "aitk", "--db", str(good_db), "--where", "width > 0"], expect_ok=True)
    assert (root / ".aitk_size.json").is_file()
