#!/usr/bin/env python3
"""Read tar shards and their indexes through the real webshart 0.6.0 and check every sample's bytes.

    python scripts/check_webshart.py DIR [--metadata MDIR]   # DIR/**/X.tar with X.json beside it
    python scripts/check_webshart.py --demo                  # builds two shards + indexes, checks them
    python scripts/check_webshart.py --hub                   # a Hub dataset, on loopback (needs root)

webshart needs CPython >= 3.12, so this script makes (or reuses) a venv under
~/.cache/indexer-webshart-venv from a 3.12 interpreter (--python, else $INDEXER_WEBSHART_PYTHON,
else ~/.pyenv/versions/3.12.*, else python3.12 on PATH, else any >= 3.12), installs webshart==0.6.0
into it, and runs a child script there. The child calls
`webshart.discover_dataset(source=DIR, metadata=MDIR)`, loads every sample with
`TarDataLoader.load_sample(shard, sample)` and every indexed file by iterating the loader, and
compares each one's bytes with the member's bytes read by Python's own `tarfile`. It prints, per
shard, the samples and for each one ok/MISMATCH with the width, height and captions webshart
reports. Exit 1 on any mismatch (or a shard webshart would skip). `--demo` also checks that the
facts below still hold and that a one-byte shift of an offset is caught, then reads the indexer's
own exports the way SimpleTuner 4.10.1 reads a `type: webshart` dataset: with webshart's metadata
cache on in the folder `export config --backend webshart` names (`enable_metadata_cache` before
any loader, as its WebshartDataBackend does), captions from the index's `captions` and through
`webshart.caption_key` (its get_caption: the sidecar read with `load_sample_json` through the
index's json_path/json_offset/json_length). A shard is changed, indexed and exported again: read
through the same cache folder every sample must come back right, while a copy of that cache taken
before the export (what it would hold had the export not removed webshart's copy of the old
index) must give wrong bytes; and without the sidecar fields caption_key must find nothing. CI
does not run this (it needs 3.12 and a package install); it is the proof a human runs. `--hub`
(check_webshart_hub.py) does the same for a Hub dataset: indexed through huggingface_hub and read
back through webshart from the Hub stand-in, in a network namespace where huggingface.co is
127.0.0.1 (webshart's Hub address cannot be moved by a setting).

The index format webshart 0.6.0 accepts (checked against the package, not only its README):
    {"path": "X.tar", "filesize": <int>, "files": {"<member>": {"offset": <data offset>,
     "length": <bytes>, "width": W, "height": H, "captions": "..." | [...] | {...}}}}
- `filesize` is required (an int) in this dict form, but never compared with the tar's size;
  `path` is optional and never used (the tar is found by name). `files` may also be a list of
  entries with a `path` (then `filesize` is optional).
- `offset` and `length` are required ints (`size` is accepted for `length`); an offset past the end
  of the tar fails only when that sample is loaded ("failed to fill whole buffer").
- `width`/`height` must be non-negative JSON integers or null: a string, a float (even 1024.0) or a
  negative number makes the WHOLE shard's index unreadable ("data did not match any variant of
  untagged enum ShardMetadataFormat").
- Also accepted per entry: `caption` (same as `captions`), `aspect`, `sha256`, `json_path`,
  `json_offset`, `json_length`, `json_metadata`, and any unknown key (ignored).
- A shard whose X.json is missing is skipped silently (none at all: "No shards found in dataset");
  X.TAR (upper case) is not a shard; discovery recurses into subfolders. With `metadata=MDIR` the
  index of DIR/sub/X.tar is MDIR/sub/X.json. A `source` or `metadata` that is not an existing folder
  is taken for a Hugging Face repo name (a network lookup): this script only passes absolute paths
  of folders that exist.

Which members are samples (`list_samples_in_shard`, `load_sample`): every indexed file except
sidecars, sorted by path (code point order, whatever the order in the tar); a sidecar is a `.json`
(the extension in any case) whose stem (the path minus its last extension) has another non-JSON
file, or a `.txt` whose stem has a file that is neither `.json` nor `.txt`. So not images only: a
lone `x.json`, a lone `x.txt` or an `x.cls` is a sample too. Iterating the loader yields every
indexed file, sidecars too. Only members listed in the index exist for webshart: folders and
unlisted members are invisible.

Captions (`entry.captions`, from `load_sample`): the index's `captions` (or `caption`) if present
(a string, a list, or an object, returned as stored; "" stays ""); else a paired `x.txt` read from
the tar, stripped; else the paired `x.json` read from the tar: the values of its keys caption,
captions, text, txt, description, descriptions, prompt, alt_text (in that order, repeats dropped; one
string, or a list), and when it has none of them the WHOLE JSON object as a dict (so DALLE-3's
`short_caption` is never picked up by name). The sidecar pairing is inferred by stem when the index
has no `json_path`. `json_metadata` in the index is returned as `entry.json_metadata` but never used
for captions. `loader.get_metadata(shard)`, which SimpleTuner's webshart backend reads for captions
(falling back to a `.txt` member only), holds only the index's own `captions`: an index meant for
SimpleTuner must carry them. width/height come only from the index (webshart never reads image
headers when loading).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

WEBSHART = "webshart==0.6.0"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "indexer-webshart-venv"

# Runs inside the 3.12 venv: argv[1] = a JSON object: source, subfolder, metadata, report (path),
# cache (webshart's metadata cache), shard_cache (its shard cache), caption_key, local_copy (the
# folder holding a Hub repo's files, to compare a remote shard's bytes with).
CHILD = r'''
import json, os, sys, tarfile
import webshart

params = json.loads(sys.argv[1])
source, metadata, report_path = params["source"], params.get("metadata"), params["report"]
cache, caption_key = params.get("cache"), params.get("caption_key")


def normal(name):
    return "/".join(part for part in name.split("/") if part not in ("", ".")) or "."


def tar_bytes(tar_path):
    """Every regular member's bytes by name (normalised as tar xf places it; a later duplicate wins);
    a Hub shard's from the local copy of the repo's files."""
    if "/resolve/main/" in tar_path:
        tar_path = os.path.join(params["local_copy"], tar_path.split("/resolve/main/", 1)[1])
    found = {}
    with tarfile.open(tar_path) as tar:
        for info in tar:
            if info.isreg():
                found[normal(info.name)] = tar.extractfile(info).read()
    return found


def caption_source(name, index_entry, files):
    if index_entry.get("captions") is not None:
        return "index"
    stem = name.rsplit(".", 1)[0]
    lowered = {path.lower() for path in files}
    if stem.lower() + ".txt" in lowered:
        return ".txt sidecar"
    if index_entry.get("json_path"):
        return ".json sidecar"
    return "none"


def simpletuner_caption(shard, number, name, index):
    """What SimpleTuner 4.10.1's WebshartDataBackend.get_caption returns with webshart.caption_key
    set: the key from the index's json_metadata, else from the sidecar webshart reads through the
    index's json_path (load_sample_json of a loader made with load_file_data=False), else from the
    index entry itself or its captions."""
    entry = dict(index.get(name) or {})
    if entry.get("json_metadata") is None and entry.get("json_path"):
        payload = caption_loader.load_sample_json(shard, number)
        if payload is not None:
            entry["json_metadata"] = json.loads(payload)
    sources = [entry.get("json_metadata") or {}, entry]
    sources += [source.get("captions") for source in list(sources) if isinstance(source, dict)]
    for source in sources:
        if isinstance(source, dict) and caption_key in source:
            value = source[caption_key]
            return value.strip() if isinstance(value, str) else value
    return None


dataset = webshart.discover_dataset(source=source, subfolder=params.get("subfolder"), metadata=metadata)
if cache:
    # as SimpleTuner 4.10.1's WebshartDataBackend.__init__ does, before it makes any loader
    dataset.enable_metadata_cache(location=cache)
if params.get("shard_cache"):
    # SimpleTuner's default for a Hub source (shard_cache_gb 25): whole shards kept on disk
    dataset.enable_shard_cache(location=params["shard_cache"], cache_limit_gb=1.0, parallel_downloads=4)
loader = webshart.TarDataLoader(dataset, max_file_size=1 << 62)
caption_loader = webshart.TarDataLoader(dataset, max_file_size=1 << 62, load_file_data=False)
report = {"webshart": webshart.__version__, "shards": [], "mismatches": 0}
for shard in range(dataset.num_shards):
    info = dataset.get_shard_info(shard)
    members = tar_bytes(info["tar_path"])
    index = loader.get_metadata(shard)
    names = dataset.list_samples_in_shard(shard)
    shard_report = {"name": info["name"], "tar": info["tar_path"], "files": info["num_files"],
                    "samples": [], "mismatches": []}
    print(f"shard {info['name']}: {len(names)} samples, {info['num_files']} indexed files "
          f"({info['tar_path']})")
    for number, name in enumerate(names):
        entry = loader.load_sample(shard, number)
        if entry is None:
            problem = f"{name}: load_sample returned None"
        elif entry.path != name:
            problem = f"{name}: load_sample({number}) gave {entry.path}"
        elif name not in members:
            problem = f"{name}: no such regular member in the tar"
        elif entry.data != members[name]:
            problem = f"{name}: the {len(entry.data)} bytes webshart read differ from the member's"
        elif entry.json_path and entry.json_data != members.get(normal(entry.json_path)):
            problem = f"{name}: its JSON sidecar {entry.json_path} differs from the member"
        else:
            problem = None
        row = {"path": name, "ok": problem is None,
               "width": getattr(entry, "width", None), "height": getattr(entry, "height", None),
               "captions": getattr(entry, "captions", None), "json_path": getattr(entry, "json_path", None),
               "caption_source": caption_source(name, index.get(name, {}), index),
               "index_captions": (index.get(name) or {}).get("captions")}
        if caption_key:
            row["caption_key"] = simpletuner_caption(shard, number, name, index)
        shard_report["samples"].append(row)
        if problem:
            shard_report["mismatches"].append(problem)
        size = f"{row['width']}x{row['height']}" if row["width"] is not None else "no size"
        print(f"  {'ok' if problem is None else 'MISMATCH'}  {name}  {size}  "
              f"captions={json.dumps(row['captions'], ensure_ascii=False)} ({row['caption_source']})"
              + (f"  <- {problem}" if problem else ""))
    report["shards"].append(shard_report)

# Every indexed file, sidecars too, as iterating the loader yields them: shard after shard, each
# shard's files in list_files_in_shard order (entries carry no shard number).
iterated = [(entry.path, entry.data) for entry in webshart.TarDataLoader(dataset, max_file_size=1 << 62)]
start = 0
for shard, item in enumerate(report["shards"]):
    members = tar_bytes(item["tar"])
    listed = dataset.list_files_in_shard(shard)
    chunk = iterated[start:start + len(listed)]
    start += len(listed)
    item["files_checked"] = len(chunk)
    if [path for path, _ in chunk] != listed:
        item["mismatches"].append("iterating the loader did not yield this shard's files in order")
    for path, data in chunk:
        if data != members.get(normal(path)):
            item["mismatches"].append(f"{path}: file bytes (loader iteration) differ from the member")
if start != len(iterated):
    report["shards"][-1]["mismatches"].append(f"iteration yielded {len(iterated) - start} files too many")
for item in report["shards"]:
    print(f"shard {item['name']}: {len(item['samples'])} samples, {item['files_checked']} files read by "
          f"iteration, {len(item['mismatches'])} mismatches")
    for problem in item["mismatches"]:
        print(f"  MISMATCH {problem}")
    report["mismatches"] += len(item["mismatches"])
if cache:
    report["cache_files"] = sorted(os.path.relpath(os.path.join(folder, name), cache)
                                   for folder, _dirs, names in os.walk(cache) for name in names)
with open(report_path, "w") as handle:
    json.dump(report, handle, ensure_ascii=False)
sys.exit(1 if report["mismatches"] else 0)
'''


def find_python(explicit: str | None) -> str:
    """A CPython >= 3.12 to build the venv from."""
    candidates = [explicit] if explicit else [
        os.environ.get("INDEXER_WEBSHART_PYTHON"),
        *sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.12.*/bin/python")), reverse=True),
        shutil.which("python3.12"), sys.executable, shutil.which("python3.13")]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"],
                               capture_output=True)
        if probe.returncode == 0:
            return candidate
    raise SystemExit("error: webshart 0.6.0 needs CPython >= 3.12 and none was found; "
                     "pass --python /path/to/python3.12")


def ensure_venv(venv: Path, python: str | None) -> Path:
    """The venv's interpreter, with webshart 0.6.0 installed (made once, reused after)."""
    interpreter = venv / "bin" / "python"
    check = "import sys, webshart; sys.exit(webshart.__version__ != '0.6.0')"
    if interpreter.exists() and subprocess.run([interpreter, "-c", check],
                                               capture_output=True).returncode == 0:
        return interpreter
    base = find_python(python)
    print(f"making {venv} from {base} and installing {WEBSHART} ...", file=sys.stderr)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    install = subprocess.run([interpreter, "-m", "pip", "install", "-q", WEBSHART],
                             capture_output=True, text=True)
    if install.returncode != 0:
        raise SystemExit(f"error: pip could not install {WEBSHART} into {venv}:\n{install.stderr[-2000:]}")
    return interpreter


