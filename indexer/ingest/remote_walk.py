"""A remote shard's walk: the same walk over the same bytes as a local one (tar_members), with fewer
bytes a jump, and without a round trip a member where the shard's webshart index says where its
members are.

- Adaptive jump reads. After a jump over image data, the first read must hold the next member's
  header, the JSON member and the header after it, and every byte is paid for. RemoteReader sizes
  that read to the largest stretch the shard's recent jumps used (a dataset's JSON members are much
  alike), so a sample stays one request at the fewest bytes; a longer JSON costs one request more,
  once. The largest, not a typical one: a missed guess costs a round trip, a few hundred bytes
  too many cost nothing a user would notice.
- An index (`X.json` beside `X.tar`, as `export webshart` or webshart's extract-metadata write it)
  is used as a read plan, never as a source of facts: read_plan turns its offsets into the byte
  ranges the walk will want (member headers, JSON members, the end-of-archive blocks), Prefetch
  fetches them many at once ahead of the walk, and the walk finds its reads ready instead of making
  them one round trip at a time. Every row still comes from the walk's own parse of the object's
  bytes: where the index is stale, partial, garbage or hostile, the walk's reads miss the plan and go
  to the object as without an index (that stretch is walked the normal way). Checking each header
  against its entry instead would be a second parser with its own rules to keep identical; here
  the rows are those of a walk without an index by construction, and only the cost depends on it.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import queue
import threading
from collections.abc import Callable, Iterator

import orjson

from indexer.ingest.guard import raise_if_environment
from indexer.ingest.tar_members import BLOCK, Member, Reader, iter_members_from

FIRST_JUMP_READ = 3 << 10  # before any jump is seen: a header, a DALLE-3-sized JSON, the next header
JUMP_READ_MAX = 64 << 10  # what a jump read may grow to (longer stretches read on sequentially)
RECENT_JUMPS = 64  # the stretches a jump read is sized from
RANGE_MAX = 1 << 20  # near ranges are joined up to this length (and longer JSON members not fetched ahead)
JOIN_GAP = 4 << 10  # ranges closer than this are fetched as one (a round trip is worth far more)
PLAN_SHARE = 0.5  # a plan covering more of the tar than this is dropped: small members read on anyway
WINDOW = 64  # ranges fetched ahead of a walk, at most ...
WINDOW_BYTES = 8 << 20  # ... and at most this many bytes (a shard of 17k samples needs ~45 MB in all)

Fetch = Callable[[int, int], bytes]  # (count, offset) -> bytes, as RemoteObject.fetch_range
Plan = list[tuple[int, int]]  # byte ranges (offset, length), sorted and apart


def members(pread: Fetch, name: str, size: int, prefetched: Prefetch | None,
            want_data: Callable[[str], int]) -> Iterator[Member]:
    """tar_members' walk of a remote object, through a RemoteReader."""
    yield from iter_members_from(RemoteReader(pread, name, size, prefetched), want_data=want_data)


class RemoteReader(Reader):
    """A Reader whose reads come from the prefetched ranges when they hold them, and whose first
    read after a jump is sized by the recent jumps' stretches (from its landing to the last byte
    the walk asked for before the next jump)."""

    __slots__ = ("prefetched", "recent", "stretch_end", "stretch_start")

    def __init__(self, pread: Fetch, path: str, end: int, prefetched: Prefetch | None = None) -> None:
        super().__init__(pread, path, end, FIRST_JUMP_READ)
        self.prefetched = prefetched
        self.recent: collections.deque[int] = collections.deque(maxlen=RECENT_JUMPS)
        self.stretch_start = self.stretch_end = 0

    def read(self, offset: int, length: int) -> bytes:
        if self.start <= offset and offset + length <= self.stop:
            self.stretch_end = max(self.stretch_end, offset + length)
            i = offset - self.start
            return self.buf[i:i + length]
        if self.prefetched is not None:
            data = self.prefetched.get(offset, length)
            if data is not None:
                return data
        return self._fill(offset, length)

    def _fill(self, offset: int, length: int) -> bytes:
        if not self.start <= offset <= self.stop:  # a jump: size its read by what the last ones used
            if self.stretch_end > self.stretch_start:
                self.recent.append(self.stretch_end - self.stretch_start)
                self.jump_read = min(_padded(max(self.recent)), JUMP_READ_MAX)
            self.stretch_start = offset
        self.stretch_end = max(self.stretch_end, offset + length)
        return super()._fill(offset, length)


