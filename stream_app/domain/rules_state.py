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
# A memory sweeps all its keys once event time has moved 1/SWEEP_DIVISOR of its horizon since the last sweep: a
# sweep costs O(keys), so this keeps it amortised while the memory never holds more than 9/8 of its horizon.
SWEEP_DIVISOR = 8
# Bumped when the layout of to_dict() changes; from_dict() refuses other formats.
STATE_FORMAT = 1
# The same for DeviceState, which reads the previous format too (DeviceState.from_stored). 2: watch times, verdicts
# of device_overlap / account_farm, kept intervals and accounts.
DEVICE_STATE_FORMAT = 2
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


class DedupeMemory:
    """event_id -> ts first seen, for one topic of one video (``duplicate_event``)."""

    __slots__ = ("max_ts", "next_sweep", "oldest", "seen")

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.max_ts = -1
        self.next_sweep = 0
        # a lower bound of the ts held: lets expire() return at once when there is nothing to forget
        self.oldest = _NEVER

    def first_seen(self, event_id: str) -> int | None:
        return self.seen.get(event_id)

    def remember(self, event_id: str, ts: int, horizon_ms: int) -> None:
        """Remember event_id at ts; sweep ids older than horizon_ms behind the newest ts seen, now and then."""
        self.seen[event_id] = ts
        if ts < self.oldest:
            self.oldest = ts
        if ts > self.max_ts:
            self.max_ts = ts
            if ts >= self.next_sweep:
                self.expire(ts - horizon_ms)
                self.next_sweep = ts + max(1, horizon_ms // SWEEP_DIVISOR)

    def expire(self, cutoff_ms: int) -> None:
        """Forget ids first seen at or before cutoff_ms."""
        if self.oldest > cutoff_ms:
            return
        seen = self.seen
        for event_id in [event_id for event_id, ts in seen.items() if ts <= cutoff_ms]:
            del seen[event_id]
        self.oldest = min(seen.values(), default=_NEVER)

    def __len__(self) -> int:
        return len(self.seen)

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "max_ts": self.max_ts, "next_sweep": self.next_sweep}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DedupeMemory:
        memory = cls()
        memory.seen = dict(data["seen"])
        memory.max_ts = int(data["max_ts"])
        memory.next_sweep = int(data["next_sweep"])
        memory.oldest = min(memory.seen.values(), default=_NEVER)
        return memory