def unindexed_shards(folder: Path, metadata: Path | None) -> list[Path]:
    """Shards webshart would skip without a word because their index is missing."""
    missing = []
    for tar_path in sorted(folder.rglob("*.tar")):
        relative = tar_path.relative_to(folder).with_suffix(".json")
        index = (metadata / relative) if metadata else tar_path.with_suffix(".json")
        if tar_path.is_file() and not index.is_file():
            missing.append(tar_path)
    return missing


def run_child(interpreter: Path, folder: Path | str, metadata: Path | None, quiet: bool = False,
              cache: Path | None = None, caption_key: str | None = None, **hub: object) -> tuple[int, dict]:
    """The child's exit code and report ({} when it failed before writing one; its error is then
    in report["stderr"] when quiet). With `cache`, webshart's metadata cache is on there, as
    SimpleTuner turns it on; with `caption_key`, each sample's caption as SimpleTuner's
    webshart.caption_key finds it is in the report too. `hub`: subfolder, shard_cache, local_copy
    and env (the child's environment) for a Hub source (check_webshart_hub.py)."""
    env, cwd = hub.pop("env", None), hub.pop("cwd", None)
    with tempfile.TemporaryDirectory(prefix="check-webshart-") as work:
        report_path = Path(work) / "report.json"
        params = {"source": str(folder), "metadata": str(metadata) if metadata else None,
                  "report": str(report_path), "cache": str(cache) if cache else None,
                  "caption_key": caption_key, **{name: str(value) for name, value in hub.items() if value}}
        child = subprocess.run([interpreter, "-c", CHILD, json.dumps(params)], capture_output=quiet,
                               text=True, env=env, cwd=cwd)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if quiet:
        report["stderr"] = child.stderr
        report["stdout"] = child.stdout
    return child.returncode, report


