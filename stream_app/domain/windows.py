"""Event-time window arithmetic (SPEC §5): epoch-aligned tumbling windows, settle deadlines, and the
per-partition watermark that decides when a window settles. Pure integer milliseconds, no clock reads.
"""

from __future__ import annotations

from collections.abc import Mapping


def window_index(ts_ms: int, window_s: int) -> int:
    """Index k of the tumbling window holding `ts_ms`: k = ts // (W*1000), so window k covers [k*W, (k+1)*W)."""
    return ts_ms // (window_s * 1000)


def window_bounds(k: int, window_s: int) -> tuple[int, int]:
    """(start_ms, end_ms) of window k: start inclusive, end exclusive."""
    size_ms = window_s * 1000
    return k * size_ms, (k + 1) * size_ms


def settle_deadline_ms(k: int, window_s: int, grace_s: int) -> int:
    """The watermark at which window k settles: its end plus GRACE_S, i.e. (k+1)*W*1000 + GRACE_S*1000."""
    return (k + 1) * window_s * 1000 + grace_s * 1000


def is_settleable(k: int, watermark_ms: int | None, window_s: int, grace_s: int) -> bool:
    """Whether window k settles at this watermark (inclusive: reaching the deadline is enough). No watermark
    yet means nothing settles."""
    return watermark_ms is not None and watermark_ms >= settle_deadline_ms(k, window_s, grace_s)


def last_settleable_window(watermark_ms: int, window_s: int, grace_s: int) -> int:
    """The largest k with is_settleable(k, watermark_ms, ...): floor((wm - grace) / W) - 1.

    Every window up to and including it may settle; floor division keeps this right for small watermarks.
    """
    return (watermark_ms - grace_s * 1000) // (window_s * 1000) - 1


def is_idle(*, idle_since_ms: int | None, caught_up: bool, now_ms: int, idle_settle_s: int) -> bool:
    """Whether a topic-partition counts as idle for the watermark (SPEC §5).

    Idle means caught up (position >= high watermark) and nothing delivered for IDLE_SETTLE_S (inclusive).
    `idle_since_ms` is the later of when it last delivered an event and, after an assignment, when it first
    became caught up; None means the clock has not started (not yet caught up since the assignment).
    """
    return caught_up and idle_since_ms is not None and now_ms - idle_since_ms >= idle_settle_s * 1000


def partition_watermark(
    latest_ts_by_topic: Mapping[str, int | None], idle: Mapping[str, bool], wall_clock_ms: int
) -> int | None:
    """The watermark of one partition, from its event topic-partitions (SPEC §5).

    Reading of the SPEC:
    - each key of `latest_ts_by_topic` is one event topic of this partition (views, interactions), mapped to
      the largest `ts` accepted on it, or None if it has accepted nothing yet;
    - a topic-partition marked idle in `idle` (a missing entry means not idle) is left out of the minimum,
      whether or not it ever delivered;
    - the watermark is the minimum over the others; if one of the others has accepted nothing yet, there is no
      watermark (None): its future events could belong to any open window, so nothing may settle;
    - when every topic-partition is idle, the wall clock stands in.
    The result can move backwards (a topic waking up with older events, a wall clock behind event time); the
    caller keeps the settle decision monotonic with advance_watermark().
    """
    lowest: int | None = None
    for topic, latest in latest_ts_by_topic.items():
        if idle.get(topic, False):
            continue
        if latest is None:
            return None
        if lowest is None or latest < lowest:
            lowest = latest
    return wall_clock_ms if lowest is None else lowest


def advance_watermark(previous: int | None, candidate: int | None) -> int | None:
    """The monotonic watermark: it never moves back, and a missing candidate keeps what we had."""
    if candidate is None:
        return previous
    if previous is None or candidate > previous:
        return candidate
    return previous


class SourceWatermark:
    """The event-time progress of a partition fed by many source partitions: the device-views repartition, which
    every partition of the event topics feeds (SPEC §6, the device rules).

    Each source reports its progress (the largest view ts it accepted) with the records it sends (`observe`).
    The watermark is the minimum over all sources: nothing is inferred from silence, since a source may be
    silent only because its worker is busy with other partitions. Two bounds of our own: it never moves back,
    and it is never more than `max_skew_ms` behind the most advanced source, so a source that never reports (its
    partition has no owner) or falls far behind cannot hold the device memory back without limit. Everything the
    sources sent up to the watermark, less the disorder a source may still show (GRACE_S), has been seen here.
    None: nothing heard yet.
    """

    __slots__ = ("_latest", "max_skew_ms", "watermark")

    def __init__(self, *, max_skew_ms: int) -> None:
        self.max_skew_ms = max_skew_ms
        self._latest: dict[int, int] = {}  # source -> the largest progress it reported
        self.watermark: int | None = None

    def observe(self, source: int, progress_ms: int) -> None:
        if progress_ms > self._latest.get(source, progress_ms - 1):
            self._latest[source] = progress_ms

    def advance(self, sources: int) -> int | None:
        """Recompute over sources 0..sources-1 and return the (monotonic) watermark."""
        if not self._latest:
            return self.watermark
        reported = [self._latest.get(source) for source in range(sources)]
        floor = max(self._latest.values()) - self.max_skew_ms
        candidate = floor if None in reported else max(floor, min(r for r in reported if r is not None))
        self.watermark = advance_watermark(self.watermark, candidate)
        return self.watermark
