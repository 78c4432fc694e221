#!/usr/bin/env python3
"""Generate a DALLE-3-like sample folder: <key>.json + <key>.png|.jpg|.jpeg with real field names.

By default about 3% of samples carry the faults seen at 1M scale (truncated/empty JSON, missing or
string width/height, JSON without image, image without JSON, image_name that disagrees with the file,
a hostile image_name, non-ASCII captions). Images are valid PNG files (or JPEG/WebP headers) whose
header declares the sample's size, so header sniffing sees real values without megabytes of pixels.

    python scripts/make_sample.py ROOT --n 100000 [--faults 0.03] [--seed 0] [--subfolders 0]
    python scripts/make_sample.py ROOT --n 1000 --shards 4   # ROOT/data-000000.tar ... instead

With --shards the same samples are packed into uncompressed webdataset tar shards (members in key
order, JSON before image, as the DALLE-3 shards hold them) and no loose file is left under ROOT.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import random
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path

SIZES = [(1024, 1024), (1792, 1024), (1024, 1792), (512, 512), (896, 1152), (640, 480)]
SIZE_WEIGHTS = [60, 15, 15, 4, 3, 3]
SOURCES = ["chan_archive", "imagecreator_scrapes", "reddit_rdalle2", "laion_share_dalle3",
           "midjourney_share", "twitter"]
WORD_TEXT = (
    "a an the cat dog castle forest neon city robot portrait painting of in on with under glowing "
    "ancient tiny giant futuristic watercolor sunset ocean mountain dragon flower library astronaut "
    "café jardín 東京 night rain golden light detailed cinematic"
)
WORDS = WORD_TEXT.split()


@functools.cache
def png_bytes(width: int, height: int) -> bytes:
    """A complete, decodable PNG (grey, 8-bit) of the given size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = (b"\x00" + b"\x80" * width) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


@functools.cache
def jpeg_bytes(width: int, height: int) -> bytes:
    """A JPEG header (SOI, JFIF, SOF0, EOI) declaring the size; enough for header sniffers."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + (
        b"\x01\x22\x00\x02\x11\x01\x03\x11\x01")
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


@functools.cache
def webp_bytes(width: int, height: int) -> bytes:
    """A WebP (VP8X extended) header declaring the size."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (
        (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))
    body = b"WEBP" + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


IMAGE_WRITERS = {"png": png_bytes, "jpg": jpeg_bytes, "jpeg": jpeg_bytes, "webp": webp_bytes}


def sample_image(ext: str, size: tuple[int, int], key: str) -> bytes:
    """A sample's image: its size's image with the key in a comment (a PNG tEXt chunk before IEND,
    a JPEG COM segment after JFIF), so each file's bytes, and the md5 its JSON gives as DALLE-3's
    do, are its own, as `indexer materialize` checks them."""
    base, note = IMAGE_WRITERS[ext](*size), key.encode()
    if ext == "png":
        body = b"tEXt" + b"Comment\x00" + note
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return base[:-12] + chunk + base[-12:]  # IEND is the last 12 bytes
    if ext in ("jpg", "jpeg"):
        return base[:20] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + base[20:]  # after APP0
    return base