# ---------------------------------------------------------------------------------------------
# --demo: two shards in webdataset order and hand-written indexes, then the facts above checked


def demo_members() -> list[tuple[str, list[tuple[str, bytes]], int]]:
    """(shard name, [(member, bytes)], tarfile format) for the two demo shards."""
    from make_sample import jpeg_bytes, png_bytes, webp_bytes

    def meta(caption: str, size: tuple[int, int] | None = None) -> bytes:
        record: dict = {"short_caption": caption, "long_caption": f"{caption}, described at length"}
        if size:
            record["width"], record["height"] = size
        return json.dumps(record).encode()

    long_stem = "long/" + "n" * 110  # > 100 characters: a pax path record
    return [
        ("demo-000000", [
            ("sub/", b""),  # a folder member: never in the index, invisible to webshart
            ("00002.json", meta("a red fox", (64, 48))), ("00002.png", png_bytes(64, 48)),
            ("00001.json", meta("a castle", (32, 32))), ("00001.jpg", jpeg_bytes(32, 32)),
            ("sub/00003.json", meta("a dragon", (40, 24))), ("sub/00003.webp", webp_bytes(40, 24)),
            ("00004.json", meta("a JSON with no image")),
            ("00005.png", png_bytes(16, 16)), ("00005.txt", b"  a caption from a txt sidecar \n"),
        ], tarfile.GNU_FORMAT),
        ("demo-000001", [
            ("00010.json", meta("a lighthouse", (24, 40))), ("00010.png", png_bytes(24, 40)),
            (f"{long_stem}.json", meta("a long name", (8, 8))), (f"{long_stem}.png", png_bytes(8, 8)),
            ("日本/キー.json", meta("東京 at night", (48, 32))), ("日本/キー.jpg", jpeg_bytes(48, 32)),
        ], tarfile.PAX_FORMAT),
    ]


