"""Helpers shared by the benchmarks: run a step in a child process, measure wall time and peak RSS."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

MEASURE = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(proc.stderr.decode(errors="replace")[-2000:])
print(f"{wall} {peak} {proc.returncode}")
sys.stdout.write(proc.stdout.decode(errors="replace"))
"""


@dataclass
class Step:
    name: str
    seconds: float
    peak_rss_mb: float
    output: str


def measure(name: str, argv: list[str], env: dict | None = None) -> Step:
    """Run argv in a fresh process tree; peak RSS is that of its largest process (ru_maxrss)."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    first, _, rest = proc.stdout.partition("\n")
    wall, peak, code = first.split()
    if int(code) != 0:
        raise SystemExit(f"step {name!r} failed ({code}):\n{proc.stderr}")
    return Step(name, float(wall), int(peak) / 1024, rest)


def timed(func, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = func(*args, **kwargs)
    return time.perf_counter() - start, result


def self_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row(label: str, step: Step, baseline: Step | None = None, note: str = "") -> str:
    ratio = f"{baseline.seconds / step.seconds:6.2f}x faster" if baseline else " " * 13
    return f"{label:<34} {step.seconds:8.2f} s {step.peak_rss_mb:8.1f} MB  {ratio}  {note}"


def write_small_shards(folder: Path, samples: int, shards: int) -> None:
    """`samples` small pairs (a 64x48 PNG and its JSON) spread over `shards` uncompressed tars."""
    from make_sample import png_bytes

    folder.mkdir(parents=True)
    image, per_shard = png_bytes(64, 48), -(-samples // shards)
    for number in range(shards):
        with tarfile.open(folder / f"data-{number:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(number * per_shard, min(samples, (number + 1) * per_shard)):
                sidecar = json.dumps({"width": 64, "height": 48, "short_caption": f"caption {i}"}).encode()
                for name, data in ((f"{i:08d}.json", sidecar), (f"{i:08d}.png", image)):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 1_700_000_000
                    tar.addfile(info, io.BytesIO(data))
