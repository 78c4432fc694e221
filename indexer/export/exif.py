"""A JPEG's stored size and EXIF orientation, from its header: where trainers' sizes disagree.

sd-scripts wants the size as stored (it never rotates), ai-toolkit the size after
`exif_transpose`. The index's width/height come from the JSON, or from imagesize, which reports
the rotated size since imagesize 2 and the stored one before: for a JPEG whose orientation swaps
the axes no recorded size is safe for either trainer, so exports let the trainer measure those.
Only JPEGs are read (cameras write orientation there); PNG and WebP are taken as unrotated.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
from dataclasses import dataclass
from typing import BinaryIO

JPEG_EXTENSIONS = frozenset({"jpg", "jpeg"})
SWAPPING = frozenset({5, 6, 7, 8})  # transpose, rotate 270, transverse, rotate 90
ORIENTATION_TAG = 0x0112
EXIF_HEADER = b"Exif\x00\x00"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
# Pillow's getexif falls back to this XMP property when EXIF has no orientation.
XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length
FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn: they carry the size
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class JpegHeader:
    width: int  # as stored, before any rotation
    height: int
    orientation: int  # EXIF (or XMP) orientation; 1 when the file has none

    @property
    def swaps_axes(self) -> bool:
        return self.orientation in SWAPPING


def is_jpeg(image: str) -> bool:
    return image.rpartition(".")[2].lower() in JPEG_EXTENSIONS


def size_doubt(full: str, image: str, width: int, height: int) -> str | None:
    """Why (width, height) may not be the image's size for a trainer, or None when it is.

    Only JPEGs are read: one whose orientation swaps the axes (stored and displayed sizes differ,
    and the index may hold either), one whose stored size differs from the index's (the JSON's
    size is wrong), one that cannot be parsed. A trainer should measure those itself.
    """
    if not is_jpeg(image):
        return None
    header = read_jpeg_header(full)
    if header is None:
        return "unreadable_jpeg"
    if header.swaps_axes:
        return "exif_rotated"
    if (header.width, header.height) != (width, height):
        return "size_differs"
    return None


def read_jpeg_header(path: str) -> JpegHeader | None:
    """The header of a regular JPEG file, or None when it cannot be read or parsed (then no
    size of ours can be trusted for it). Non-blocking open: a FIFO put in an image's place
    must not hang the export."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return None
    with contextlib.closing(os.fdopen(fd, "rb")) as handle:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return parse_jpeg(handle)
        except OSError:
            return None


def parse_jpeg(handle: BinaryIO) -> JpegHeader | None:
    """The header of JPEG data, or None when it is not a JPEG or is damaged before its frame header."""
    try:
        return _walk_segments(handle)
    except (ValueError, struct.error):
        return None


def _walk_segments(handle: BinaryIO) -> JpegHeader | None:
    """Walk the segments up to the frame header, keeping the first EXIF and XMP segments."""
    if handle.read(2) != b"\xff\xd8":
        return None
    exif = xmp = None
    while True:
        if handle.read(1) != b"\xff":
            return None
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes
            marker = handle.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in STANDALONE:
            continue
        if code in (0xD9, 0xDA):  # end of image, or scan data, before any frame header
            return None
        (length,) = struct.unpack(">H", handle.read(2))
        if length < 2:
            return None
        if code in FRAME_MARKERS:
            _precision, height, width = struct.unpack(">BHH", handle.read(5))
            return JpegHeader(width, height, orientation(exif, xmp))
        if code == 0xE1 and (exif is None or xmp is None):
            payload = handle.read(length - 2)
            if exif is None and payload.startswith(EXIF_HEADER):
                exif = payload[len(EXIF_HEADER):]
            elif xmp is None and payload.startswith(XMP_HEADER):
                xmp = payload[len(XMP_HEADER):]
        else:
            handle.seek(length - 2, os.SEEK_CUR)


def orientation(exif: bytes | None, xmp: bytes | None) -> int:
    """EXIF IFD0's orientation, else XMP's tiff:Orientation, else 1 (as Pillow's getexif)."""
    if exif is not None:
        found = exif_orientation(exif)
        if found is not None:
            return found
    if xmp is not None and (match := XMP_ORIENTATION.search(xmp)):
        return int(match[2])
    return 1


def exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag of a TIFF structure's first IFD; ValueError when it is damaged."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        raise ValueError("EXIF without a TIFF byte order")
    magic, offset = struct.unpack(order + "HI", tiff[2:8])
    if magic != 42:
        raise ValueError("EXIF without the TIFF magic number")
    (count,) = struct.unpack(order + "H", tiff[offset:offset + 2])
    for number in range(count):
        start = offset + 2 + 12 * number
        entry = tiff[start:start + 12]
        if len(entry) < 12:
            raise ValueError("EXIF IFD cut short")
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == ORIENTATION_TAG:
            if kind == 3:  # SHORT
                return struct.unpack(order + "H", entry[8:10])[0]
            if kind == 4:  # LONG
                return struct.unpack(order + "I", entry[8:12])[0]
            raise ValueError("EXIF orientation of an unexpected type")
    return None