DEMO_SIZES = {"00002.png": (64, 48), "00001.jpg": (32, 32), "sub/00003.webp": (40, 24),
              "00005.png": (16, 16), "00010.png": (24, 40), "日本/キー.jpg": (48, 32)}


def write_demo(folder: Path) -> dict[str, list[tuple[str, tuple | None, object]]]:
    """Writes the shards and their indexes; returns the samples expected per shard:
    (path, (width, height) or None, captions)."""
    from indexer.ingest.tar_members import iter_members

    for shard, members, fmt in demo_members():
        tar_path = folder / f"{shard}.tar"
        with tarfile.open(tar_path, "w", format=fmt) as tar:
            for number, (name, data) in enumerate(members):
                info = tarfile.TarInfo(name)
                info.mtime = 1_700_000_000.25 + number  # float: PAX writes a pax header per member
                if name.endswith("/"):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        files = {}
        for member in iter_members(tar_path, want_data=lambda name: 0):  # the offsets under test
            if member.kind == "file" and member.refusal is None:
                files[member.name] = {"offset": member.data_offset, "length": member.size}
        for name, (width, height) in DEMO_SIZES.items():
            if name in files:
                files[name].update(width=width, height=height)
        if shard == "demo-000000":
            files["00001.jpg"]["captions"] = "a castle"
            files["00002.png"]["captions"] = ["a red fox", "a red fox, described at length"]
            files["sub/00003.webp"].update(json_path="sub/00003.json", json_metadata={"source": "demo"},
                                           json_offset=files["sub/00003.json"]["offset"],
                                           json_length=files["sub/00003.json"]["length"])
        else:
            for name in files:
                if not name.endswith(".json"):
                    files[name]["captions"] = f"caption of {name}"
        index = {"path": tar_path.name, "filesize": tar_path.stat().st_size, "files": files}
        (folder / f"{shard}.json").write_text(json.dumps(index, ensure_ascii=False, indent=1))
    dragon = json.loads(dict(demo_members()[0][1])["sub/00003.json"])
    long_png = "long/" + "n" * 110 + ".png"
    return {
        "demo-000000": [
            ("00001.jpg", (32, 32), "a castle"),
            ("00002.png", (64, 48), ["a red fox", "a red fox, described at length"]),
            ("00004.json", None, None),
            ("00005.png", (16, 16), "a caption from a txt sidecar"),
            ("sub/00003.webp", (40, 24), dragon),  # no known caption key: the whole JSON object
        ],
        "demo-000001": [
            ("00010.png", (24, 40), "caption of 00010.png"),
            (long_png, None, f"caption of {long_png}"),
            ("日本/キー.jpg", (48, 32), "caption of 日本/キー.jpg"),
        ],
    }


