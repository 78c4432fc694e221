"""The one writer of test samples, behind the `sample_files` fixture (conftest.py): a sample's files
as bytes, a loose pair in a folder, raw JSON, and tar shards. Image bytes come from
scripts/make_sample.py (the `gen` fixture)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

Size = tuple[int, int]
# A shard member: a regular file (name, bytes), or a special member (link, FIFO, folder...) as is.
Member = tuple[str, bytes] | tarfile.TarInfo

DEFAULT_SIZE: Size = (1024, 768)
SHARD_MTIME = 1_700_000_000


class SampleFiles:
    """Writes samples the way the tests need them; every file goes through `files`."""

    def __init__(self, gen: ModuleType) -> None:
        self.gen = gen

    def image(self, ext: str = "png", size: Size = DEFAULT_SIZE) -> bytes:
        """A valid image (PNG) or image header (JPEG, WebP) declaring this size."""
        return self.gen.IMAGE_WRITERS[ext.lower()](*size)

    def record(self, key: str, *, ext: str = "png", size: Size = DEFAULT_SIZE, **fields: object) -> dict:
        """The JSON a sample gets unless told otherwise, with `fields` added or replaced."""
        return {"image_name": f"{key.rsplit('/', 1)[-1]}.{ext}", "width": size[0], "height": size[1],
                "short_caption": f"caption of {key}", "source": "test", **fields}

    def members(self, key: str, *, ext: str = "png", size: Size = DEFAULT_SIZE, record: dict | None = None,
                json_text: str | bytes | None = None, image: bool = True, json_file: bool = True,
                image_data: bytes | None = None, **fields: object) -> dict[str, bytes]:
        """A sample's files, name -> bytes, JSON first: `record` as JSON, or `json_text` as it is,
        or else the default record with `fields`; then the image of that size, or `image_data`.
        No JSON without `json_file`, no image without `image`."""
        assert not (fields and (record is not None or json_text is not None)), "fields are for the default"
        found: dict[str, bytes] = {}
        if json_file:
            if json_text is None:
                json_text = json.dumps(record if record is not None
                                       else self.record(key, ext=ext, size=size, **fields))
            found[f"{key}.json"] = json_text.encode() if isinstance(json_text, str) else json_text
        if image:
            found[f"{key}.{ext}"] = self.image(ext, size) if image_data is None else image_data
        return found

    def pair(self, root: Path, key: str, **options: Any) -> None:
        """A loose sample under root (the options of `members`)."""
        self.files(root, self.members(key, **options))

    def json(self, root: Path, key: str, text: str | bytes) -> None:
        """KEY.json under root holding exactly `text` (bytes for a file that is not UTF-8)."""
        self.files(root, {f"{key}.json": text.encode() if isinstance(text, str) else text})

    def files(self, root: Path, found: Mapping[str, bytes]) -> None:
        """Each name -> bytes as a file under root, its folders created."""
        for name, data in found.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def shard(self, path: Path, members: Mapping[str, bytes] | Iterable[Member], *, mode: str = "w",
              tar_format: int = tarfile.GNU_FORMAT) -> Path:
        """A tar (mode 'w', 'w:gz'...) of the members in order: name -> bytes, or a list of
        (name, bytes) and special TarInfo members; regular files get mtime SHARD_MTIME."""
        path.parent.mkdir(parents=True, exist_ok=True)
        items = members.items() if isinstance(members, Mapping) else members
        with tarfile.open(path, mode, format=tar_format) as tar:
            for member in items:
                if isinstance(member, tarfile.TarInfo):
                    tar.addfile(member)
                    continue
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = SHARD_MTIME
                tar.addfile(info, io.BytesIO(data))
        return path

    @staticmethod
    def special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
        """A shard member that is not a regular file: a link, FIFO, device or folder."""
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        return info
