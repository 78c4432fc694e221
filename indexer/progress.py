"""Progress bars on stderr that --quiet and --json turn off."""

from __future__ import annotations

from typing import Any


class NoBar:
    """What a disabled bar is: the same calls, doing nothing (and tqdm never imported, which is
    ~30 ms of a rerun's start)."""

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def close(self) -> None:
        return None


def bar(enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar when enabled, else a NoBar."""
    if not enabled:
        return NoBar()
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, mininterval=0.5, leave=False, **kwargs)