def check_demo_facts(report: dict, expected: dict) -> list[str]:
    differences = []
    shards = {item["name"]: item for item in report.get("shards", [])}
    if sorted(shards) != sorted(expected):
        return [f"shards found: {sorted(shards)}, expected {sorted(expected)}"]
    for shard, samples in expected.items():
        found = [(row["path"], (row["width"], row["height"]) if row["width"] is not None else None,
                  row["captions"]) for row in shards[shard]["samples"]]
        if [row[0] for row in found] != [row[0] for row in samples]:
            differences.append(f"{shard}: samples {[row[0] for row in found]}, expected "
                               f"{[row[0] for row in samples]} (images and lone members, sorted by path)")
            continue
        for got, want in zip(found, samples, strict=True):
            if got != want:
                differences.append(f"{shard}: {got[0]}: webshart reports size {got[1]} captions {got[2]!r}; "
                                   f"expected {want[1]} {want[2]!r}")
    return differences


def negative_control(interpreter: Path, folder: Path) -> str | None:
    """Shift one index offset by a byte: the check must then fail, naming that sample."""
    index_path = folder / "demo-000000.json"
    index = json.loads(index_path.read_text())
    index["files"]["00002.png"]["offset"] += 1
    index_path.write_text(json.dumps(index))
    print("negative control: 00002.png's offset shifted by one byte, expecting a MISMATCH")
    code, report = run_child(interpreter, folder, None)
    problems = [problem for shard in report.get("shards", []) for problem in shard["mismatches"]]
    if code == 1 and problems and all(problem.startswith("00002.png") for problem in problems):
        return f"caught ({problems[0]})"
    return None


