"""Output files replaced whole: whoever reads one (a trainer, a browser, the next export) sees the
old file or the new one, never half of one, and a write that fails leaves the old one as it was.

Both the exports and `indexer report` write their files through here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import IndexerError

TEMP_MARK = ".tmp-"  # in every temp file's name: `.<name>.tmp-<pid>-<random>` beside the output


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a new, empty temp file beside `path` for the block to fill; it is synced and renamed
    over `path` only when the block succeeds, and removed in every other case.

    The temp file is created exclusively, so an existing file or a link planted under its name is
    never written through, and with the mode any new file gets under the umask, so the output's
    permissions do not depend on how it was written.
    """
    temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise IndexerError(f"cannot write {path}: {exc.strerror or exc}; pick a folder you can write to "
                           "(the previous file, if any, is unchanged)") from exc
    try:
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        raise IndexerError(f"cannot write {path}: {exc.strerror or exc}; the previous file (if any) is "
                           "unchanged") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
