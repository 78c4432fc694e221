"""Run commands where a folder is really read-only, as on a mounted dataset volume or a team share.

Root ignores folder permissions, so a folder made read-only by chmod proves nothing to a test run
as root. Here the folder is bind-mounted read-only over itself inside a private mount namespace
(`unshare -rm`: a user namespace, so no privilege is needed and nothing leaks to the host's
mounts); the command runs in that namespace, and the kernel answers EROFS to every write. Where
user namespaces are not allowed, a process that is not root gets the folder's permissions taken
away instead, which bind it just as well.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# Mount FOLDER read-only over itself, then run the rest of the arguments in that namespace.
MOUNT_SCRIPT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


@functools.cache
def method() -> str:
    """'mount' when a read-only bind mount works here, else 'chmod' (never for root)."""
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"indexer-ro-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        if shutil.which("unshare"):
            done = subprocess.run(["unshare", "-rm", "sh", "-c", MOUNT_SCRIPT, "sh", str(probe),
                                   "sh", "-c", 'touch "$0/x"', str(probe)], capture_output=True, text=True)
            if done.returncode != 0 and "Read-only file system" in done.stderr:
                return "mount"
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if os.geteuid() == 0:
        raise RuntimeError("root without user namespaces: no way to make a read-only folder here")
    return "chmod"


def run_readonly(folder: Path, args: Sequence[str], *, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m indexer ARGS` (or the command ARGS when it starts with '-c') with `folder`
    read-only; stdout and stderr as text."""
    command = [sys.executable, *(args if args and args[0] == "-c" else ["-m", "indexer", *args])]
    run_env = {**os.environ, **(env or {})}
    if method() == "mount":
        return subprocess.run(["unshare", "-rm", "sh", "-c", MOUNT_SCRIPT, "sh", str(folder), *command],
                              capture_output=True, text=True, cwd=cwd, env=run_env)
    modes = _take_write_permission(folder)
    try:
        return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=run_env)
    finally:
        for path, mode in modes.items():
            os.chmod(path, mode)


def run_writable(args: Sequence[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The same command without any mount: the answer a read-only run is compared with."""
    command = [sys.executable, *(args if args and args[0] == "-c" else ["-m", "indexer", *args])]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


def _take_write_permission(folder: Path) -> dict[Path, int]:
    modes = {}
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        modes[path] = mode
        os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return modes


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder with its size and mtime_ns: equal before and after means untouched."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}