def float_width_fact(interpreter: Path, folder: Path) -> str | None:
    """A width written as 32.0 makes the shard's whole index unreadable (None if that no longer holds)."""
    index_path = folder / "demo-000000.json"
    index = json.loads(index_path.read_text())
    index["files"]["00002.png"]["offset"] -= 1  # undo the negative control
    index["files"]["00001.jpg"]["width"] = 32.0
    index_path.write_text(json.dumps(index))
    code, report = run_child(interpreter, folder, None, quiet=True)
    error = report["stderr"].strip().splitlines()[-1:] if code else []
    return f"holds ({error[0]})" if error and "ShardMetadataFormat" in error[0] else None


# ---------------------------------------------------------------------------------------------
# --demo, second part: the indexer's own exports read as SimpleTuner 4.10.1 reads them (metadata
# cache on under webshart.cache_dir, captions by default and through webshart.caption_key)

DEMO_SAMPLES = 40


def dalle3_shard(path: Path, keys: list[str]) -> None:
    """A shard of DALLE-3-like pairs, each image of another size (so of other bytes)."""
    from make_sample import png_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for number, key in enumerate(keys):
            size = (16 + number, 16 + number % 5)
            record = {"short_caption": f"short caption of {key}", "long_caption": f"long caption of {key}",
                      "width": size[0], "height": size[1]}
            members = ((f"{key}.json", json.dumps(record).encode()), (f"{key}.png", png_bytes(*size)))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))


def exported_demo(work: Path) -> tuple[Path, Path, Path]:
    """Two shards indexed in place, `export webshart`, `export config --backend webshart`:
    (root, database, webshart's metadata cache folder as SimpleTuner derives it from the config)."""
    from indexer.export.config import ConfigOptions, export_config
    from indexer.export.webshart import export_webshart
    from indexer.ingest.index import index_root

    root = work / "shards"
    root.mkdir()
    for shard in range(2):
        keys = [f"{shard}{number:04d}" for number in range(DEMO_SAMPLES)]
        dalle3_shard(root / f"data-{shard:06d}.tar", keys)
    db = work / "demo.sqlite"
    index_root(db, root, workers=1)
    export_webshart(db)
    config = work / "multidatabackend.json"
    export_config(db, config, options=ConfigOptions(backend="webshart"))
    entry = json.loads(config.read_text())[0]
    block = entry["webshart"]
    return root, db, Path(block.get("metadata_cache_dir") or Path(block["cache_dir"]) / "metadata_cache")