def read_plan(index: bytes, tar_size: int) -> Plan:
    """The byte ranges (offset, length), sorted and apart, that a walk of a tar of tar_size bytes
    will read, as its webshart index tells them: each listed member's header and the block after
    its data (the next header), the data of its JSON members and of the JSON sidecar an image entry
    names (`json_offset`/`json_length`), and the end-of-archive blocks; near ranges joined. Entries
    that cannot be tar members of this size are left out; anything that is no such index gives []."""
    spans = []
    last_end = 0
    for name, offset, length in _entries(index, tar_size):
        end = offset + _padded(length)
        spans += [(offset - BLOCK, BLOCK), (end, BLOCK)]
        if name.lower().endswith(".json") and length <= RANGE_MAX:
            spans.append((offset, length))
        last_end = max(last_end, end)
    if not spans:
        return []
    spans.append((last_end, 2 * BLOCK))
    plan = _joined(spans, tar_size)
    return plan if sum(length for _, length in plan) <= tar_size * PLAN_SHARE else []


def _entries(index: bytes, tar_size: int) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, length) of each entry that could be a member of the tar: an offset past
    a header, on a block boundary, its data inside the tar. At most one entry a block."""
    try:
        files = orjson.loads(index).get("files")
    except (orjson.JSONDecodeError, AttributeError):
        return
    if isinstance(files, dict):
        items = list(files.items())
    elif isinstance(files, list):
        items = [(entry.get("path"), entry) for entry in files if isinstance(entry, dict)]
    else:
        return
    for count, (name, entry) in enumerate(items):
        if count > tar_size // BLOCK:
            break
        if not isinstance(entry, dict):
            continue
        length = entry.get("length", entry.get("size"))
        if isinstance(name, str) and _fits(entry.get("offset"), length, tar_size):
            yield name, entry["offset"], length
        if _fits(entry.get("json_offset"), entry.get("json_length"), tar_size):
            yield ".json", entry["json_offset"], entry["json_length"]


def _fits(offset: object, length: object, tar_size: int) -> bool:
    return (type(offset) is int and type(length) is int and offset >= BLOCK and offset % BLOCK == 0
            and length >= 0 and offset + length <= tar_size)


def _joined(spans: list[tuple[int, int]], tar_size: int) -> Plan:
    """Spans clipped to the tar, sorted, and joined where they overlap or lie within JOIN_GAP of
    each other (up to RANGE_MAX a range)."""
    joined: list[list[int]] = []
    for start, length in sorted(spans):
        stop = min(start + length, tar_size)
        if stop <= start:
            continue
        if joined and start <= joined[-1][1] + JOIN_GAP and stop - joined[-1][0] <= RANGE_MAX:
            joined[-1][1] = max(joined[-1][1], stop)
        elif joined and start < joined[-1][1]:  # overlapping, too long to join: keep the rest
            if stop > joined[-1][1]:
                joined.append([joined[-1][1], stop])
        else:
            joined.append([start, stop])
    return [(start, stop - start) for start, stop in joined]


def _padded(size: int) -> int:
    return (size + BLOCK - 1) & ~(BLOCK - 1)


class Prefetch:
    """A plan's ranges of one object fetched ahead of its walk by the process's fetch threads, at
    most WINDOW ranges (WINDOW_BYTES) past the walk's position. The walk's offsets never decrease,
    so a range it has passed is dropped. A range whose fetch failed is a miss: the walk reads it
    itself (and fails as without a plan, if it still fails). The threads serve the lowest rank
    first: shards are recorded in order, so with the first shard's ranks lowest its walk ends
    first and the writer records it while the others are fetched, instead of every shard ending
    at once and the writer starting only then."""

    def __init__(self, plan: Plan, fetch: Fetch, threads: int, rank: int = 0) -> None:
        self.plan = plan
        self.fetch = fetch
        self.fetchers = _fetchers(threads)
        self.rank = rank
        self.futures: dict[int, cf.Future] = {}
        self.next = 0  # the first range the walk may still read
        self.submitted = 0  # ranges before this one have been submitted
        self.window_bytes = 0  # of the ranges submitted and not yet passed

    def __enter__(self) -> Prefetch:
        self._top_up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, offset: int, length: int) -> bytes | None:
        """length bytes at offset if a range holds them, else None (the walk reads them itself)."""
        plan = self.plan
        while self.next < len(plan) and sum(plan[self.next]) <= offset:
            self._drop(self.next)
        self._top_up()
        if self.next == len(plan):
            return None
        start, size = plan[self.next]
        if offset < start or offset + length > start + size:
            return None
        try:
            data = self.futures[self.next].result()
        except Exception as exc:
            raise_if_environment(exc)
            return None
        i = offset - start
        return data[i:i + length] if len(data) >= i + length else None

    def close(self) -> None:
        """Cancel what has not started, and wait for what has (so the object's counts are final)."""
        for future in self.futures.values():
            future.cancel()
        cf.wait(list(self.futures.values()))
        self.futures.clear()

    def _drop(self, index: int) -> None:
        future = self.futures.pop(index, None)
        if future is not None:
            future.cancel()
        if index < self.submitted:
            self.window_bytes -= self.plan[index][1]
        self.next += 1
        self.submitted = max(self.submitted, self.next)

    def _top_up(self) -> None:
        while (self.submitted < len(self.plan) and self.submitted - self.next < WINDOW
               and self.window_bytes < WINDOW_BYTES):
            start, size = self.plan[self.submitted]
            self.futures[self.submitted] = self.fetchers.submit((self.rank, start), self.fetch, size, start)
            self.window_bytes += size
            self.submitted += 1


class _Fetchers:
    """`threads` daemon threads running fetches lowest rank first (queue.PriorityQueue), kept for
    the process's life, so their connections stay open. They are started by a thread of their own
    on the first submit (starting 128 threads takes ~0.1 s: the walks need not wait for it)."""

    def __init__(self, threads: int) -> None:
        self.queue: queue.PriorityQueue = queue.PriorityQueue()
        self.threads = threads
        self.order = itertools.count()  # equal ranks run in submission order
        self.started = False
        self.lock = threading.Lock()

    def submit(self, rank: tuple[int, int], fetch: Fetch, *args: int) -> cf.Future:
        future: cf.Future = cf.Future()
        self.queue.put((rank, next(self.order), future, fetch, args))
        with self.lock:
            if not self.started:
                self.started = True
                threading.Thread(target=self._start, name="prefetch-start", daemon=True).start()
        return future

    def _start(self) -> None:
        for _ in range(self.threads):
            threading.Thread(target=self._run, name="prefetch", daemon=True).start()

    def _run(self) -> None:
        while True:
            _rank, _order, future, fetch, args = self.queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fetch(*args))
            except BaseException as exc:  # handed to the walk, which decides (Prefetch.get)
                future.set_exception(exc)


_FETCHERS: dict[int, _Fetchers] = {}
_FETCHERS_LOCK = threading.Lock()


def _fetchers(threads: int) -> _Fetchers:
    """The process's fetch threads (one set a size: a run uses one)."""
    with _FETCHERS_LOCK:
        if threads not in _FETCHERS:
            _FETCHERS[threads] = _Fetchers(threads)
        return _FETCHERS[threads]
