"""Bounded memories behind the authenticity rules (SPEC §6): what each rule remembers, and when it forgets.

Plain data (ints, strs, lists, dicts) with to_dict()/from_dict(), so it can be a Faust table value. The decisions
live in rules.py; this module only stores, counts and expires.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping
from typing import Any, NamedTuple

from stream_app.domain.errors import SerializationError, StateFormatError, StreamAppError
from stream_app.domain.events import InputTopic

MINUTE_MS = 60_000
# Memories note the keys they touch per bucket of this much event time and forget a bucket at a time, so an entry
# outlives its horizon by at most one bucket (see ExpiryIndex).
EXPIRY_BUCKET_MS = 300_000
# Bumped when the layout of to_dict() changes; from_dict() refuses other formats.
STATE_FORMAT = 1
# The same for DeviceState, which reads the previous formats too (DeviceState.from_stored). 2: watch times, verdicts
# of device_overlap / account_farm, kept intervals and accounts. 3: the record offset and the kept intervals' ids.
# 4: the same, the memories a device keeps longest first, times as distances back from max_ts, trailing empty
# memories left out (DeviceState.to_stored).
DEVICE_STATE_FORMAT = 4
# How many fields a format 4 value has at most (it may end after the fourth: through_offset, the rest empty).
_DEVICE_FIELDS = 15
# DeviceState.flags: a view's device verdict. A flagged view is never flagged (or clawed back) again.
NOT_FLAGGED = 0
FLAG_BURST = 1  # rejected by device_burst
FLAG_OVERLAP = 2  # rejected by device_overlap
FLAG_ACCOUNT = 3  # rejected by account_farm
FLAG_ELSEWHERE = 4  # rejected by a later per-video rule after device_burst saw it (rules.judge_view with a device)
# Above any event ts (< 2^53, SPEC §3): the "oldest" of an empty memory.
_NEVER = 1 << 62


class UnknownTopicError(StreamAppError):
    """A caller asked for the per-video memory of a topic that has none (only the two event topics do)."""


class ViewRef(NamedTuple):
    """An earlier view that a rule now rejects (a clawback): what the wiring needs to find it in its window."""

    video_id: str
    event_id: str
    viewer_id: str
    ts: int


class ExpiryIndex:
    """Which keys a memory touched in which span of event time: lets a memory forget in time proportional to
    what it forgets, never by scanning everything it holds (a hot video remembers hundreds of thousands of ids).

    Keys are noted per bucket of `bucket_ms` of event time (a key touched twice is noted twice); `due(cutoff)`
    hands out the keys of every bucket that lies wholly at or before cutoff, once, and forgets those buckets.
    The caller checks each key against its own data (a key touched again later is noted in a later bucket too).
    """

    __slots__ = ("bucket_ms", "buckets", "first")

    def __init__(self, bucket_ms: int = EXPIRY_BUCKET_MS) -> None:
        self.bucket_ms = bucket_ms
        self.buckets: dict[int, list[str]] = {}
        self.first = _NEVER  # the smallest bucket held (a lower bound)

    def note(self, key: str, ts: int) -> None:
        bucket = ts // self.bucket_ms
        keys = self.buckets.get(bucket)
        if keys is None:
            self.buckets[bucket] = [key]
            if bucket < self.first:
                self.first = bucket
        else:
            keys.append(key)

    def due(self, cutoff_ms: int) -> list[str]:
        """Keys noted in buckets that end at or before cutoff_ms (each bucket handed out once)."""
        last = (cutoff_ms + 1) // self.bucket_ms - 1
        if last < self.first:
            return []
        buckets = self.buckets
        keys: list[str] = []
        for bucket in sorted(b for b in buckets if b <= last):
            keys.extend(buckets.pop(bucket))
        self.first = min(buckets, default=_NEVER)
        return keys

    def clear(self) -> None:
        self.buckets.clear()
        self.first = _NEVER


class DedupeMemory:
    """event_id -> ts first seen, for one topic of one video (``duplicate_event``)."""

    __slots__ = ("index", "max_ts", "seen")

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.max_ts = -1
        self.index = ExpiryIndex()

    def first_seen(self, event_id: str) -> int | None:
        return self.seen.get(event_id)

    def remember(self, event_id: str, ts: int) -> None:
        """Remember event_id at ts (rules.expire forgets it, against the watermark: an event that is not late
        can carry a ts far behind the video's newest one, when the other event topic holds the watermark back)."""
        self.seen[event_id] = ts
        index = self.index  # ExpiryIndex.note, inlined: this runs for every event
        bucket = ts // index.bucket_ms
        keys = index.buckets.get(bucket)
        if keys is None:
            index.note(event_id, ts)
        else:
            keys.append(event_id)
        if ts > self.max_ts:
            self.max_ts = ts

    def expire(self, cutoff_ms: int) -> None:
        """Forget ids first seen at or before cutoff_ms (those noted in buckets wholly before it; ids of the
        bucket holding the cutoff wait for the next call)."""
        seen = self.seen
        for event_id in self.index.due(cutoff_ms):
            ts = seen.get(event_id)
            if ts is not None and ts <= cutoff_ms:
                del seen[event_id]

    def __len__(self) -> int:
        return len(self.seen)

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "max_ts": self.max_ts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DedupeMemory:
        memory = cls()
        for event_id, ts in data["seen"].items():
            memory.seen[event_id] = ts
            memory.index.note(event_id, ts)
        memory.max_ts = int(data["max_ts"])
        return memory


class TimestampsByKey:
    """key -> ascending event timestamps: the shape of every per-viewer memory.

    Most keys (viewers) hold one timestamp: it is stored as a bare int, a list only from the second one on (a
    list costs 64 bytes more per key, and a day of a busy partition remembers millions of keys). Forgetting goes
    through an ExpiryIndex of the keys touched per span of event time, so it costs what is forgotten, not what is
    held.
    """

    __slots__ = ("by_key", "index", "max_ts")

    def __init__(self) -> None:
        self.by_key: dict[str, int | list[int]] = {}
        self.max_ts = -1
        self.index = ExpiryIndex()

    def times(self, key: str) -> list[int]:
        """The timestamps of key, ascending (a copy)."""
        held = self.by_key.get(key)
        if held is None:
            return []
        return [held] if isinstance(held, int) else list(held)

    def as_dict(self) -> dict[str, list[int]]:
        return {key: self.times(key) for key in self.by_key}

    def add(self, key: str, ts: int) -> None:
        by_key = self.by_key
        held = by_key.get(key)
        if held is None:
            by_key[key] = ts
        elif isinstance(held, int):
            by_key[key] = [held, ts] if ts >= held else [ts, held]
        elif ts >= held[-1]:
            held.append(ts)  # the common case: events arrive in ts order
        else:
            insort(held, ts)
        index = self.index  # ExpiryIndex.note, inlined: this runs for every event
        keys = index.buckets.get(ts // index.bucket_ms)
        if keys is None:
            index.note(key, ts)
        else:
            keys.append(key)
        if ts > self.max_ts:
            self.max_ts = ts

    def count_then_add(self, key: str, ts: int, first_ms: int, forget_through: int) -> int:
        """prune_key(key, forget_through), then how many timestamps of key lie in [first_ms, ts], then add(key, ts);
        a key holding nothing yet (a viewer's first view of a video, the common case) skips the first two."""
        earlier = 0
        if key in self.by_key:
            self.prune_key(key, forget_through)
            earlier = self.count_in(key, first_ms, ts)
        self.add(key, ts)
        return earlier

    def count_in(self, key: str, first_ms: int, last_ms: int) -> int:
        """How many timestamps of key lie in [first_ms, last_ms] (both ends included)."""
        held = self.by_key.get(key)
        if held is None or last_ms < first_ms:
            return 0
        if isinstance(held, int):
            return 1 if first_ms <= held <= last_ms else 0
        return bisect_right(held, last_ms) - bisect_left(held, first_ms)

    def discard(self, key: str, ts: int) -> bool:
        """Remove one occurrence of ts under key; False when it is not there."""
        held = self.by_key.get(key)
        if held is None:
            return False
        if isinstance(held, int):
            if held != ts:
                return False
            del self.by_key[key]
            return True
        times: list[int] = held
        i = bisect_left(times, ts)
        if i == len(times) or times[i] != ts:
            return False
        del times[i]
        if len(times) == 1:
            self.by_key[key] = times[0]
        return True

    def prune_key(self, key: str, cutoff_ms: int) -> None:
        """Drop the timestamps of one key at or before cutoff_ms (cheap: one bisect)."""
        held = self.by_key.get(key)
        if held is None:
            return
        if isinstance(held, int):
            if held <= cutoff_ms:
                del self.by_key[key]
            return
        times: list[int] = held
        if times[0] > cutoff_ms:
            return
        cut = bisect_right(times, cutoff_ms)
        if cut == len(times):
            del self.by_key[key]
        elif cut == len(times) - 1:
            self.by_key[key] = times[-1]
        else:
            del times[:cut]

    def maybe_sweep(self, horizon_ms: int) -> None:
        """Forget what lies more than horizon_ms behind the newest timestamp seen."""
        cutoff = self.max_ts - horizon_ms
        index = self.index
        if (cutoff + 1) // index.bucket_ms - 1 >= index.first:  # ExpiryIndex.due has something to hand out
            self.expire(cutoff)

    def expire(self, cutoff_ms: int) -> None:
        """Drop timestamps at or before cutoff_ms of the keys noted in buckets wholly before it (the others wait
        for a later call), and keys left with none."""
        for key in self.index.due(cutoff_ms):
            self.prune_key(key, cutoff_ms)

    def __len__(self) -> int:
        return sum(1 if isinstance(held, int) else len(held) for held in self.by_key.values())

    def to_dict(self) -> dict[str, Any]:
        return {"by_key": self.as_dict(), "max_ts": self.max_ts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimestampsByKey:
        memory = cls()
        for key, times in data["by_key"].items():
            for ts in times:
                memory.add(key, ts)
        memory.max_ts = int(data["max_ts"])
        return memory


class VelocityState:
    """One video's recent view rate (``velocity_burst``).

    - per-minute view counts (minute = ts // 60_000) for the baseline, kept for the last
      ``velocity_baseline_minutes`` minutes before the newest view's minute, and the minutes flagged by a burst;
    - the views of the *head span* ``(max_ts - span, max_ts]``, sorted by ts (ties in arrival order), with their
      viewers, event ids, a flag per view (already rejected or clawed back: never clawed back again), and the
      number of views per viewer in the span (distinct viewers = its length).

    The span's views are the list entries from ``start`` on: leaving the span moves ``start``, and the lists are
    cut only once the dead head is as long as the live part, so a hot video's span costs O(1) per view to slide.
    """

    __slots__ = (
        "event_ids",
        "first_minute",
        "flagged",
        "flagged_minutes",
        "in_burst",
        "max_ts",
        "minute_counts",
        "start",
        "ts",
        "viewer_counts",
        "viewers",
    )

    def __init__(self) -> None:
        self.max_ts = -1
        self.start = 0
        self.ts: list[int] = []
        self.viewers: list[str] = []
        self.event_ids: list[str] = []
        self.flagged = bytearray()
        self.viewer_counts: dict[str, int] = {}
        # True when the last view judged found the head span in a burst (lets the next in-order view skip a scan).
        self.in_burst = False
        self.minute_counts: dict[int, int] = {}
        self.first_minute = _NEVER  # a lower bound of the minutes counted
        self.flagged_minutes: set[int] = set()

    @property
    def span_views(self) -> int:
        return len(self.ts) - self.start

    def count_minute(self, ts: int, baseline_minutes: int) -> None:
        minute = ts // MINUTE_MS
        if minute >= max(self.max_ts, ts) // MINUTE_MS - baseline_minutes:
            self.minute_counts[minute] = self.minute_counts.get(minute, 0) + 1
            if minute < self.first_minute:
                self.first_minute = minute

    def advance(self, ts: int, span_ms: int, baseline_minutes: int) -> None:
        """Move the head span's end to ts (> max_ts): views at or before ts - span_ms leave the span."""
        old_minute = self.max_ts // MINUTE_MS
        self.max_ts = ts
        self.drop_through(ts - span_ms)
        if ts // MINUTE_MS != old_minute:
            self.forget_minutes_before(ts // MINUTE_MS - baseline_minutes)

    def drop_through(self, cutoff_ms: int) -> None:
        start = self.start
        ts = self.ts
        if start == len(ts) or ts[start] > cutoff_ms:
            return
        cut = bisect_right(ts, cutoff_ms, start)
        counts = self.viewer_counts
        viewers = self.viewers
        for k in range(start, cut):
            viewer = viewers[k]
            left = counts[viewer] - 1
            if left:
                counts[viewer] = left
            else:
                del counts[viewer]
        self.start = cut
        if cut * 2 >= len(ts):
            del ts[:cut]
            del viewers[:cut]
            del self.event_ids[:cut]
            del self.flagged[:cut]
            self.start = 0

    def forget_minutes_before(self, first_kept_minute: int) -> None:
        counts = self.minute_counts
        if self.first_minute < first_kept_minute:
            for minute in [m for m in counts if m < first_kept_minute]:
                del counts[minute]
            self.first_minute = min(counts, default=_NEVER)
        if self.flagged_minutes and min(self.flagged_minutes) < first_kept_minute:
            self.flagged_minutes = {m for m in self.flagged_minutes if m >= first_kept_minute}

    def add_view(self, ts: int, viewer_id: str, event_id: str, span_ms: int, baseline_minutes: int) -> int:
        """count_minute, then advance the head span to ts when it is newer, then insert the view: its list index, or
        -1 when it lies at or before max_ts - span_ms (outside every span still open: counted in its minute only)."""
        max_ts = self.max_ts
        minute = ts // MINUTE_MS
        if minute >= (ts if ts > max_ts else max_ts) // MINUTE_MS - baseline_minutes:
            counts = self.minute_counts
            counts[minute] = counts.get(minute, 0) + 1
            if minute < self.first_minute:
                self.first_minute = minute
        if ts > max_ts:
            self.advance(ts, span_ms, baseline_minutes)
            times = self.ts
            i = len(times)
            times.append(ts)  # the newest: at the end
            self.viewers.append(viewer_id)
            self.event_ids.append(event_id)
            self.flagged.append(0)
            counts_by_viewer = self.viewer_counts
            counts_by_viewer[viewer_id] = counts_by_viewer.get(viewer_id, 0) + 1
            return i
        if ts <= max_ts - span_ms:
            return -1
        return self.insert(ts, viewer_id, event_id)

    def insert(self, ts: int, viewer_id: str, event_id: str) -> int:
        """Add a view to the head span; return its list index (after views with an equal ts: arrival order)."""
        i = len(self.ts)
        if i > self.start and ts < self.ts[-1]:
            i = bisect_right(self.ts, ts, self.start)
            self.ts.insert(i, ts)
            self.viewers.insert(i, viewer_id)
            self.event_ids.insert(i, event_id)
            self.flagged.insert(i, 0)
        else:
            self.ts.append(ts)
            self.viewers.append(viewer_id)
            self.event_ids.append(event_id)
            self.flagged.append(0)
        self.viewer_counts[viewer_id] = self.viewer_counts.get(viewer_id, 0) + 1
        return i

    def baseline(self, head_minute: int, minutes: int) -> tuple[int, int]:
        """(views, minutes counted) over the `minutes` minutes before head_minute, flagged minutes left out."""
        total = 0
        counted = 0
        counts = self.minute_counts
        flagged = self.flagged_minutes
        for minute in range(head_minute - minutes, head_minute):
            if minute not in flagged:
                counted += 1
                total += counts.get(minute, 0)
        return total, counted

    def index_of(self, event_id: str, ts: int) -> int | None:
        for i in range(bisect_left(self.ts, ts, self.start), bisect_right(self.ts, ts, self.start)):
            if self.event_ids[i] == event_id:
                return i
        return None

    def __len__(self) -> int:
        return self.span_views + len(self.minute_counts) + len(self.flagged_minutes)

    def to_dict(self) -> dict[str, Any]:
        s = self.start
        return {
            "max_ts": self.max_ts,
            "ts": self.ts[s:],
            "viewers": self.viewers[s:],
            "event_ids": self.event_ids[s:],
            "flagged": list(self.flagged[s:]),
            "in_burst": self.in_burst,
            # JSON object keys are strings: minutes travel as [minute, count] pairs
            "minute_counts": [[m, c] for m, c in self.minute_counts.items()],
            "flagged_minutes": sorted(self.flagged_minutes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VelocityState:
        state = cls()
        state.max_ts = int(data["max_ts"])
        state.ts = list(data["ts"])
        state.viewers = list(data["viewers"])
        state.event_ids = list(data["event_ids"])
        state.flagged = bytearray(data["flagged"])
        state.in_burst = bool(data["in_burst"])
        state.minute_counts = {int(m): int(c) for m, c in data["minute_counts"]}
        state.first_minute = min(state.minute_counts, default=_NEVER)
        state.flagged_minutes = {int(m) for m in data["flagged_minutes"]}
        for viewer in state.viewers:
            state.viewer_counts[viewer] = state.viewer_counts.get(viewer, 0) + 1
        return state


class DeviceState:
    """One device's memory for the device rules (SPEC §6 device_burst, device_overlap, account_farm).

    - the device's recent views, sorted by (ts, event_id) (the rules' canonical order, whatever order they arrive
      in), each with its watch time, ids and a verdict code (`flags`: NOT_FLAGGED, or which rule rejected it);
      kept while device_burst can still count them and until device_overlap / account_farm have judged them;
    - `judged_through`: the views with ts at or before it have had their device_overlap / account_farm verdict;
    - `kept_starts` / `kept_ends` / `kept_ids`: the watch intervals of judged views no device rule rejected, sorted
      by end (ts), and their event ids, for device_overlap (DEVICE_MEMORY_S back; zero-length intervals, which
      overlap nothing, are not kept). The ids tell a view sent again (its event partition scored it again after a
      crash) from another view of the same moment: counted again, it would overlap itself;
    - `accounts` / `account_last`: the first ACCOUNTS_PER_DEVICE + 1 accounts of the device in the order of their
      first judged view, each with its latest judged view ts (account_farm, DEDUPE_S back);
    - `through_offset`: the offset, in the device-views partition, of the last record whose views of this device
      the state holds (-1: unknown). A record read again after a crash or a rebalance, at or before it, is skipped
      for this device: its views were counted, judged, and may be forgotten already while their watch intervals
      and accounts are still remembered (counting them again would make them overlap themselves). The state and
      its offset are one stored value, so they are durable together.
    """

    __slots__ = (
        "account_last",
        "accounts",
        "event_ids",
        "flags",
        "judged_through",
        "kept_ends",
        "kept_ids",
        "kept_starts",
        "max_ts",
        "through_offset",
        "ts",
        "video_ids",
        "viewer_ids",
        "watch_ms",
    )

    def __init__(self) -> None:
        self.max_ts = -1
        self.judged_through = -1
        self.ts: list[int] = []
        self.watch_ms: list[int] = []
        self.video_ids: list[str] = []
        self.event_ids: list[str] = []
        self.viewer_ids: list[str] = []
        self.flags = bytearray()
        self.kept_starts: list[int] = []
        self.kept_ends: list[int] = []
        self.kept_ids: list[str] = []
        self.accounts: list[str] = []
        self.account_last: list[int] = []
        self.through_offset = -1

    # --- recent views -----------------------------------------------------------------------------------------

    def insert(self, ts: int, watch_ms: int, video_id: str, event_id: str, viewer_id: str) -> int:
        """Add a view in (ts, event_id) order; return its index."""
        times = self.ts
        i = len(times)
        if i and (ts < times[-1] or (ts == times[-1] and event_id < self.event_ids[-1])):
            i = bisect_left(times, ts)
            ids = self.event_ids
            while i < len(times) and times[i] == ts and ids[i] < event_id:
                i += 1
        # the str the device holds for this account already, if any (a device has a few): kept once, not per view
        viewers = self.viewer_ids
        if viewers and viewers[-1] == viewer_id:
            viewer_id = viewers[-1]
        else:
            for known in self.accounts:
                if known == viewer_id:
                    viewer_id = known
                    break
        times.insert(i, ts)
        self.watch_ms.insert(i, watch_ms)
        self.video_ids.insert(i, video_id)
        self.event_ids.insert(i, event_id)
        viewers.insert(i, viewer_id)
        self.flags.insert(i, NOT_FLAGGED)
        if ts > self.max_ts:
            self.max_ts = ts
        return i

    def drop_through(self, cutoff_ms: int) -> None:
        """Forget the recent views at or before cutoff_ms."""
        cut = bisect_right(self.ts, cutoff_ms)
        if cut:
            del self.ts[:cut]
            del self.watch_ms[:cut]
            del self.video_ids[:cut]
            del self.event_ids[:cut]
            del self.viewer_ids[:cut]
            del self.flags[:cut]

    def ref(self, i: int) -> ViewRef:
        return ViewRef(self.video_ids[i], self.event_ids[i], self.viewer_ids[i], self.ts[i])

    def index_of(self, event_id: str, ts: int) -> int | None:
        for i in range(bisect_left(self.ts, ts), bisect_right(self.ts, ts)):
            if self.event_ids[i] == event_id:
                return i
        return None

    def pending_from(self) -> int:
        """Index of the first recent view not judged yet by device_overlap / account_farm."""
        return bisect_right(self.ts, self.judged_through)

    # --- kept watch intervals (device_overlap) ----------------------------------------------------------------

    def keep_interval(self, start: int, end: int, event_id: str) -> None:
        if end <= start:
            return  # a zero-length view takes no time on the screen: it can overlap nothing
        ends = self.kept_ends
        if not ends or end >= ends[-1]:
            ends.append(end)
            self.kept_starts.append(start)
            self.kept_ids.append(event_id)
        else:
            i = bisect_right(ends, end)
            ends.insert(i, end)
            self.kept_starts.insert(i, start)
            self.kept_ids.insert(i, event_id)

    def unkeep_interval(self, start: int, end: int, event_id: str) -> None:
        """Forget a kept interval (its view was rejected by device_burst after it was judged)."""
        ends = self.kept_ends
        for i in range(bisect_left(ends, end), bisect_right(ends, end)):
            if self.kept_starts[i] == start and self.kept_ids[i] in (event_id, ""):
                del ends[i]
                del self.kept_starts[i]
                del self.kept_ids[i]
                return

    def holds(self, event_id: str, ts: int) -> bool:
        """This view is here already: among the recent views, or judged, kept and forgotten from them."""
        if ts > self.max_ts:
            return False  # newer than every view the device has held (the common case: views come in order)
        if self.index_of(event_id, ts) is not None:
            return True
        ends = self.kept_ends
        ids = self.kept_ids
        return any(ids[i] == event_id for i in range(bisect_left(ends, ts), bisect_right(ends, ts)))

    def overlap_ms(self, start: int, end: int, since: int) -> int:
        """Total overlap of [start, end] with the kept intervals that end after `since`, summed over intervals.

        One bisect finds the first kept interval ending after max(start, since). When [start, end] is judged in
        canonical order it ends at or after every kept interval, and kept intervals overlap one another by at most
        OVERLAP_TOLERANCE_MS, so what follows is the handful it overlaps; a view judged late scans the intervals
        that end after it too (a long one may reach back)."""
        ends = self.kept_ends
        starts = self.kept_starts
        total = 0
        for i in range(bisect_right(ends, max(start, since)), len(ends)):
            s = starts[i]
            if s < end:
                e = ends[i]
                total += (e if e < end else end) - (s if s > start else start)
        return total

    def drop_kept_through(self, cutoff_ms: int) -> None:
        cut = bisect_right(self.kept_ends, cutoff_ms)
        if cut:
            del self.kept_ends[:cut]
            del self.kept_starts[:cut]
            del self.kept_ids[:cut]

    # --- accounts (account_farm) ------------------------------------------------------------------------------

    def forget_accounts_through(self, cutoff_ms: int) -> None:
        """Forget the accounts whose latest judged view is at or before cutoff_ms (later ones move up)."""
        last = self.account_last
        if last and min(last) <= cutoff_ms:
            keep = [k for k, ts in enumerate(last) if ts > cutoff_ms]
            self.accounts = [self.accounts[k] for k in keep]
            self.account_last = [last[k] for k in keep]

    def __len__(self) -> int:
        return len(self.ts) + len(self.kept_ends) + len(self.accounts)

    def is_empty(self) -> bool:
        return not (self.ts or self.kept_ends or self.accounts)

    # --- stored form ------------------------------------------------------------------------------------------

    def to_stored(self) -> list[Any]:
        """The JSON-ready stored form, a positional array (smaller than an object):

            [4, max_ts, through_offset, judged_through, accounts, account_last, kept_starts, kept_ends, kept_ids,
             ts, watch_ms, video_ids, event_ids, viewer_ids, flags]

        Every time but max_ts is stored as its distance back from max_ts (`max_ts - t`: a few digits, where a
        time has thirteen), and the lists that are empty at the end are left out. The memories a device keeps
        longest come first: most stored devices hold one account (and for DEVICE_MEMORY_S one kept interval) and
        no view for a day, and store as `[4,1800000000000,12,300000,["u-1"],[0]]`. Format 3 (the same fields in
        another order, times as they are, nothing left out) took about 50 bytes more per device: measured on make
        bench's hot workload (bench/RESULTS.md, Speed steps 22), each device's stored bytes are held in the heap.
        It shares lists with the state, so serialise it before the state changes again."""
        base = self.max_ts
        stored: list[Any] = [
            DEVICE_STATE_FORMAT,
            base,
            self.through_offset,
            base - self.judged_through,
            self.accounts,
            [base - t for t in self.account_last],
            [base - t for t in self.kept_starts],
            [base - t for t in self.kept_ends],
            self.kept_ids,
            [base - t for t in self.ts],
            self.watch_ms,
            self.video_ids,
            self.event_ids,
            self.viewer_ids,
            list(self.flags),
        ]
        while len(stored) > 4 and not stored[-1]:
            stored.pop()
        return stored

    @classmethod
    def from_stored(cls, data: Any) -> DeviceState:
        """Read a stored DeviceState: the current format (4, see to_stored), format 3 (the same fields in the
        order [3, max_ts, judged_through, ts, watch_ms, video_ids, event_ids, viewer_ids, flags, kept_starts,
        kept_ends, accounts, account_last, through_offset, kept_ids], times as they are), format 2 (format 3
        without `through_offset` and `kept_ids`), or format 1 (device_burst only; an object), migrated.

        Format 1 had no watch times and no account memory: its views are read as judged (they were judged by the
        rules of their time), of zero length (they overlap nothing), and their accounts are remembered in ts
        order. Any other format is refused (StateFormatError), since a newer worker may have written it."""
        if isinstance(data, Mapping):
            version = data.get("format")
            if version == 1:
                return cls._from_format_1(data)
        else:
            version = data[0] if isinstance(data, list) and data else None
            if version == DEVICE_STATE_FORMAT and 4 <= len(data) <= _DEVICE_FIELDS:
                return cls._from_format_4(data)
            if version == 3 and len(data) == 15:
                state = cls._from_format_2(data[:13])
                state.through_offset = data[13]
                state.kept_ids = data[14]
                return state
            if version == 2 and len(data) == 13:
                return cls._from_format_2(data)
        raise StateFormatError(
            f"DeviceState: stored state format {version!r}; this worker reads formats 1 to "
            f"{DEVICE_STATE_FORMAT} (state written by a newer version? run that version, or clear the "
            "device-state table and its changelog)"
        )

    @classmethod
    def _from_format_4(cls, data: list[Any]) -> DeviceState:
        state = cls()
        base: int = data[1]
        state.max_ts = base
        state.through_offset = data[2]
        state.judged_through = base - data[3]
        n = len(data)
        if n > 4:
            state.accounts = data[4]
        if n > 5:
            state.account_last = [base - d for d in data[5]]
        if n > 6:
            state.kept_starts = [base - d for d in data[6]]
        if n > 7:
            state.kept_ends = [base - d for d in data[7]]
        if n > 8:
            state.kept_ids = data[8]
        if n > 9:
            state.ts = [base - d for d in data[9]]
        if n > 10:
            state.watch_ms = data[10]
        if n > 11:
            state.video_ids = data[11]
        if n > 12:
            state.event_ids = data[12]
        if n > 13:
            state.viewer_ids = data[13]
        if n > 14:
            state.flags = bytearray(data[14])
        return state

    @classmethod
    def _from_format_2(cls, data: list[Any]) -> DeviceState:
        state = cls()  # (cls.__new__ alone, skipping the empty lists, cannot be compiled: stream_app.tools.compile)
        (
            _,
            state.max_ts,
            state.judged_through,
            state.ts,
            state.watch_ms,
            state.video_ids,
            state.event_ids,
            state.viewer_ids,
            flags,
            state.kept_starts,
            state.kept_ends,
            state.accounts,
            state.account_last,
        ) = data
        state.flags = bytearray(flags)
        state.through_offset = -1  # format 2 did not say which records it holds
        state.kept_ids = [""] * len(state.kept_ends)  # nor whose intervals it kept
        return state

    @classmethod
    def _from_format_1(cls, data: Mapping[str, Any]) -> DeviceState:
        state = cls()
        state.max_ts = int(data["max_ts"])
        state.ts = list(data["ts"])
        state.watch_ms = [0] * len(state.ts)
        state.video_ids = list(data["video_ids"])
        state.event_ids = list(data["event_ids"])
        state.viewer_ids = list(data["viewer_ids"])
        state.flags = bytearray(FLAG_BURST if flagged else NOT_FLAGGED for flagged in data["flagged"])
        state.judged_through = state.ts[-1] if state.ts else -1
        for viewer, ts in zip(state.viewer_ids, state.ts, strict=True):
            if viewer in state.accounts:
                state.account_last[state.accounts.index(viewer)] = ts
            else:
                state.accounts.append(viewer)
                state.account_last.append(ts)
        return state


class VideoRulesState:
    """Everything the per-video rules remember about one video (the rules part of the per-video table value).

    What each part holds, and when it forgets (``reach`` = watermark - (WINDOW_S + GRACE_S): the earliest ts an
    event that is not late can still carry; see rules.expire):

    - ``view_ids`` / ``interaction_ids``: event_id -> ts per topic; ids older than DEDUPE_S + WINDOW_S + GRACE_S
      behind the newest ts of that topic are swept lazily, and ids at or before reach - DEDUPE_S by expire().
    - ``repeats``: viewer -> view ts within VIEWER_REPEAT_SPAN behind the newest view (lazily, and by expire()).
    - ``velocity``: the head span's views and the last 60 per-minute counts (see VelocityState).
    - ``accepted_views``: viewer -> ts of their accepted, not clawed back, views; only expire() forgets them (at or
      before reach - ENGAGEMENT_LOOKBACK), because only the settlement watermark knows which windows can still ask.
    - ``interactions``: kind (of Policy.duplicate_interaction_kinds: like, follow) -> viewer -> ts of accepted
      ones; only expire() forgets them (at or before reach - DEDUPE_S).
    """

    __slots__ = ("accepted_views", "interaction_ids", "interactions", "repeats", "velocity", "view_ids")

    def __init__(self) -> None:
        self.view_ids = DedupeMemory()
        self.interaction_ids = DedupeMemory()
        self.repeats = TimestampsByKey()
        self.velocity = VelocityState()
        self.accepted_views = TimestampsByKey()
        self.interactions: dict[str, TimestampsByKey] = {}  # a kind appears with its first accepted one

    def event_ids_of(self, topic: InputTopic | str) -> DedupeMemory:
        """The dedupe memory of an input event topic (enum or name without TOPIC_PREFIX)."""
        name = topic.value if isinstance(topic, InputTopic) else topic
        if name == InputTopic.VIEWS.value:
            return self.view_ids
        if name == InputTopic.INTERACTIONS.value:
            return self.interaction_ids
        raise UnknownTopicError(f"no per-video event_id memory for topic {name!r}")

    def entry_count(self) -> int:
        """How many timestamps and ids this state holds in all: the measure of its size."""
        return (
            len(self.view_ids)
            + len(self.interaction_ids)
            + len(self.repeats)
            + len(self.velocity)
            + len(self.accepted_views)
            + sum(len(memory) for memory in self.interactions.values())
        )

    def is_empty(self) -> bool:
        return self.entry_count() == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; it shares lists with the state, so serialise it before the state changes again."""
        return {
            "format": STATE_FORMAT,
            "view_ids": self.view_ids.to_dict(),
            "interaction_ids": self.interaction_ids.to_dict(),
            "repeats": self.repeats.to_dict(),
            "velocity": self.velocity.to_dict(),
            "accepted_views": self.accepted_views.to_dict(),
            "interactions": {kind: memory.to_dict() for kind, memory in self.interactions.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoRulesState:
        _check_format(data, "VideoRulesState")
        state = cls()
        state.view_ids = DedupeMemory.from_dict(data["view_ids"])
        state.interaction_ids = DedupeMemory.from_dict(data["interaction_ids"])
        state.repeats = TimestampsByKey.from_dict(data["repeats"])
        state.velocity = VelocityState.from_dict(data["velocity"])
        state.accepted_views = TimestampsByKey.from_dict(data["accepted_views"])
        state.interactions = {kind: TimestampsByKey.from_dict(memory) for kind, memory in data["interactions"].items()}
        return state


def _check_format(data: Mapping[str, Any], what: str) -> None:
    if data.get("format") != STATE_FORMAT:
        raise SerializationError(f"{what}: state format {data.get('format')!r}, expected {STATE_FORMAT}")
