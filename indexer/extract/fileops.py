"""The few os calls through which extract puts files into the root (sinks.py, stage.py), gathered in
one object so a test can make one of them fail (a full disk, a refused folder, a kill half-way)
without replacing it in the `os` module for everything else in the process.

`FS` holds the real calls; nothing but tests changes it, and `reset` puts the real ones back.
"""

from __future__ import annotations

import os
from collections.abc import Callable


class FileOps:
    """os.mkdir, os.open, os.link, os.rename and os.copy_file_range (None where the platform has
    none), called with os's own arguments."""

    mkdir: Callable[..., None]
    open: Callable[..., int]
    link: Callable[..., None]
    rename: Callable[..., None]
    copy_file_range: Callable[..., int] | None

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.mkdir = os.mkdir
        self.open = os.open
        self.link = os.link
        self.rename = os.rename
        self.copy_file_range = getattr(os, "copy_file_range", None)  # Linux only


FS = FileOps()
