#!/usr/bin/env python3
"""Read an `indexer export musubi` JSONL and dataset config through musubi-tuner's own loading code.

    python scripts/check_musubi.py --musubi ~/musubi-tuner --demo           # builds, exports, checks
    python scripts/check_musubi.py --musubi ~/musubi-tuner --config OUT.toml --db DB

musubi-tuner (kohya-ss/musubi-tuner) is not a package on PyPI: point --musubi at a checkout of it
(its `src/` is put on the path of the child; nothing of it is copied here), and --python at an
interpreter that has its dependencies (torch, pillow, numpy, opencv, av, safetensors, toml,
voluptuous; default: this one). No model is loaded and nothing is trained. The child runs the
steps musubi's cache scripts run before any model is involved: `load_user_config` of the TOML,
`BlueprintGenerator(ConfigSanitizer()).generate(...)` (the schema check that refuses unknown keys
and wrong types), `generate_dataset_group_by_blueprint`, then for every dataset
`retrieve_latent_cache_batches` (every image opened, bucketed, with its latent cache path) and
`retrieve_text_encoder_output_cache_batches` (every caption, with its text encoder cache path).

Checked against the database: each JSONL dataset holds exactly the rows the export wrote, every
image opens at the size the index recorded, every caption is the exported caption, and no two
items share a latent or text encoder cache file. `--demo` builds a dataset with two images of one
stem in different folders (the export must leave one out) and an existing config with another
dataset (which must survive the merge), exports it, and checks it; a negative control then puts
the left-out line back and must see a cache file shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

ARCHITECTURE = "qi"  # Qwen-Image, an image model whose cache scripts read this config

# Runs with musubi-tuner's src/ on the path: argv = TOML, ARCHITECTURE, REPORT path.
CHILD = r'''
import argparse, json, sys
from musubi_tuner.dataset import config_utils
from musubi_tuner.dataset.config_utils import BlueprintGenerator, ConfigSanitizer

toml_path, architecture, report_path = sys.argv[1:4]
user_config = config_utils.load_user_config(toml_path)
blueprint = BlueprintGenerator(ConfigSanitizer()).generate(
    user_config, argparse.Namespace(debug_dataset=False), architecture=architecture)
group = config_utils.generate_dataset_group_by_blueprint(blueprint.dataset_group)
report = []
for dataset in group.datasets:
    if getattr(dataset, "image_jsonl_file", None) is None:  # not one of ours: validated, not read
        report.append({"jsonl": None, "cache_directory": dataset.cache_directory})
        continue
    items = []
    for _bucket, batch in dataset.retrieve_latent_cache_batches(num_workers=1):
        for item in batch:
            items.append({"path": item.item_key, "caption": item.caption, "size": list(item.original_size),
                          "latent": item.latent_cache_path, "te": item.text_encoder_output_cache_path})
    captions = {}
    for batch in dataset.retrieve_text_encoder_output_cache_batches(num_workers=1):
        for item in batch:
            captions[item.item_key] = [item.caption, item.text_encoder_output_cache_path]
    report.append({"jsonl": dataset.image_jsonl_file, "cache_directory": dataset.cache_directory,
                   "resolution": list(dataset.resolution), "enable_bucket": dataset.enable_bucket,
                   "items": items, "captions": captions})
with open(report_path, "w") as handle:
    json.dump(report, handle, ensure_ascii=False)
'''


def run_child(python: str, musubi: Path, toml: Path) -> list[dict]:
    """musubi's view of every dataset of the config (exits on its error, with its message)."""
    with tempfile.TemporaryDirectory(prefix="check-musubi-") as work:
        report = Path(work) / "report.json"
        env = {**os.environ, "PYTHONPATH": str(musubi / "src")}
        child = subprocess.run([python, "-c", CHILD, str(toml), ARCHITECTURE, str(report)], env=env,
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"musubi-tuner refused the config or its data:\n{child.stderr[-3000:]}")
        return json.loads(report.read_text())


def exported_rows(db: Path, jsonl: Path) -> dict[str, tuple[str, tuple[int, int]]]:
    """image path -> (caption, (width, height) in the index) for each line of the JSONL."""
    lines = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    conn = sqlite3.connect(db)
    try:
        root = Path(conn.execute("SELECT root FROM datasets").fetchone()[0])
        sizes = {str(root / image): (width, height) for image, width, height in
                 conn.execute("SELECT image, width, height FROM samples WHERE image IS NOT NULL")}
    finally:
        conn.close()
    return {line["image_path"]: (line["caption"], sizes[line["image_path"]]) for line in lines}


def check(report: list[dict], db: Path, jsonl: Path) -> list[str]:
    """What differs between musubi's view of the JSONL's dataset and the export."""
    mine = [dataset for dataset in report if dataset["jsonl"] == str(jsonl)]
    if len(mine) != 1:
        return [f"musubi sees {len(mine)} datasets reading {jsonl}"]
    dataset, expected = mine[0], exported_rows(db, jsonl)
    problems = []
    seen = {item["path"]: item for item in dataset["items"]}
    if sorted(seen) != sorted(expected) or len(seen) != len(dataset["items"]):
        problems.append(f"musubi read {len(dataset['items'])} images, the JSONL has {len(expected)}")
    for path, item in seen.items():
        caption, size = expected.get(path, (None, None))
        if (item["caption"], tuple(item["size"])) != (caption, size):
            problems.append(f"{path}: musubi has {item['caption']!r} at {item['size']}, the index "
                            f"{caption!r} at {size}")
        if dataset["captions"].get(path, [None])[0] != caption:
            problems.append(f"{path}: the text encoder caching reads {dataset['captions'].get(path)}")
    for kind in ("latent", "te"):
        names = [item[kind] for item in dataset["items"]]
        if len(set(names)) != len(names):
            problems.append(f"two images share a {kind} cache file in {dataset['cache_directory']}")
    return problems


