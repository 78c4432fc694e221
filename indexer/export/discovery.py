"""What SimpleTuner's recursive discovery of a dataset root finds: its images, which of them lack
a caption .txt, which it never sees (upper-case extensions) and which names are not UTF-8."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.ingest.walk import STAGING_PREFIX

# Extensions SimpleTuner discovers: lower case only, so `x.PNG` is never seen.
DISCOVERED_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "jxl", "avif"})
EXAMPLES = 5  # paths named in a warning or refusal


@dataclass
class ImageScan:
    """What SimpleTuner's recursive discovery of the root would find."""

    images: int = 0
    without_caption: list[str] = field(default_factory=list)
    without_caption_count: int = 0
    upper_case: list[str] = field(default_factory=list)
    upper_case_count: int = 0
    not_utf8: list[str] = field(default_factory=list)  # shown with \x escapes
    not_utf8_count: int = 0


def iter_files(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder relative to root, file names) for every folder, symlinked folders not entered."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(STAGING_PREFIX))
        rel = os.path.relpath(folder, root)
        yield ("" if rel == "." else rel.replace(os.sep, "/") + "/"), sorted(files)


def shown(path: str) -> str:
    """A path as text that can be printed and stored: bytes that are not UTF-8 become \\x escapes."""
    if path.isascii():
        return path
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def scan_images(root: Path) -> ImageScan:
    """Count what SimpleTuner would discover. A name that is not UTF-8 (which `index` skips) is
    still an image SimpleTuner finds, so it counts, and is named escaped and warned about."""
    scan = ImageScan()
    for folder, files in iter_files(root):
        names = set(files)
        for name in files:
            stem, dot, ext = name.rpartition(".")
            if not dot or not stem:
                continue
            discovered = ext in DISCOVERED_EXTENSIONS
            if not discovered and ext.lower() not in DISCOVERED_EXTENSIONS:
                continue
            path = shown(folder + name)
            if path != folder + name:
                scan.not_utf8_count += 1
                if len(scan.not_utf8) < EXAMPLES:
                    scan.not_utf8.append(path)
            if discovered:
                scan.images += 1
                if stem + ".txt" not in names:
                    scan.without_caption_count += 1
                    if len(scan.without_caption) < EXAMPLES:
                        scan.without_caption.append(path)
            else:
                scan.upper_case_count += 1
                if len(scan.upper_case) < EXAMPLES:
                    scan.upper_case.append(path)
    return scan
