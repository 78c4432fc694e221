"""Read one sample: parse its JSON, pick its image, work out width/height and a status.

Runs in worker processes, so it takes plain arguments and returns plain tuples. Nothing here
derives a path from file contents: `image_name` is compared as a string, never opened.
This is the hot loop of a first index (a million calls), hence the flat code.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from typing import NamedTuple

import orjson

from indexer.db.status import Status
from indexer.ingest.change import INT64_MAX, INT64_MIN, FileRecord, file_record, out_of_range_warning
from indexer.ingest.walk import IMAGE_EXTENSIONS, JSON_EXTENSION

MAX_DIMENSION = 1 << 20
# O_NONBLOCK: opening a FIFO that replaced a listed file returns at once instead of waiting forever
# for a writer (it is then refused by fstat); regular files read the same with or without it.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
RERUN = "then run `indexer index` again"
IMAGE_RANK = {ext: rank for rank, ext in enumerate(IMAGE_EXTENSIONS)}


class SampleRecord(NamedTuple):
    """What the samples table stores for a key (meta is compact JSON text or None)."""

    image: str | None
    json: str | None
    width: int | None
    height: int | None
    size_from: str | None
    status: str
    error: str | None
    warning: str | None
    meta: str | None

    def as_row(self) -> tuple:
        return tuple(self)


def parse_dimension(value: object) -> int | None:
    """A usable width/height: a positive integer, an integral float, or a numeric string."""
    if type(value) is int:
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None  # bool, None, lists, words, NaN...
    return number if 0 < number <= MAX_DIMENSION else None


def parse_json_bytes(data: bytes) -> tuple[dict | None, str | None]:
    """(object, None) or (None, reason) for the raw bytes of a sidecar JSON."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is harmless: drop it
            return parse_json_bytes(data[3:])
        return None, _json_error(data, exc)
    if type(value) is not dict:
        return None, f"top level is a JSON {type(value).__name__}, expected an object"
    return value, None


def _json_error(data: bytes, exc: Exception) -> str:
    if not data.strip():
        return "empty file" if not data else "file holds only whitespace"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as decode_exc:
        return f"not UTF-8 text (byte {decode_exc.start}); re-save it as UTF-8"
    return f"invalid JSON ({exc}); the file is truncated or corrupt"


def stored_size(handle) -> tuple[int, int]:
    """The size as stored in the header, ignoring EXIF orientation: what the JSON's width/height
    and kohya mean. imagesize 2.x applies the rotation unless told not to; 1.4 never does.
    Imported here, by the readers that need it: it imports urllib.request (~15 ms of every start)."""
    import imagesize

    try:
        return imagesize.get(handle, exif_rotation=False)
    except TypeError:  # imagesize 1.4 has no exif_rotation
        return imagesize.get(handle)


def header_size_of(data: bytes) -> tuple[int, int] | str:
    """(width, height) from the first bytes of an image (a tar member's head), or why not."""
    if not data:
        return "empty file (0 bytes)"
    try:
        width, height = stored_size(io.BytesIO(data))
    except Exception as exc:  # imagesize raises assorted errors on damaged headers
        return f"unreadable image header ({type(exc).__name__}: {exc})"
    if width <= 0 or height <= 0:
        return "not a PNG, JPEG or WebP image, or its header is truncated"
    return int(width), int(height)


def image_header_size(path: str, size: int) -> tuple[int, int] | str:
    """(width, height) from the image header without decoding pixels, or the reason it failed."""
    if size == 0:
        return "empty file (0 bytes)"
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    try:
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "not a regular file"
            width, height = stored_size(handle)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    except Exception as exc:  # imagesize raises assorted errors on damaged headers
        return f"unreadable image header ({type(exc).__name__}: {exc})"
    if width <= 0 or height <= 0:
        return "not a PNG, JPEG or WebP image, or its header is truncated"
    return int(width), int(height)


def choose_image(images: list[str], image_name: object) -> str:
    """Prefer the image whose file name equals image_name (string compare), then png>jpg>jpeg>webp."""
    if len(images) == 1:
        return images[0]
    if isinstance(image_name, str):
        for image in images:
            if image.rsplit("/", 1)[-1] == image_name:
                return image
    return min(images, key=lambda p: (IMAGE_RANK[p.rsplit(".", 1)[1].lower()], p))


