"""Progress bars on stderr that --quiet and --json turn off."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def bar(enabled: bool, **kwargs: Any) -> tqdm:
    return tqdm(disable=not enabled, dynamic_ncols=True, mininterval=0.5, leave=False, **kwargs)
