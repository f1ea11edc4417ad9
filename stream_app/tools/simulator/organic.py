"""Organic traffic: viewer sessions, each a run of views picked by popularity, some followed by interactions, and
the duplicates an at-least-once pipeline delivers. The bounds marked "by construction" keep it clear of SPEC §6."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from typing import Any

from stream_app.domain.events import InputTopic
from stream_app.tools.simulator.catalogue import SOURCES, Catalogue, Video, event_id, video_ms_draw, watch_ms_draw
from stream_app.tools.simulator.scenarios import ORGANIC, SimEvent, SimulationConfig

_MEAN_SESSION_VIEWS = 7.5  # 1 + a rounded exponential draw of mean 6.5 (capped at 60, which hardly matters)
_MEAN_VIEW_STEP_MS = 48_000  # measured mean time from one view of a session to the next (watch + gap)
_MAX_VIEW_STEP_MS = 180_000 * 5 // 2 + 3_000  # longest video, watched 2.5 times, plus the longest gap
_MAX_SESSION_VIEWS = 60
# By construction: views of a session are sequential (the next starts 300-3_000 ms after the last ended, and lasts
# at least 700 ms), so a device never shows two videos at once (device_overlap) nor more than 60 views in 60 s
# (view ends at least 1_000 ms apart: device_burst).
_THINK_MS = (300, 3_000)
_SECOND_DEVICE_SESSION_P = 0.3  # a session on the second device, when it is free
_MAX_VIEWS_PER_VIDEO = 2  # by construction: far under viewer_repeat (6), and distinct viewers >= half (velocity)
_REWATCH_P = 0.15  # chance a viewer who drew a video they saw once watches it again
_SESSION_BREAK_MS = (20_000, 900_000)  # pause between two sessions of one viewer
_VIEWER_MEMORY_MS = 90_000_000  # > DEDUPE_S (24 h): after this idle time a viewer's history is forgotten
_VIEWER_TRIES = 8
_VIDEO_TRIES = 6
# Interactions per kind for a view watched to >= 90 % / to >= 30 % of the video; none below that.
# Tuned so the engagement multiplier of SPEC §5 comes out near 1.0x on organic traffic.
_ENGAGED_KINDS: tuple[tuple[str, float], ...] = (
    ("like", 0.065),
    ("comment", 0.01),
    ("share", 0.0065),
    ("follow", 0.005),
)
_CASUAL_KINDS: tuple[tuple[str, float], ...] = (
    ("like", 0.016),
    ("comment", 0.0026),
    ("share", 0.0013),
    ("follow", 0.0007),
)
# Interactions per view of the distributions above, measured on 120k simulated views; turns an event rate into a
# view rate.
_INTERACTIONS_PER_VIEW = 0.028
_ONCE_KINDS = {"like": 4, "follow": 8}  # at most one per viewer and video (duplicate_interaction): flag bits
_COUNT_MASK = 3


class _Session:
    __slots__ = ("device", "in_flight", "remaining", "viewer")

    def __init__(self, viewer: int, device: str, remaining: int, in_flight: bool) -> None:
        self.viewer = viewer
        self.device = device
        self.remaining = remaining
        self.in_flight = in_flight  # caught mid-view when the run starts: its first view ends when it comes up


class OrganicTraffic:
    """Viewer sessions: each a run of views picked by popularity, some followed by interactions.

    Per viewer it remembers, per video, how often they watched it and whether they liked/followed it, which is
    what keeps organic traffic clean of viewer_repeat, velocity_burst and duplicate_interaction by construction.
    """

    def __init__(
        self,
        config: SimulationConfig,
        catalogue: Catalogue,
        rng: random.Random,
        rate_per_s: float,
        no_rewatch: frozenset[int],
    ) -> None:
        self._config = config
        self._cat = catalogue
        self._rng = rng
        self._no_rewatch = no_rewatch
        views_per_ms = rate_per_s / (1 + _INTERACTIONS_PER_VIEW) / 1000
        self._sessions_per_ms = views_per_ms / _MEAN_SESSION_VIEWS
        self._history: dict[int, dict[int, int]] = {}  # viewer -> video -> count | like/follow flag bits
        self._active: set[int] = set()
        self._last_end: dict[int, int] = {}
        self._busy: set[str] = set()  # devices in a session
        self._device_free_at: dict[str, int] = {}  # device -> when its last session's last view ended
        self._heap: list[tuple[int, int, _Session | SimEvent]] = []
        self._seq = 0

    def events(self) -> Iterator[SimEvent]:
        end = self._config.end_ms
        heap = self._heap
        rng = self._rng
        start = self._config.start_ms
        # Start in the steady state: the sessions in flight at any instant are already running. Little's law: as
        # many as the start rate x the time a session runs, from its start to the end of its last view (its views
        # x the mean step; one step fewer, as counted before, started a run 13 % under its rate, climbing for ten
        # minutes). A session's length is memoryless, so one caught mid-way has the same law of remaining views
        # as a new one. Caught mid-way, its current view ends a little after the run starts (it began before).
        for _ in range(round(self._sessions_per_ms * _MEAN_SESSION_VIEWS * _MEAN_VIEW_STEP_MS)):
            self._start_session(start + self._in_flight_delay(), in_flight=True)
        next_start = start + rng.expovariate(self._sessions_per_ms)
        while True:
            if heap and heap[0][0] <= next_start:
                ts, _, item = heapq.heappop(heap)
                if ts >= end:
                    return
                if isinstance(item, SimEvent):
                    yield item
                    continue
                self._view(item, ts)
            else:
                if next_start >= end:
                    return
                self._start_session(int(next_start))
                next_start += rng.expovariate(self._sessions_per_ms)

    def _push(self, ts: int, item: _Session | SimEvent) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (ts, self._seq, item))

    def _start_session(self, now: int, in_flight: bool = False) -> None:
        rng = self._rng
        n = self._cat.viewers
        for _ in range(_VIEWER_TRIES):
            viewer = rng.randrange(n)
            if viewer in self._active:
                continue
            # A viewer who just closed the app does not start a new session at once.
            last_end = self._last_end.get(viewer)
            if last_end is None or last_end + rng.randint(*_SESSION_BREAK_MS) <= now:
                break
        else:
            return  # the population is saturated at this rate: fewer sessions rather than overlapping ones
        if last_end is not None and now - last_end > _VIEWER_MEMORY_MS:
            self._history.pop(viewer, None)  # bounded memory: history this old can no longer trip a rule
        device = self._cat.phone(viewer)
        second = self._cat.second_device.get(viewer)
        # The second device when it is free: a family tablet may be in another member's hands (one screen, one
        # video at a time: sessions on a device never overlap).
        if second is not None and rng.random() < _SECOND_DEVICE_SESSION_P and self._free(second, now):
            device = second
        length = min(_MAX_SESSION_VIEWS, 1 + round(rng.expovariate(1 / (_MEAN_SESSION_VIEWS - 1.0))))
        self._active.add(viewer)
        self._busy.add(device)
        self._push(now, _Session(viewer, device, length, in_flight))

    def _free(self, device: str, now: int) -> bool:
        return device not in self._busy and self._device_free_at.get(device, now) <= now

    def _in_flight_delay(self) -> int:
        """Time to the end of the current view of a session caught mid-way: uniform within a step drawn
        length-biased."""
        rng = self._rng
        while True:
            step = watch_ms_draw(rng, video_ms_draw(rng)) + rng.randint(*_THINK_MS)
            if rng.random() * _MAX_VIEW_STEP_MS < step:
                return rng.randrange(step)

    def _pick(self, history: dict[int, int]) -> int:
        rng = self._rng
        for _ in range(_VIDEO_TRIES):
            video = self._cat.pick_video(rng)
            count = history.get(video, 0) & _COUNT_MASK
            if count == 0:
                return video
            if count < _MAX_VIEWS_PER_VIDEO and video not in self._no_rewatch and rng.random() < _REWATCH_P:
                return video
        return -1

    def _view(self, session: _Session, start: int) -> None:
        """The session's next view starts at `start` (ends then, for a session caught mid-view when the run
        starts); it is reported when it ends (SPEC §3: its watch interval on the device is [ts - watch_ms, ts]),
        and the next one starts after some think time."""
        rng = self._rng
        viewer = session.viewer
        history = self._history.setdefault(viewer, {})
        index = self._pick(history)
        if index < 0:
            self._end_session(session, start)
            return
        history[index] = history.get(index, 0) + 1
        video = self._cat.videos[index]
        watch_ms = watch_ms_draw(rng, video.video_ms)
        end = start + watch_ms
        if session.in_flight:  # it began before the run: no interactions from the part we do not simulate
            session.in_flight = False
            end = start
        payload = self._view_payload(session, video, end, watch_ms)
        if start < end < self._config.end_ms:  # a view still playing when the run ends is never reported, nor liked
            self._interactions(payload, history, index, watch_ms / video.video_ms)
        session.remaining -= 1
        if session.remaining > 0:
            self._push(end + rng.randint(*_THINK_MS), session)
        else:
            self._end_session(session, end)
        self._push(end, SimEvent(InputTopic.VIEWS, payload, ORGANIC, None, end))

    def _view_payload(self, session: _Session, video: Video, end: int, watch_ms: int) -> dict[str, Any]:
        return {
            "event_id": event_id(self._rng),
            "video_id": video.video_id,
            "creator_id": video.creator_id,
            "viewer_id": self._cat.viewer_id(session.viewer),
            "device_id": session.device,
            "ts": end,
            "watch_ms": watch_ms,
            "video_ms": video.video_ms,
            "source": SOURCES[int(self._rng.random() * 100)],
            "region": self._cat.viewer_regions[session.viewer],
        }

    def _interactions(self, view: dict[str, Any], history: dict[int, int], index: int, watched: float) -> None:
        if watched < 0.3:
            return
        rng = self._rng
        for kind, chance in _ENGAGED_KINDS if watched >= 0.9 else _CASUAL_KINDS:
            if rng.random() >= chance:
                continue
            flag = _ONCE_KINDS.get(kind, 0)
            if history[index] & flag:
                continue
            history[index] |= flag
            # During the watch, in its last minute (so the view, reported when it ends, is within GRACE_S of it).
            ts = view["ts"] - rng.randint(0, max(0, min(view["watch_ms"], 60_000) - 300))
            payload = {
                "event_id": event_id(rng),
                "video_id": view["video_id"],
                "creator_id": view["creator_id"],
                "viewer_id": view["viewer_id"],
                "device_id": view["device_id"],
                "ts": ts,
                "kind": kind,
            }
            self._push(ts, SimEvent(InputTopic.INTERACTIONS, payload, ORGANIC, None, ts))

    def _end_session(self, session: _Session, ts: int) -> None:
        self._active.discard(session.viewer)
        self._last_end[session.viewer] = ts
        self._busy.discard(session.device)
        self._device_free_at[session.device] = ts


def with_duplicates(events: Iterator[SimEvent], rng: random.Random, share: float, end_ms: int) -> Iterator[SimEvent]:
    """The organic stream with some events delivered twice (same event_id, same payload), a little later."""
    pending: list[tuple[int, int, SimEvent]] = []
    seq = 0
    for event in events:
        while pending and pending[0][0] <= event.at_ms:
            yield heapq.heappop(pending)[2]
        yield event
        if rng.random() < share:
            at = event.at_ms + rng.randint(200, 30_000)  # a producer retry or an at-least-once redelivery
            if at < end_ms:
                assert isinstance(event.payload, dict)
                copy = SimEvent(event.topic, dict(event.payload), "duplicate", "duplicate_event", at)
                seq += 1
                heapq.heappush(pending, (at, seq, copy))
    while pending:
        yield heapq.heappop(pending)[2]