def demo_dataset(data: Path, count: int = 30) -> None:
    """PNG + JSON pairs (musubi decodes every image: PNGs are the sample generator's decodable
    kind), a few in a subfolder, one without a caption, and one stem twice in two folders."""
    from make_sample import png_bytes

    for number in range(count):
        key = f"part/{number:04d}" if number % 3 == 0 else f"{number:04d}"
        size = (300 + 7 * number, 200 + 5 * number)
        caption = f"caption {number}" if number else " "  # the first has none: left out
        record = {"width": size[0], "height": size[1], "short_caption": caption}
        (data / key).parent.mkdir(parents=True, exist_ok=True)
        (data / f"{key}.json").write_text(json.dumps(record), encoding="utf-8")
        (data / f"{key}.png").write_bytes(png_bytes(*size))
    (data / "sub").mkdir()
    for suffix in (".png", ".json"):  # 0001 again, in another folder
        (data / "sub" / f"0001{suffix}").write_bytes((data / f"0001{suffix}").read_bytes())


def demo(python: str, musubi: Path) -> int:
    from indexer.export.musubi import MusubiOptions, export_musubi
    from indexer.ingest.index import index_root

    with tempfile.TemporaryDirectory(prefix="musubi-demo-") as work:
        folder = Path(work)
        data, db, jsonl, toml = folder / "data", folder / "db.sqlite", folder / "d.jsonl", folder / "d.toml"
        demo_dataset(data)
        other = folder / "other"  # a dataset of the user's, already in the config
        other.mkdir()
        toml.write_text(f'[general]\ncaption_extension = ".txt"\n\n[[datasets]]\n'
                        f'image_directory = "{other}"\ncache_directory = "{folder / "other-cache"}"\n')
        index_root(db, data, workers=1)
        summary = export_musubi(db, jsonl, config=toml, settings=MusubiOptions(resolution=(512, 512)))
        print(f"export: {summary['rows']} rows, excluded {summary['excluded']}, "
              f"{summary['same_stem_examples']}")
        print("config:\n" + toml.read_text())
        report = run_child(python, musubi, toml)
        problems = check(report, db, jsonl)
        if len(report) != 2:
            problems.append(f"the other dataset of the config did not survive: {len(report)} datasets")
        print(f"musubi: {len(report)} datasets; ours: {len(report[-1]['items'])} images bucketed at "
              f"{report[-1]['resolution']} (buckets {report[-1]['enable_bucket']}), "
              f"{len(report[-1]['captions'])} captions for the text encoder cache, {len(problems)} problems")
        control = negative_control(python, musubi, db, data, jsonl, toml)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"negative control (the left-out image put back): {control or 'FAILED: no shared cache file seen'}")
    return 1 if problems or not control or summary["excluded"].get("same_stem") != 1 else 0


def negative_control(python: str, musubi: Path, db: Path, data: Path, jsonl: Path, toml: Path) -> str | None:
    """The line the export left out, put back: musubi must then name two images' caches alike."""
    line = {"image_path": str(next((data / "sub").glob("*.png"))), "caption": "put back"}
    with jsonl.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    report = run_child(python, musubi, toml)
    shared = [problem for problem in check(report, db, jsonl) if "share a te cache file" in problem]
    return shared[0] if shared else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--musubi", type=Path, required=True, help="a checkout of kohya-ss/musubi-tuner")
    parser.add_argument("--python", default=sys.executable, help="an interpreter with musubi's dependencies")
    parser.add_argument("--demo", action="store_true", help="build a dataset, export it, check it")
    parser.add_argument("--config", type=Path, help="a dataset config written by `indexer export musubi`")
    parser.add_argument("--jsonl", type=Path, help="its JSONL (default: every JSONL dataset of the config)")
    parser.add_argument("--db", type=Path, help="the database it was exported from")
    args = parser.parse_args()
    if not (args.musubi / "src" / "musubi_tuner").is_dir():
        parser.error(f"{args.musubi} is not a musubi-tuner checkout (no src/musubi_tuner)")
    if args.demo:
        raise SystemExit(demo(args.python, args.musubi.resolve()))
    if not (args.config and args.db):
        parser.error("give --demo, or --config and --db")
    report = run_child(args.python, args.musubi.resolve(), args.config.resolve())
    jsonls = ([args.jsonl.resolve()] if args.jsonl
              else [Path(dataset["jsonl"]) for dataset in report if dataset["jsonl"]])
    problems = [problem for jsonl in jsonls for problem in check(report, args.db, jsonl)]
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"{len(jsonls)} JSONL datasets read through musubi-tuner, {len(problems)} problems")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