def captions_found(report: dict, field: str, where: str = "caption_key") -> tuple[int, int]:
    """(samples whose caption as SimpleTuner gets it is their JSON's `field`, samples): through
    webshart.caption_key, or (`where="index_captions"`) by default, from the index's captions."""
    rows = [row for shard in report.get("shards", []) for row in shard["samples"]]
    return sum(row.get(where) == f"{field} of {row['path'][:-4]}" for row in rows), len(rows)


def without_sidecars(root: Path, folder: Path) -> Path:
    """The indexes under `folder` without the sidecar fields: what exports before them wrote."""
    folder.mkdir()
    for index_path in root.glob("*.json"):
        index = json.loads(index_path.read_text())
        for entry in index["files"].values():
            for name in ("json_path", "json_offset", "json_length"):
                entry.pop(name, None)
        (folder / index_path.name).write_text(json.dumps(index))
    return folder


def simpletuner_demo(interpreter: Path) -> list[str]:
    """What does not hold of: a changed shard re-exported reaches a reader whose cache was filled
    before (and would not without the export's clearing), and caption_key finds every caption."""
    from indexer.export.webshart import export_webshart
    from indexer.ingest.index import index_root

    problems = []
    with tempfile.TemporaryDirectory(prefix="webshart-simpletuner-") as work:
        root, db, cache = exported_demo(Path(work))
        code, first = run_child(interpreter, root, None, quiet=True, cache=cache, caption_key="short_caption")
        print(f"first start, cache on at {cache}: {first.get('mismatches')} mismatches; webshart cached "
              f"{', '.join(first.get('cache_files', []))}")
        found, total = captions_found(first, "short caption")
        default, _total = captions_found(first, "short caption", "index_captions")
        print(f"captions: {default} of {total} by default (the index's captions), {found} of {total} through "
              "caption_key short_caption (the sidecars)")
        problems += [f"first read: exit {code}"] if code else []
        problems += [f"default captions: {default} of {total}"] if default != total else []
        problems += [f"webshart's copy of {shard} is not at {path}, where the export looks"
                     for shard, path in export_looks_at(db, root) if not path.is_file()]
        problems += [f"caption_key found {found} of {total}"] if found != total else []
        dalle3_shard(root / "data-000000.tar", [f"0a{n:03d}" for n in range(DEMO_SAMPLES // 2)]
                     + [f"0{number:04d}" for number in range(DEMO_SAMPLES)])  # every offset moves
        index_root(db, root, workers=1)
        stale = Path(work) / "stale-cache"
        shutil.copytree(cache, stale)  # what the cache would hold had the export not cleared it
        summary = export_webshart(db)
        print(f"shard data-000000.tar changed: index + export webshart wrote {summary['written']} index, "
              f"removed {summary['cleared']}")
        problems += stale_and_fresh(interpreter, root, cache, stale)
        plain = without_sidecars(root, Path(work) / "plain")
        _code, before = run_child(interpreter, root, plain, quiet=True, caption_key="short_caption")
        found, total = captions_found(before, "short caption")
        print(f"control: indexes without json_path/json_offset/json_length: caption_key found {found} of "
              f"{total}")
        problems += [f"caption_key found {found} captions without the sidecar fields"] if found else []
    return problems


def export_looks_at(db: Path, root: Path) -> list[tuple[str, Path]]:
    """(shard, path) of each copy of a shard index the export removes when that index changes."""
    import sqlite3

    from indexer.export.webshart_cache import find_caches
    from indexer.export.webshart_source import webshart_source

    conn = sqlite3.connect(db)
    try:
        caches, _notes = find_caches(conn, root.name, webshart_source(str(root.resolve())))
    finally:
        conn.close()
    return [(shard, cache.shard_copy(shard)) for cache in caches
            for shard in ("data-000000.tar", "data-000001.tar")]


def stale_and_fresh(interpreter: Path, root: Path, cache: Path, stale: Path) -> list[str]:
    """Read the re-exported shards through the cache the export cleared, and through a copy of
    the cache as it was before the export (the control)."""
    problems = []
    _code, old = run_child(interpreter, root, None, quiet=True, cache=stale)
    wrong = sum(not row["ok"] for shard in old.get("shards", []) for row in shard["samples"])
    total = sum(len(shard["samples"]) for shard in old.get("shards", []))
    print(f"control: the cache as filled before the change: {wrong} of {total} samples read wrong bytes")
    if not wrong:
        problems.append("a stale cache no longer gives wrong bytes: the control failed")
    code, new = run_child(interpreter, root, None, quiet=True, cache=cache, caption_key="short_caption")
    samples = sum(len(shard["samples"]) for shard in new.get("shards", []))
    found, _total = captions_found(new, "short caption")
    print(f"after the export, same cache folder: {new.get('mismatches')} mismatches in {samples} samples, "
          f"caption_key found {found} of {samples}")
    if code or new.get("mismatches") or samples != DEMO_SAMPLES * 2 + DEMO_SAMPLES // 2 or found != samples:
        problems.append(f"after the export: exit {code}, {new.get('mismatches')} mismatches, {samples} "
                        f"samples, {found} captions")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, help="folder of X.tar shards with X.json beside them")
    parser.add_argument("--metadata", type=Path, help="folder holding the X.json indexes instead")
    parser.add_argument("--demo", action="store_true", help="build two demo shards and check them")
    parser.add_argument("--hub", action="store_true",
                        help="a Hub dataset through the indexer and webshart, on loopback "
                        "(check_webshart_hub.py; needs root)")
    parser.add_argument("--isolated", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"default {DEFAULT_VENV}")
    parser.add_argument("--python", help="a CPython >= 3.12 to make the venv from")
    args = parser.parse_args()
    if args.demo + args.hub + bool(args.folder) != 1:
        parser.error("give a FOLDER of shards, --demo or --hub")
    interpreter = ensure_venv(args.venv, args.python)  # before any namespace: pip may need the network
    if args.hub:
        from check_webshart_hub import isolated_check, run_isolated

        raise SystemExit(isolated_check(interpreter) if args.isolated else run_isolated(args.venv))
    if args.demo:
        with tempfile.TemporaryDirectory(prefix="webshart-demo-") as work:
            folder = Path(work)
            expected = write_demo(folder)
            code, report = run_child(interpreter, folder, None)
            control = negative_control(interpreter, folder)
            float_width = float_width_fact(interpreter, folder)
        simpletuner = simpletuner_demo(interpreter)
        for problem in simpletuner:
            print(f"SIMPLETUNER PATH: {problem}")
        differences = check_demo_facts(report, expected)
        for difference in differences:
            print(f"FACT DIFFERS: {difference}")
        if not float_width:
            print("FACT DIFFERS: a float width (32.0) no longer makes the shard's index unreadable")
        print(f"demo: webshart {report.get('webshart')}, {report.get('mismatches')} byte mismatches, "
              f"{len(differences) + (not float_width)} facts that differ from this script's docstring; "
              f"negative control: {control or 'FAILED (a shifted offset went unnoticed)'}; "
              f"float width fact: {float_width or 'differs'}; SimpleTuner's cache and caption_key: "
              f"{'; '.join(simpletuner) or 'hold'}")
        raise SystemExit(1 if code or differences or not control or not float_width or simpletuner else 0)
    folder = args.folder.resolve()
    metadata = args.metadata.resolve() if args.metadata else None
    for given, label in ((folder, "FOLDER"), (metadata, "--metadata")):
        if given is not None and not given.is_dir():
            raise SystemExit(f"error: {label} {given} is not a folder (webshart would take it for a "
                             "Hugging Face repo name)")
    missing = unindexed_shards(folder, metadata)
    for tar_path in missing:
        print(f"NO INDEX: {tar_path} (webshart skips it silently)")
    code, _report = run_child(interpreter, folder, metadata)
    raise SystemExit(1 if code or missing else 0)


if __name__ == "__main__":
    main()