class TimestampsByKey:
    """key -> ascending event timestamps: the shape of every per-viewer memory."""

    __slots__ = ("by_key", "max_ts", "next_sweep", "oldest")

    def __init__(self) -> None:
        self.by_key: dict[str, list[int]] = {}
        self.max_ts = -1
        self.next_sweep = 0
        self.oldest = _NEVER  # a lower bound of the ts held, as in DedupeMemory

    def add(self, key: str, ts: int) -> None:
        times = self.by_key.get(key)
        if times is None:
            self.by_key[key] = [ts]
        elif ts >= times[-1]:
            times.append(ts)  # the common case: events arrive in ts order
        else:
            insort(times, ts)
        if ts > self.max_ts:
            self.max_ts = ts
        if ts < self.oldest:
            self.oldest = ts

    def count_in(self, key: str, first_ms: int, last_ms: int) -> int:
        """How many timestamps of key lie in [first_ms, last_ms] (both ends included)."""
        times = self.by_key.get(key)
        if not times or last_ms < first_ms:
            return 0
        return bisect_right(times, last_ms) - bisect_left(times, first_ms)

    def discard(self, key: str, ts: int) -> bool:
        """Remove one occurrence of ts under key; False when it is not there."""
        times = self.by_key.get(key)
        if times is None:
            return False
        i = bisect_left(times, ts)
        if i == len(times) or times[i] != ts:
            return False
        del times[i]
        if not times:
            del self.by_key[key]
        return True

    def prune_key(self, key: str, cutoff_ms: int) -> None:
        """Drop the timestamps of one key at or before cutoff_ms (cheap: one bisect)."""
        times = self.by_key.get(key)
        if times is None:
            return
        cut = bisect_right(times, cutoff_ms)
        if cut == len(times):
            del self.by_key[key]
        elif cut:
            del times[:cut]

    def maybe_sweep(self, horizon_ms: int) -> None:
        """Sweep every key once event time has moved far enough since the last sweep."""
        if self.max_ts >= self.next_sweep:
            self.expire(self.max_ts - horizon_ms)
            self.next_sweep = self.max_ts + max(1, horizon_ms // SWEEP_DIVISOR)

    def expire(self, cutoff_ms: int) -> None:
        """Drop every timestamp at or before cutoff_ms, and keys left with none."""
        if self.oldest > cutoff_ms:
            return
        stale = []
        oldest = _NEVER
        for key, times in self.by_key.items():
            if times[0] <= cutoff_ms:
                cut = bisect_right(times, cutoff_ms)
                if cut == len(times):
                    stale.append(key)
                    continue
                del times[:cut]
            if times[0] < oldest:
                oldest = times[0]
        for key in stale:
            del self.by_key[key]
        self.oldest = oldest

    def __len__(self) -> int:
        return sum(len(times) for times in self.by_key.values())

    def to_dict(self) -> dict[str, Any]:
        return {"by_key": self.by_key, "max_ts": self.max_ts, "next_sweep": self.next_sweep}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimestampsByKey:
        memory = cls()
        memory.by_key = {key: list(times) for key, times in data["by_key"].items()}
        memory.max_ts = int(data["max_ts"])
        memory.next_sweep = int(data["next_sweep"])
        memory.oldest = min((times[0] for times in memory.by_key.values()), default=_NEVER)
        return memory


class VelocityState:
    """One video's recent view rate (``velocity_burst``).

    - per-minute view counts (minute = ts // 60_000) for the baseline, kept for the last
      ``velocity_baseline_minutes`` minutes before the newest view's minute, and the minutes flagged by a burst;
    - the views of the *head span* ``(max_ts - span, max_ts]``, sorted by ts (ties in arrival order), with their
      viewers, event ids, a flag per view (already rejected or clawed back: never clawed back again), and the
      number of views per viewer in the span (distinct viewers = its length).
    """

    __slots__ = (
        "event_ids",
        "flagged",
        "flagged_minutes",
        "in_burst",
        "max_ts",
        "minute_counts",
        "ts",
        "viewer_counts",
        "viewers",
    )

    def __init__(self) -> None:
        self.max_ts = -1
        self.ts: list[int] = []
        self.viewers: list[str] = []
        self.event_ids: list[str] = []
        self.flagged = bytearray()
        self.viewer_counts: dict[str, int] = {}
        # True when the last view judged found the head span in a burst (lets the next in-order view skip a scan).
        self.in_burst = False
        self.minute_counts: dict[int, int] = {}
        self.flagged_minutes: set[int] = set()

    def count_minute(self, ts: int, baseline_minutes: int) -> None:
        minute = ts // MINUTE_MS
        if minute >= max(self.max_ts, ts) // MINUTE_MS - baseline_minutes:
            self.minute_counts[minute] = self.minute_counts.get(minute, 0) + 1

    def advance(self, ts: int, span_ms: int, baseline_minutes: int) -> None:
        """Move the head span's end to ts (> max_ts): views at or before ts - span_ms leave the span."""
        old_minute = self.max_ts // MINUTE_MS
        self.max_ts = ts
        self.drop_through(ts - span_ms)
        if ts // MINUTE_MS != old_minute:
            self.forget_minutes_before(ts // MINUTE_MS - baseline_minutes)

    def drop_through(self, cutoff_ms: int) -> None:
        cut = bisect_right(self.ts, cutoff_ms)
        if not cut:
            return
        counts = self.viewer_counts
        for viewer in self.viewers[:cut]:
            left = counts[viewer] - 1
            if left:
                counts[viewer] = left
            else:
                del counts[viewer]
        del self.ts[:cut]
        del self.viewers[:cut]
        del self.event_ids[:cut]
        del self.flagged[:cut]

    def forget_minutes_before(self, first_kept_minute: int) -> None:
        if any(m < first_kept_minute for m in self.minute_counts):
            self.minute_counts = {m: c for m, c in self.minute_counts.items() if m >= first_kept_minute}
        if any(m < first_kept_minute for m in self.flagged_minutes):
            self.flagged_minutes = {m for m in self.flagged_minutes if m >= first_kept_minute}

    def insert(self, ts: int, viewer_id: str, event_id: str) -> int:
        """Add a view to the head span; return its index (after views with an equal ts: arrival order)."""
        i = len(self.ts)
        if i and ts < self.ts[-1]:
            i = bisect_right(self.ts, ts)
        self.ts.insert(i, ts)
        self.viewers.insert(i, viewer_id)
        self.event_ids.insert(i, event_id)
        self.flagged.insert(i, 0)
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
        for i in range(bisect_left(self.ts, ts), bisect_right(self.ts, ts)):
            if self.event_ids[i] == event_id:
                return i
        return None

    def __len__(self) -> int:
        return len(self.ts) + len(self.minute_counts) + len(self.flagged_minutes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_ts": self.max_ts,
            "ts": self.ts,
            "viewers": self.viewers,
            "event_ids": self.event_ids,
            "flagged": list(self.flagged),
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
    - `kept_starts` / `kept_ends`: the watch intervals of judged views no device rule rejected, sorted by end (ts),
      for device_overlap (DEVICE_MEMORY_S back; zero-length intervals, which overlap nothing, are not kept);
    - `accounts` / `account_last`: the first ACCOUNTS_PER_DEVICE + 1 accounts of the device in the order of their
      first judged view, each with its latest judged view ts (account_farm, DEDUPE_S back).
    """

    __slots__ = (
        "account_last",
        "accounts",
        "event_ids",
        "flags",
        "judged_through",
        "kept_ends",
        "kept_starts",
        "max_ts",
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
        self.accounts: list[str] = []
        self.account_last: list[int] = []

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
        times.insert(i, ts)
        self.watch_ms.insert(i, watch_ms)
        self.video_ids.insert(i, video_id)
        self.event_ids.insert(i, event_id)
        self.viewer_ids.insert(i, viewer_id)
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

    def keep_interval(self, start: int, end: int) -> None:
        if end <= start:
            return  # a zero-length view takes no time on the screen: it can overlap nothing
        ends = self.kept_ends
        if not ends or end >= ends[-1]:
            ends.append(end)
            self.kept_starts.append(start)
        else:
            i = bisect_right(ends, end)
            ends.insert(i, end)
            self.kept_starts.insert(i, start)

    def unkeep_interval(self, start: int, end: int) -> None:
        """Forget a kept interval (its view was rejected by device_burst after it was judged)."""
        ends = self.kept_ends
        for i in range(bisect_left(ends, end), bisect_right(ends, end)):
            if self.kept_starts[i] == start:
                del ends[i]
                del self.kept_starts[i]
                return

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
        """The JSON-ready stored form: a positional array whose first element is the format (smaller than an
        object: most devices hold one account and nothing else). It shares lists with the state, so serialise it
        before the state changes again."""
        return [
            DEVICE_STATE_FORMAT,
            self.max_ts,
            self.judged_through,
            self.ts,
            self.watch_ms,
            self.video_ids,
            self.event_ids,
            self.viewer_ids,
            list(self.flags),
            self.kept_starts,
            self.kept_ends,
            self.accounts,
            self.account_last,
        ]

    @classmethod
    def from_stored(cls, data: Any) -> DeviceState:
        """Read a stored DeviceState: the current format, or format 1 (device_burst only; an object), migrated.

        Format 1 had no watch times and no account memory: its views are read as judged (they were judged by the
        rules of their time), of zero length (they overlap nothing), and their accounts are remembered in ts
        order. Any other format is refused (StateFormatError), since a newer worker may have written it."""
        if isinstance(data, Mapping):
            version = data.get("format")
            if version == 1:
                return cls._from_format_1(data)
        else:
            version = data[0] if isinstance(data, list) and data else None
            if version == DEVICE_STATE_FORMAT and len(data) == 13:
                return cls._from_format_2(data)
        raise StateFormatError(
            f"DeviceState: stored state format {version!r}; this worker reads formats 1 and "
            f"{DEVICE_STATE_FORMAT} (state written by a newer version? run that version, or clear the "
            "device-state table and its changelog)"
        )

    @classmethod
    def _from_format_2(cls, data: list[Any]) -> DeviceState:
        state = cls.__new__(cls)  # every slot is set below: no empty lists made only to be replaced
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
