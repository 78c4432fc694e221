"""A sample's status: the one vocabulary of samples.status (README "Statuses")."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    MISSING_IMAGE = "missing_image"  # JSON without image
    MISSING_JSON = "missing_json"  # image without JSON
    BAD_JSON = "bad_json"  # empty, unparseable, not an object, not UTF-8, unreadable
    BAD_IMAGE = "bad_image"  # the size had to come from the image and its header is unreadable
    READ_FAILED = "read_failed"  # reading raised an error nobody foresaw; the error names it


PROBLEM_STATUSES: tuple[str, ...] = tuple(status.value for status in Status if status is not Status.OK)
