"""Helpers shared by the benchmarks: run a step in a child process, measure wall time and peak RSS."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

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