def caption(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def sample_json(rng: random.Random, key: str, ext: str, size: tuple[int, int]) -> dict:
    width, height = size
    file_hash = hashlib.md5(key.encode()).hexdigest()
    record = {
        "image_name": f"{key.rsplit('/', 1)[-1]}.{ext}",
        "md5_pil_hash": hashlib.md5(file_hash.encode()).hexdigest(),
        "md5_file_hash": file_hash,
        "sha512_hash": hashlib.sha512(key.encode()).hexdigest(),
        "short_caption": caption(rng, rng.randint(12, 30)),
        "long_caption": caption(rng, rng.randint(60, 140)),
        "resolution": f"{width}x{height}",
        "url": f"https://example.invalid/{file_hash[:12]}.{ext}",
        "width": width,
        "height": height,
        "source": rng.choices(SOURCES, weights=[40, 25, 15, 10, 5, 5])[0],
        "original_prompt": caption(rng, 20) if rng.random() < 0.1 else None,
    }
    if rng.random() < 0.2:
        record["short_caption2"] = [caption(rng, 10), caption(rng, 8)]
        record["long_caption2"] = [caption(rng, 40)]
    return record


FAULTS = ["no_size", "string_size", "truncated", "empty", "no_image", "no_json", "name_mismatch",
          "hostile_name"]


def make_dataset(root: str | os.PathLike[str], n: int, *, faults: float = 0.03, seed: int = 0,
                 subfolders: int = 0, start: int = 0) -> dict[str, int]:
    """Write n samples under root; returns how many of each fault were written."""
    rng = random.Random(seed * 1_000_003 + start)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    made: dict[str, int] = {}
    for i in range(start, start + n):
        folder = f"part{i % subfolders:03d}/" if subfolders else ""
        key = f"{folder}{i:08d}_{rng.getrandbits(32):08x}"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        ext = rng.choices(["png", "jpg", "jpeg"], weights=[70, 25, 5])[0]
        size = rng.choices(SIZES, weights=SIZE_WEIGHTS)[0]
        record = sample_json(rng, key, ext, size)
        image = sample_image(ext, size, key)
        record["md5_file_hash"] = hashlib.md5(image).hexdigest()
        fault = rng.choice(FAULTS) if rng.random() < faults else None
        made[fault or "clean"] = made.get(fault or "clean", 0) + 1
        text = json.dumps(record, ensure_ascii=False)
        if fault == "no_size":
            del record["width"], record["height"]
            text = json.dumps(record, ensure_ascii=False)
        elif fault == "string_size":
            record["width"], record["height"] = str(size[0]), str(size[1])
            text = json.dumps(record, ensure_ascii=False)
        elif fault == "truncated":
            text = text[: len(text) // 2]
        elif fault == "empty":
            text = ""
        elif fault == "name_mismatch":
            record["image_name"] = record["image_name"].rsplit(".", 1)[0] + ".webp"
            text = json.dumps(record, ensure_ascii=False)
        elif fault == "hostile_name":
            record["image_name"] = "../../../../tmp/pwned.png"
            text = json.dumps(record, ensure_ascii=False)
        if fault != "no_json":
            (root / f"{key}.json").write_text(text, encoding="utf-8")
        if fault != "no_image":
            (root / f"{key}.{ext}").write_bytes(image)
    return made


def make_shards(root: str | os.PathLike[str], n: int, shards: int, **options) -> dict[str, int]:
    """Write n samples as `shards` tar shards ROOT/data-000000.tar ..., keys dealt out in order
    (the samples make_dataset would write, faults included); returns the fault counts."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as loose:
        made = make_dataset(loose, n, **options)
        names = sorted(p.relative_to(loose).as_posix() for p in Path(loose).rglob("*") if p.is_file())
        stems = sorted({name.rsplit(".", 1)[0] for name in names})
        per_shard = -(-len(stems) // shards)
        by_stem: dict[str, list[str]] = {}
        for name in names:  # JSON first, then the image, as webdataset writers order a sample
            by_stem.setdefault(name.rsplit(".", 1)[0], []).append(name)
        for number in range(shards):
            with tarfile.open(root / f"data-{number:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
                for stem in stems[number * per_shard:(number + 1) * per_shard]:
                    for name in sorted(by_stem[stem], key=lambda m: not m.endswith(".json")):
                        tar.add(Path(loose) / name, arcname=name, recursive=False)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--faults", type=float, default=0.03, help="fraction of faulty samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subfolders", type=int, default=0, help="spread samples over N folders")
    parser.add_argument("--start", type=int, default=0, help="first sample number (to add more)")
    parser.add_argument("--shards", type=int, default=0, help="pack the samples into N tar shards")
    args = parser.parse_args()
    options = {"faults": args.faults, "seed": args.seed, "subfolders": args.subfolders, "start": args.start}
    if args.shards:
        made = make_shards(args.root, args.n, args.shards, **options)
    else:
        made = make_dataset(args.root, args.n, **options)
    print(f"wrote {args.n} samples to {args.root}: " + ", ".join(f"{k} {v}" for k, v in sorted(made.items())))


if __name__ == "__main__":
    main()
