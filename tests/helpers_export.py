"""Helpers for export tests: JPEG headers carrying an EXIF (or XMP) orientation, tar shards."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path


def with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """JPEG bytes with one more segment right after SOI."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def exif_payload(orientation: int, order: str = "MM") -> bytes:
    """An APP1 EXIF payload whose IFD0 holds only the orientation (a SHORT)."""
    fmt = "<" if order == "II" else ">"
    entry = struct.pack(fmt + "HHI", 0x0112, 3, 1) + struct.pack(fmt + "HH", orientation, 0)
    tiff = order.encode() + struct.pack(fmt + "HI", 42, 8) + struct.pack(fmt + "H", 1) + entry + b"\0" * 4
    return b"Exif\x00\x00" + tiff


def exif_jpeg(gen, width: int, height: int, orientation: int, order: str = "MM") -> bytes:
    """A JPEG header stored as width x height with an EXIF orientation."""
    return with_segment(gen.jpeg_bytes(width, height), 0xE1, exif_payload(orientation, order))


def xmp_jpeg(gen, width: int, height: int, orientation: int) -> bytes:
    xmp = f'<x:xmpmeta><rdf:Description tiff:Orientation="{orientation}"/></x:xmpmeta>'.encode()
    return with_segment(gen.jpeg_bytes(width, height), 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp)


def write_shard(path: Path, members: dict[str, bytes]) -> None:
    """A plain tar of the given members (name -> bytes), in that order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
