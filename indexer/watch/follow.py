"""Follow-up actions: what the caller wants re-run once a burst of changes is over (the exports
`indexer watch --export-*` asked for). Watch knows them only as named callables."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from indexer import store
from indexer.errors import IndexerError

FollowUp = Callable[[str], dict]  # called with the watched dataset's id; returns the export summary
Emit = Callable[[dict], None]


class FollowUps:
    """Runs every action after a change, in order; a failing one is reported, never fatal later.

    The first round (at start) brings the outputs up to date; there an IndexerError (a bad
    --where, a misspelt --caption, a mass removal not confirmed) stops the watch: it is the
    user's option that is wrong, not the data. Later it is a warning, retried after the next change.
    """

    def __init__(self, actions: Mapping[str, FollowUp], emit: Emit) -> None:
        self.actions = dict(actions)
        self.emit = emit
        self.due = bool(self.actions)  # bring the outputs up to date once at start
        self.rounds = 0

    def changed(self) -> None:
        """Samples changed: run the actions again once the burst is over."""
        self.due = bool(self.actions)

    def run(self, dataset: str) -> int:
        """One round of every action; returns how many succeeded."""
        self.due = False
        self.rounds += 1
        done = 0
        for kind, action in self.actions.items():
            began = time.monotonic()
            try:
                result = action(dataset)
            except IndexerError as exc:
                if self.rounds == 1:  # say so at once, not as a warning on every batch
                    raise
                self._warn(f"export {kind} failed: {exc}")
                continue
            except Exception as exc:  # an export problem must not stop the index from following
                self._warn(f"export {kind} failed: {exc}")
                continue
            done += 1
            self.emit({"event": "export", "kind": kind, "result": result,
                       "seconds": round(time.monotonic() - began, 3), "at": store.now_iso()})
            if result.get("complete") is False:
                errors = "; ".join(result.get("errors") or ())
                self._warn(f"export {kind} incomplete: {result.get('failed', 0):,} files could not be "
                           f"written or removed ({errors}); it is recorded as stale and retried after the "
                           "next change")
        return done

    def _warn(self, message: str) -> None:
        self.emit({"event": "warning", "message": message})