def read_regular(path: str) -> tuple[os.stat_result, bytes | None]:
    """The file's stat and bytes; None instead of bytes when it is not a regular file."""
    fd = os.open(path, READ_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st, None
        data = os.read(fd, st.st_size + 1)
        if len(data) > st.st_size:  # it grew since fstat: read on to the end
            chunks = [data]
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
        return st, data
    finally:
        os.close(fd)


def read_sample(
    root: str, key: str, paths: list[str], scan_start_ns: int, verify_images: bool = False,
    json_bytes: dict[str, bytes] | None = None,
    known_stats: dict[str, os.stat_result] | None = None,
) -> tuple[SampleRecord | None, list[FileRecord], int]:
    """Read one key's files. Returns (sample or None if no file is left, file records, files read).

    json_bytes maps a JSON path to the bytes its file holds (extract has them from the tar stream):
    such a file is only stat-ed, not read again, and does not count as read. known_stats maps a
    path to its stat when the caller has it (extract, from the descriptor it wrote through).
    """
    files: list[FileRecord] = []
    json_path: str | None = None
    extra_json: list[str] = []
    image_paths: list[str] = []
    image_sizes: dict[str, int] = {}
    json_data: bytes | None = None
    json_read_error: str | None = None
    files_read = 0
    odd_times: list[FileRecord] = []  # files whose times a 64-bit column cannot hold
    cut = len(key) + 1
    prefix = root + "/"
    for path in sorted(paths):
        extension = path[cut:].lower()
        full = prefix + path
        if extension == JSON_EXTENSION and json_path is None:
            st, json_data, read, json_read_error = _read_json(full, path, json_bytes, known_stats)
            files_read += read
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            json_path = path
        else:
            try:
                st = (known_stats.get(path) if known_stats else None) or os.stat(full)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if extension == JSON_EXTENSION:  # a second spelling (x.json and x.JSON): recorded only
                extra_json.append(path)
            else:
                image_paths.append(path)
                image_sizes[path] = st.st_size
        files.append(file_record(path, st, scan_start_ns))
        if not (INT64_MIN <= st.st_mtime_ns <= INT64_MAX and INT64_MIN <= st.st_ctime_ns <= INT64_MAX):
            odd_times.append(files[-1])
    if not files:
        return None, [], files_read
    sample, header_reads = build_sample(
        key, json_path, extra_json, image_paths, json_data, json_read_error, verify_images,
        lambda image: image_header_size(f"{root}/{image}", image_sizes[image]),
    )
    if odd_times:
        sample = with_warnings(sample, [out_of_range_warning(record) or "" for record in odd_times])
    return sample, files, files_read + header_reads


def with_warnings(sample: SampleRecord, warnings: list[str]) -> SampleRecord:
    """The sample with more warnings after the ones it has."""
    return sample._replace(warning="; ".join([*filter(None, [sample.warning]), *warnings]) or None)


def _read_json(full: str, path: str, json_bytes: dict[str, bytes] | None,
               known_stats: dict[str, os.stat_result] | None
               ) -> tuple[os.stat_result | None, bytes | None, int, str | None]:
    """(stat or None when gone, bytes, files read, why it cannot be read) of a sample's JSON."""
    preloaded = json_bytes.get(path) if json_bytes else None
    try:
        if preloaded is not None:
            return (known_stats.get(path) if known_stats else None) or os.stat(full), preloaded, 0, None
        st, data = read_regular(full)
        return st, data, int(data is not None), None
    except FileNotFoundError:
        return None, None, 0, None
    except OSError as exc:
        try:
            st = os.stat(full)
        except OSError:
            return None, None, 0, None
        return st, None, 0, f"cannot read ({exc.strerror}); fix its permissions, {RERUN}"


def build_sample(
    key: str,
    json_path: str | None,
    extra_json: list[str],
    image_paths: list[str],
    json_data: bytes | None,
    json_read_error: str | None,
    verify_images: bool,
    header: Callable[[str], tuple[int, int] | str],
) -> tuple[SampleRecord, int]:
    """A key's sample from its JSON bytes and image paths; `header(image)` reads an image's size
    from its header (from a file, or from a tar member by offset), and is called only when needed.
    Returns the sample and how many image headers were read."""
    warnings: list[str] = []
    if extra_json:
        warnings.append(f"several JSON files for {key}: using {json_path}")
    obj, meta, json_error = None, None, json_read_error
    if json_path is not None and json_error is None:
        obj, json_error = parse_json_bytes(json_data or b"")
        if obj is not None:
            try:  # the common case inline: this runs a million times in a first run
                if b"\\u0000" in (json_data or b""):
                    raise ValueError
                meta = orjson.dumps(obj).decode()
            except (ValueError, orjson.JSONEncodeError):
                obj, meta, json_error = storable_json(obj, json_path, json_data or b"", warnings)
    image = None
    if image_paths:
        image = choose_image(image_paths, obj.get("image_name") if obj else None)
        if len(image_paths) > 1:
            others = ", ".join(p for p in image_paths if p != image)
            warnings.append(f"several images for {key}: using {image}, ignoring {others}")
    json_size = None
    if obj is not None:
        name = obj.get("image_name")
        file_name = image[image.rfind("/") + 1 :] if image is not None else None
        if file_name is not None and isinstance(name, str) and name and name != file_name:
            warnings.append(f"image_name says {name!r} but the image file is {image}")
        json_width = parse_dimension(obj.get("width"))
        json_height = parse_dimension(obj.get("height"))
        if json_width and json_height:
            json_size = (json_width, json_height)
    status, error, size, size_from, header_reads = _decide(
        key, json_path, json_error, image, json_size, verify_images, header, warnings)
    sample = SampleRecord(image, json_path, size[0] if size else None, size[1] if size else None,
                          size_from if size else None, status, error, "; ".join(warnings) or None, meta)
    return sample, header_reads


MAX_STORED_DEPTH = 254  # orjson writes objects nested this deep at most


def storable_json(obj: dict, json_path: str, data: bytes, warnings: list[str]
                  ) -> tuple[dict | None, str | None, str | None]:
    """(object, meta text, None) for a parsed sidecar the index can store as it is, or
    (None, None, reason) for one it cannot: JSON that parses is not always JSON that serialises.

    NUL characters are dropped from its text, with a warning: SQLite's text functions, and so the
    caption columns and every export, would otherwise cut a caption at the first one, silently."""
    if b"\\u0000" in data:
        cleaned = _without_nul(obj)
        if cleaned != obj:
            obj = cleaned
            warnings.append(f"{json_path}: NUL characters (\\u0000) dropped from its text")
    try:
        return obj, orjson.dumps(obj).decode(), None
    except orjson.JSONEncodeError as exc:
        if "Recursion" in str(exc):
            why = f"nested deeper than {MAX_STORED_DEPTH} levels, the most the index stores"
        else:
            why = f"holds a value the index cannot store ({exc})"
        return None, None, why


def _without_nul(value: object) -> object:
    """value with every NUL taken out of its strings and keys (called only when one is likely)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {key.replace("\x00", ""): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


Decision = tuple[str, str | None, tuple[int, int] | None, str, int]  # status, error, size, from, reads
# The statuses as plain strings: a StrEnum member pickles as a call, and .value is a descriptor.
OK, MISSING_JSON, MISSING_IMAGE = Status.OK.value, Status.MISSING_JSON.value, Status.MISSING_IMAGE.value
BAD_JSON, BAD_IMAGE = Status.BAD_JSON.value, Status.BAD_IMAGE.value


def _decide(key: str, json_path: str | None, json_error: str | None, image: str | None,
            json_size: tuple[int, int] | None, verify_images: bool,
            header: Callable[[str], tuple[int, int] | str], warnings: list[str]) -> Decision:
    """The sample's status, error and size, reading the image header only when the rules need it."""
    if json_path is None:
        header_size = header(image)  # type: ignore[arg-type]
        error = f"{image}: image without JSON ({key}.json is missing); add it or remove the image"
        return (MISSING_JSON, error, None if isinstance(header_size, str) else header_size,
                "image", 1)
    if json_error is not None:
        return BAD_JSON, f"{json_path}: {json_error}; fix or replace it, {RERUN}", None, "json", 0
    if image is None:
        error = (f"{json_path}: JSON without image (no {key}.png/.jpg/.jpeg/.webp); "
                 "add the image or remove the JSON")
        return MISSING_IMAGE, error, json_size, "json", 0
    if json_size and not verify_images:
        return OK, None, json_size, "json", 0
    header_size = header(image)
    if isinstance(header_size, str):
        why = "its JSON has no usable width/height and " if not json_size else ""
        error = f"{image}: {why}{header_size}; replace the image, {RERUN}"
        return BAD_IMAGE, error, json_size, "json", 1
    if json_size and json_size != header_size:
        warnings.append(
            f"{json_path} says {json_size[0]}x{json_size[1]} but the {image} header says "
            f"{header_size[0]}x{header_size[1]}; using the header"
        )
    return OK, None, header_size, "image", 1
